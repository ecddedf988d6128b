"""The softmax family's planner: regime, kernel and launch shape of one call, a pure
function of (storage, direction, shape, misalignment, :class:`Device`, :class:`Policy`).
The regime table is documented in docs/softmax_kernels.md."""

from __future__ import annotations

import functools

from . import launch
from .abi import cdiv, round_up
from .kernels import BOUNDS, VARIANTS, VEC, kernel_name
from .plan import (
    DEFAULT_POLICY,
    INFLIGHT_GOOD,
    INFLIGHT_TARGET,
    MAX_GRID,
    SLOT_BYTES,
    SMEM_RESERVED_PER_BLOCK,
    STATIC_SMEM_MAX,
    Device,
    Plan,
    Policy,
    occupancy,
)

WARP_BLOCK_THREADS = 128  # warp kernels: 4 warps per block
SPLIT_THREADS = 512
STREAM_THREADS = 512
LSE_THREADS = 512
ROW_MIN_THREADS = 64
ROW_MAX_THREADS = 1024
# A backward row thread carries some 330 instructions of per-row work (two arrays'
# addressing, the compensated pair reductions) against 12-17 per element (SASS walk,
# float32 4096x32768: 25.0 instructions per element at 1024 threads, 21.2 at 512),
# so a staged backward row is spread over fewer, longer threads; 512 still keeps
# 16 warps on the SM. The forward's per-row work is small: there it is neutral
# (float32 65536 columns: 13.6 at 1024 threads, 13.3 at 512), and 1024 hide more latency.
BWD_STAGED_THREADS = 512


def blocks_per_sm(dev: Device, template: str, threads: int, smem: int = 0) -> int:
    """Resident blocks per SM of a `template` kernel at `threads` threads and
    `smem` dynamic shared bytes: the CUDA occupancy calculation with the register
    count at its launch-bound cap (ptxas uses at most that; fewer only raises it)."""
    return occupancy(dev, BOUNDS[template], threads, smem)


MIN_SPLIT_CHUNK = 2048  # elements: below this a split costs more than it spreads
SPLIT_MIN_COLS = DEFAULT_POLICY.split_min_cols  # rows shorter than this are never split just to fill SMs
LSE_WARP_MAX_COLS = 2048
LSE_MIN_CHUNK = 1 << 14
LSE_TILES_PER_THREAD = 16


def _itemsize(storage: str) -> int:
    return 16 // VEC[storage]


def _arrays(direction: str) -> int:
    return 2 if direction == "bwd" else 1  # backward reads y and grad_y


def _resident(dev: Device, template: str, threads: int, smem: int, grid: int) -> int:
    return min(blocks_per_sm(dev, template, threads, smem), cdiv(grid, dev.n_sm))


@functools.lru_cache(maxsize=4096)
def plan(storage: str, direction: str, rows: int, cols: int, mis: int, dev: Device,
         pol: Policy = DEFAULT_POLICY) -> Plan:
    """Pick regime, kernel and launch shape for `rows` rows of `cols` elements whose
    starts are at most `mis` elements past a 16-byte boundary (worst_misalignment).
    Cached: a repeated call shape costs one dictionary look-up."""
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one column")
    need = cols + mis
    if direction == "lse":
        return _plan_lse(storage, rows, cols, need, dev)
    if pol.force_regime == "stream":
        return _plan_stream(storage, direction, rows, cols, dev, pol)
    if need <= _warp_capacity(storage, direction) and pol.force_regime is None:
        return _plan_warp(storage, direction, rows, cols, need, dev)
    # Few rows leave SMs idle: spread each row over k co-resident blocks. With rows
    # >= SMs a row never splits (no workspace, no cooperative launch).
    if pol.force_regime == "split" or (rows < dev.n_sm and cols >= pol.split_min_cols):
        p = _plan_split(storage, direction, rows, cols, mis, dev)
        if p is not None:
            return p
    p = _plan_row(storage, direction, rows, cols, need, dev, pol)
    if p is not None:
        return p
    return _plan_stream(storage, direction, rows, cols, dev, pol)


def _warp_capacity(storage: str, direction: str) -> int:
    return 32 * max(VARIANTS[(storage, direction)]["warp"]) * VEC[storage]


def _plan_warp(storage: str, direction: str, rows: int, cols: int, need: int, dev: Device) -> Plan:
    # The NV that processes the fewest padded slots, the largest on ties: more
    # bytes per thread in flight, fewer shuffles.
    vec = VEC[storage]
    best = None
    for nv in VARIANTS[(storage, direction)]["warp"]:
        width = launch.next_pow2(cdiv(need, nv * vec))
        if width <= 32:
            key = (-width * nv, nv)
            if best is None or key > best[0]:
                best = (key, nv, width)
    _, nv, width = best
    rpb = WARP_BLOCK_THREADS // width
    grid = int(min(cdiv(rows, rpb), blocks_per_sm(dev, "warp", WARP_BLOCK_THREADS) * dev.n_sm * 4, MAX_GRID))
    res = _resident(dev, "warp", WARP_BLOCK_THREADS, 0, grid)
    per_block = min(rpb, rows) * cols * _itemsize(storage) * _arrays(direction)
    return Plan("warp", kernel_name(direction, "warp", nv, storage), grid, WARP_BLOCK_THREADS, width=width,
                resident=res, inflight_bytes_per_sm=res * per_block)


def _row_shapes(storage: str, direction: str, need: int, dev: Device, pol: Policy):
    """Every (nv, threads, ss, smem) that holds `need` slot-grid elements in one block."""
    slots = cdiv(need, VEC[storage])
    arrays = _arrays(direction)
    nvs = VARIANTS[(storage, direction)]["row"]
    if pol.force_regime == "stage":
        nvs = nvs[:1]
    for nv in nvs:
        exact = min(ROW_MAX_THREADS, max(ROW_MIN_THREADS, round_up(cdiv(slots, nv), 32)))
        for threads in sorted({exact, 256, 512, 1024}):
            if pol.force_regime == "stage":
                threads = ROW_MIN_THREADS
            ss = max(0, cdiv(slots, threads) - nv)
            if pol.force_regime == "stage":
                ss = max(ss, 1)
            smem = ss * threads * SLOT_BYTES * arrays
            if smem + STATIC_SMEM_MAX > dev.smem_per_block:
                continue
            yield nv, threads, ss, smem


def _plan_row(storage: str, direction: str, rows: int, cols: int, need: int, dev: Device,
              pol: Policy) -> Plan | None:
    """One block per row, the row on chip (registers, then shared memory). Among
    the shapes that fit: the most bytes in flight up to INFLIGHT_GOOD, then no
    shared memory (the whole row in registers: a staged element costs about twice
    the instructions, issue 20), then two resident blocks rather than one (one
    loads while the other reduces), then, for a staged backward row, at most
    BWD_STAGED_THREADS threads, then the least shared memory, the most bytes in
    flight, the most threads."""
    row_bytes = cols * _itemsize(storage) * _arrays(direction)
    best = None
    for nv, threads, ss, smem in _row_shapes(storage, direction, need, dev, pol):
        occ = blocks_per_sm(dev, "row", threads, smem)
        if occ < 1:
            continue
        grid = int(min(rows, occ * dev.n_sm * pol.row_grid_waves, MAX_GRID))
        res = min(occ, cdiv(grid, dev.n_sm))
        inflight = res * row_bytes
        spread = -max(threads, BWD_STAGED_THREADS) if direction == "bwd" and ss > 0 else 0
        key = (min(inflight, INFLIGHT_GOOD), ss == 0, min(res, 2), spread, -smem, inflight, threads)
        if best is None or key > best[0]:
            best = (key, Plan("row", kernel_name(direction, "row", nv, storage), grid, threads, k=1, chunk=cols,
                              ss=ss, smem=smem, resident=res, inflight_bytes_per_sm=inflight))
    return None if best is None else best[1]


def row_capacity(storage: str, direction: str, dev: Device) -> int:
    """Largest `need` (row length plus misalignment) the row regime holds on `dev`:
    1024 threads, the largest NV in registers, the rest of the opt-in shared memory
    staged (the planner's row-regime edge; longer rows stream)."""
    nv = max(VARIANTS[(storage, direction)]["row"])
    per_slot_column = ROW_MAX_THREADS * SLOT_BYTES * _arrays(direction)
    ss = (dev.smem_per_block - STATIC_SMEM_MAX) // per_slot_column
    while ss > 0 and blocks_per_sm(dev, "row", ROW_MAX_THREADS, ss * per_slot_column) < 1:
        ss -= 1
    return ROW_MAX_THREADS * (nv + ss) * VEC[storage]


def _split_shape(storage: str, direction: str, need: int) -> tuple[int, int] | None:
    """(NV, threads) of a split kernel holding `need` elements: the smallest NV for
    which at most SPLIT_THREADS threads do (more threads, fewer registers)."""
    vec = VEC[storage]
    for nv in VARIANTS[(storage, direction)]["split"]:
        threads = max(128, round_up(cdiv(need, nv * vec), 32))
        if threads <= SPLIT_THREADS:
            return nv, threads
    return None


def _plan_split(storage: str, direction: str, rows: int, cols: int, mis: int, dev: Device) -> Plan | None:
    """k co-resident blocks per row, each holding a chunk in registers."""
    vec = VEC[storage]
    nv = max(VARIANTS[(storage, direction)]["split"])
    per_sm = blocks_per_sm(dev, "split", SPLIT_THREADS)
    cap = (SPLIT_THREADS * nv * vec - mis) // vec * vec  # largest chunk one block holds
    k_fit = cdiv(cols, cap)
    if k_fit > per_sm * dev.n_sm:
        return None
    k_busy = cdiv(dev.n_sm, rows)
    k = max(k_fit, min(k_busy, cols // MIN_SPLIT_CHUNK), 1)
    chunk = round_up(cdiv(cols, k), vec)
    k = cdiv(cols, chunk)
    if k == 1:
        return None  # one block holds the row: the row regime does it without a workspace
    nv, threads = _split_shape(storage, direction, chunk + mis)
    occ = blocks_per_sm(dev, "split", threads)
    groups = min(rows, occ * dev.n_sm // k)
    if groups < 1:
        return None
    grid = groups * k
    res = min(occ, cdiv(grid, dev.n_sm))
    chunk_bytes = chunk * _itemsize(storage) * _arrays(direction)
    return Plan("split", kernel_name(direction, "split", nv, storage), grid, threads, k=k, chunk=chunk,
                groups=groups, resident=res, inflight_bytes_per_sm=res * chunk_bytes)


def _plan_stream(storage: str, direction: str, rows: int, cols: int, dev: Device, pol: Policy) -> Plan:
    """Online (max, sum) read + backwards write read. k > 1 co-resident blocks per
    row only when rows are fewer than SMs. When the resident rows do not fit in L2,
    rows in flight are cut (with unused dynamic shared memory) to the fewest that
    keep INFLIGHT_TARGET per SM: the second read then hits L2 for more of each row.
    The forward kernel's dynamic shared memory holds two tiles (TilePipe: the next
    tile's copies in flight while one is reduced; not float64)."""
    vec = VEC[storage]
    nv = VARIANTS[(storage, direction)]["stream"][0]
    name = kernel_name(direction, "stream", nv, storage)
    arrays = _arrays(direction)
    tile_bytes = STREAM_THREADS * nv * SLOT_BYTES * arrays
    pipe = 2 * tile_bytes if direction == "fwd" and storage != "float64" else 0
    occ = blocks_per_sm(dev, "stream", STREAM_THREADS, pipe)
    res_total = occ * dev.n_sm
    k = max(1, min(cdiv(dev.n_sm, rows), cols // pol.stream_min_chunk, res_total))
    k = max(k, cdiv(cols, 1 << 30))  # chunks stay below 2**30 elements
    chunk = round_up(cdiv(cols, k), vec)
    k = cdiv(cols, chunk)
    chunk_bytes = chunk * _itemsize(storage) * arrays
    inflight = min(tile_bytes * (2 if pipe else 1), chunk_bytes)
    if k == 1:
        want = occ
        if occ * dev.n_sm * chunk_bytes > dev.l2_bytes:
            want = min(occ, max(1, cdiv(INFLIGHT_TARGET, inflight)))
        smem = pipe
        if want < occ:
            # Pad the dynamic shared memory so that `want` + 1 blocks do not fit on
            # an SM even if the kernel had no static shared memory at all.
            pad = dev.smem_per_sm // (want + 1) - SMEM_RESERVED_PER_BLOCK + 1
            pad = max(min(pad, dev.smem_per_block - STATIC_SMEM_MAX), pipe)
            if blocks_per_sm(dev, "stream", STREAM_THREADS, pad) == want:
                smem = pad
        grid = int(min(rows, MAX_GRID))
        res = _resident(dev, "stream", STREAM_THREADS, smem, grid)
        return Plan("stream", name, grid, STREAM_THREADS, k=1, chunk=cols, smem=smem, resident=res,
                    inflight_bytes_per_sm=res * inflight)
    return _rows_in_groups("stream", name, STREAM_THREADS, rows, cols, k, chunk, occ, res_total, dev,
                           inflight, smem=pipe)


def _rows_in_groups(regime: str, name: str, threads: int, rows: int, cols: int, k: int, chunk: int, occ: int,
                    res_total: int, dev: Device, inflight_per_block: int, smem: int = 0) -> Plan:
    """A plan running each row on k co-resident blocks: as many rows at once as the
    resident blocks hold (a RuntimeError when not even one row's k blocks fit)."""
    groups = min(rows, res_total // k)
    if groups < 1:
        raise RuntimeError(f"row of {cols} elements needs {k} co-resident blocks but only {res_total} fit on this GPU")
    grid = groups * k
    res = min(occ, cdiv(grid, dev.n_sm))
    return Plan(regime, name, grid, threads, k=k, chunk=chunk, groups=groups, smem=smem, resident=res,
                inflight_bytes_per_sm=res * inflight_per_block)


def _plan_lse(storage: str, rows: int, cols: int, need: int, dev: Device) -> Plan:
    vec = VEC[storage]
    itemsize = _itemsize(storage)
    if cols <= LSE_WARP_MAX_COLS:
        nv = VARIANTS[(storage, "lse")]["warp"][0]
        width = min(32, launch.next_pow2(cdiv(need, nv * vec)))
        rpb = WARP_BLOCK_THREADS // width
        grid = int(min(cdiv(rows, rpb), blocks_per_sm(dev, "warp", WARP_BLOCK_THREADS) * dev.n_sm * 4, MAX_GRID))
        res = _resident(dev, "warp", WARP_BLOCK_THREADS, 0, grid)
        per_block = min(rpb, rows) * min(cols, width * nv * vec) * itemsize
        return Plan("warp", kernel_name("lse", "warp", nv, storage), grid, WARP_BLOCK_THREADS, width=width,
                    resident=res, inflight_bytes_per_sm=res * per_block)
    nv = VARIANTS[(storage, "lse")]["block"][0]
    name = kernel_name("lse", "block", nv, storage)
    occ = blocks_per_sm(dev, "block", LSE_THREADS)
    res_total = occ * dev.n_sm
    k = max(1, min(cdiv(dev.n_sm, rows), cols // LSE_MIN_CHUNK, res_total))
    k = max(k, cdiv(cols, 1 << 30))
    chunk = round_up(cdiv(cols, k), vec)
    k = cdiv(cols, chunk)
    tile_bytes = LSE_THREADS * nv * SLOT_BYTES
    if k == 1:
        # A row's reductions cost a thread some 250 instructions: LSE_TILES_PER_THREAD
        # tiles each keep them a small share (more, smaller blocks resident hold the
        # bytes in flight). More tiles would widen the float pass's error bound, and
        # send more rows to the double pass (lse_limit).
        per_thread = LSE_TILES_PER_THREAD * nv * vec
        threads = min(LSE_THREADS, max(64, 1 << (max(cols // per_thread, 1).bit_length() - 1)))
        grid = int(min(rows, MAX_GRID))
        res = _resident(dev, "block", threads, 0, grid)
        return Plan("stream", name, grid, threads, k=1, chunk=cols, resident=res,
                    inflight_bytes_per_sm=res * min(threads * nv * SLOT_BYTES, cols * itemsize))
    return _rows_in_groups("split", name, LSE_THREADS, rows, cols, k, chunk, occ, res_total, dev,
                           min(tile_bytes, chunk * itemsize))
