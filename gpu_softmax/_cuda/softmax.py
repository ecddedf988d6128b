"""CUDA launchers for softmax, log_softmax, logsumexp and their backward passes.

Kernels live in ``cuda_src/softmax.cu`` (warp, row, split, stream and logsumexp
templates); their ``extern "C"`` entry points are generated from :data:`VARIANTS`
and :data:`BOUNDS` below (:func:`generated_entries`), which the loader appends to
the source, so this table is the one list of compiled variants. Modules compile
lazily, once per process and device, through :mod:`.loader`. Every launch goes on
CuPy's current stream; nothing here synchronises the host.

Layout handling (what it costs):

- The kernels see ``rows`` rows of ``cols`` contiguous elements. A reduction over
  a non-last axis (``inner > 1``) first makes a contiguous copy with that axis
  moved last (``cupy.moveaxis`` + ``ascontiguousarray``: one extra read and write
  of the input) and moves the result back (another read and write), so a
  non-last axis costs about three times the memory traffic of a last-axis call.
- Any other non-C-contiguous input (and one whose data pointer is not a multiple
  of its element size, which CuPy never makes itself) is copied to a contiguous
  array first: one extra read and write.
- A view that starts at any element offset is fine as it is: rows start at any
  alignment, and the kernels use 16-byte accesses for the aligned middle of each
  row and element accesses at its ends.
- ``out`` is written directly when it is C-contiguous and either is ``x`` itself
  or does not overlap ``x``; otherwise the result goes to a temporary that is then
  copied into ``out``.

Regime choice (:func:`plan`, documented with its table in docs/softmax_kernels.md)
depends on the dtype, the row length, the row count and a :class:`Device`
description (SM count, registers, shared memory, L2), cached per device. Occupancy
comes from a model of the launch bounds (:func:`blocks_per_sm`), not from a driver
query: the bounds cap registers, the compile check proves there are no spills,
so the model is a lower bound of what the GPU runs. Every plan carries the bytes
each SM has in flight in steady state (:attr:`Plan.inflight_bytes_per_sm`).

Precision: softmax / log_softmax accumulate in float32 (float64 for float64),
keeping the row sum as ``1 + r`` so that ``log(sum)`` keeps its relative
accuracy when one element dominates. logsumexp and both backward passes
accumulate in float64 for every dtype: their results subtract from or add to
the row statistic (``m + log(sum)`` near 0, ``grad_y - sum`` near 0), where a
float32 statistic would miss the tolerance against the float64 reference.

Rows split over several blocks (plans with ``k > 1``, only when rows are fewer
than SMs) need every block of the grid resident at once (the blocks of a row
wait for each other's partials): such a plan is always launched cooperatively,
so the driver refuses rather than hangs if the grid would not fit. There is no
fallback to a plain launch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .._checks import BackwardArgs, RowLayout, SoftmaxArgs, row_layout
from . import kernels, launch, loader
from .kernels import BOUNDS, ENTRIES, VARIANTS, kernel_name
from .launch import STORAGES, SUFFIX, VEC, worst_misalignment

FAMILY = "softmax"

# ----------------------------------------------------------------------------------
# compiled variants: declared in the kernel table (kernels.py), re-exported here

ENTRY_POINTS: tuple[str, ...] = kernels.entry_points(FAMILY)
_variants = kernels.softmax_variants

WARP_BLOCK_THREADS = 128  # warp kernels: 4 warps per block
SPLIT_THREADS = 512
STREAM_THREADS = 512
LSE_THREADS = 512
ROW_MIN_THREADS = 64
ROW_MAX_THREADS = 1024


# ops (runtime kernel argument)
OP_SOFTMAX, OP_LOG_SOFTMAX, OP_LOGSUMEXP = 0, 1, 2
OP_SOFTMAX_BWD, OP_LOG_SOFTMAX_BWD = 0, 1
_FWD_OPS = {"softmax": OP_SOFTMAX, "log_softmax": OP_LOG_SOFTMAX, "logsumexp": OP_LOGSUMEXP}
_BWD_OPS = {"softmax_backward": OP_SOFTMAX_BWD, "log_softmax_backward": OP_LOG_SOFTMAX_BWD}


# ----------------------------------------------------------------------------------
# device description and occupancy model


@dataclass(frozen=True)
class Device:
    """What the planner needs to know about a GPU (per SM unless said)."""

    name: str
    n_sm: int
    threads_per_sm: int = 2048
    regs_per_sm: int = 65536
    smem_per_sm: int = 233472  # bytes blocks can use (sm_90: 228 KiB)
    smem_per_block: int = 232448  # opt-in maximum of one block (sm_90: 227 KiB)
    l2_bytes: int = 50 << 20
    max_blocks_per_sm: int = 32

    def __hash__(self) -> int:  # part of every plan-cache key: hash the fields once
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
            object.__setattr__(self, "_hash", h)
        return h


H100 = Device("H100 SXM", 132, l2_bytes=50 << 20)
H200 = Device("H200", 132, l2_bytes=60 << 20)
A100 = Device("A100", 108, smem_per_sm=167936, smem_per_block=166912, l2_bytes=40 << 20)

SMEM_RESERVED_PER_BLOCK = 1024  # the driver's share of each block's shared memory (sm_80+)
STATIC_SMEM_MAX = 2048  # our kernels' __shared__ arrays, rounded up (the largest is 1.6 KiB)
SLOT_BYTES = 16


def blocks_per_sm(dev: Device, template: str, threads: int, smem: int = 0) -> int:
    """Resident blocks per SM of a `template` kernel at `threads` threads and
    `smem` dynamic shared bytes: the CUDA occupancy calculation with the register
    count at its launch-bound cap (ptxas uses at most that; fewer only raises it)."""
    maxt, minb = BOUNDS[template]
    # Registers are allocated per warp in units of 256 (8 per thread): round the
    # cap up, which can only under-count; the bounds themselves promise `minb`
    # blocks of `maxt` threads, hence of fewer threads too.
    regs = -(-min(255, dev.regs_per_sm // (maxt * minb)) // 8) * 8
    warps = -(-threads // 32)
    by_regs = dev.regs_per_sm // (regs * 32 * warps)
    if threads <= maxt:
        by_regs = max(by_regs, minb)
    by_threads = dev.threads_per_sm // (warps * 32)
    by_smem = dev.smem_per_sm // (smem + STATIC_SMEM_MAX + SMEM_RESERVED_PER_BLOCK)
    return max(0, min(by_regs, by_threads, by_smem, dev.max_blocks_per_sm))


# Little's law: ~4.3 TB/s against ~0.6-0.8 us of DRAM latency is ~24 KB per SM;
# plans aim for 32 KB and prefer 64 KB when they can have it cheaply.
INFLIGHT_TARGET = 32 << 10
INFLIGHT_GOOD = 64 << 10


# ----------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class Plan:
    regime: str  # "warp" | "row" | "split" | "stream"
    kernel: str
    grid: int
    block: int
    width: int = 0  # warp regime: lanes per row
    k: int = 1  # blocks per row
    chunk: int = 0  # elements per block and row (multiple of VEC when k > 1)
    groups: int = 0  # row groups (grid // k)
    ss: int = 0  # row regime: 16-byte slots per thread staged in shared memory
    smem: int = 0  # dynamic shared memory per block, bytes
    resident: int = 0  # blocks per SM in steady state (occupancy model, capped by the grid)
    inflight_bytes_per_sm: int = 0  # resident blocks x bytes each loads before its first dependent reduction

    @property
    def cooperative(self) -> bool:
        return self.k > 1

    def bind(self, rows: int, cols: int, op: int | None):
        """A function of the kernel's pointer arguments returning its whole argument
        tuple, the scalars packed from the kernel table's signature; built once per
        (plan, op) since a plan is cached per shape."""
        cache = self.__dict__.setdefault("_bound", {})
        key = (rows, cols, op)
        f = cache.get(key)
        if f is None:
            sig = ENTRIES[self.kernel].sig
            have = {"rows": rows, "cols": cols, "op": op, "width": self.width, "ss": self.ss, "k": self.k,
                    "chunk": self.chunk}
            f = cache[key] = sig.binder(**{q.name: have[q.name] for q in sig.params if not q.pointer})
        return f


MAX_GRID = 2**31 - 1

# Test hooks, None/defaults in normal use. FORCE_REGIME: "stream" sends every
# softmax/log_softmax/backward call to the stream kernels, "split" sends rows
# past the warp regime through the split planner (which splits only when rows are
# few), "stage" makes the row regime hold the fewest slots it can in registers
# and stage the rest in shared memory (so small tests reach every path).
FORCE_REGIME: str | None = None
ROW_GRID_WAVES = 64  # row regime: grid = min(rows, resident blocks x SMs x this)

MIN_SPLIT_CHUNK = 2048  # elements: below this a split costs more than it spreads
STREAM_MIN_CHUNK = 1 << 15
SPLIT_MIN_COLS = 1 << 14  # rows shorter than this are never split just to fill SMs
LSE_WARP_MAX_COLS = 2048
LSE_MIN_CHUNK = 1 << 14


def _itemsize(storage: str) -> int:
    return 16 // VEC[storage]


def _arrays(direction: str) -> int:
    return 2 if direction == "bwd" else 1  # backward reads y and grad_y


def _resident(dev: Device, template: str, threads: int, smem: int, grid: int) -> int:
    return min(blocks_per_sm(dev, template, threads, smem), -(-grid // dev.n_sm))


def plan(storage: str, direction: str, rows: int, cols: int, mis: int, dev: Device) -> Plan:
    """Pick regime, kernel and launch shape for `rows` rows of `cols` elements whose
    starts are at most `mis` elements past a 16-byte boundary (worst_misalignment).
    Cached: a repeated call shape costs one dictionary look-up."""
    return _plan(storage, direction, rows, cols, mis, dev,
                 (FORCE_REGIME, ROW_GRID_WAVES, SPLIT_MIN_COLS, STREAM_MIN_CHUNK))


@functools.lru_cache(maxsize=4096)
def _plan(storage: str, direction: str, rows: int, cols: int, mis: int, dev: Device, hooks: tuple) -> Plan:
    # `hooks` (the test hooks' values) is only part of the cache key.
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one column")
    need = cols + mis
    if direction == "lse":
        return _plan_lse(storage, rows, cols, need, dev)
    if FORCE_REGIME == "stream":
        return _plan_stream(storage, direction, rows, cols, dev)
    if need <= _warp_capacity(storage, direction) and FORCE_REGIME is None:
        return _plan_warp(storage, direction, rows, cols, need, dev)
    # Few rows leave SMs idle: spread each row over k co-resident blocks. With rows
    # >= SMs a row never splits (no workspace, no cooperative launch).
    if FORCE_REGIME == "split" or (rows < dev.n_sm and cols >= SPLIT_MIN_COLS):
        p = _plan_split(storage, direction, rows, cols, mis, dev)
        if p is not None:
            return p
    p = _plan_row(storage, direction, rows, cols, need, dev)
    if p is not None:
        return p
    return _plan_stream(storage, direction, rows, cols, dev)


def _warp_capacity(storage: str, direction: str) -> int:
    return 32 * max(VARIANTS[(storage, direction)]["warp"]) * VEC[storage]


def _plan_warp(storage: str, direction: str, rows: int, cols: int, need: int, dev: Device) -> Plan:
    # The NV that processes the fewest padded slots, the largest on ties: more
    # bytes per thread in flight, fewer shuffles.
    vec = VEC[storage]
    best = None
    for nv in VARIANTS[(storage, direction)]["warp"]:
        width = launch.next_pow2(-(-need // (nv * vec)))
        if width <= 32:
            key = (-width * nv, nv)
            if best is None or key > best[0]:
                best = (key, nv, width)
    _, nv, width = best
    rpb = WARP_BLOCK_THREADS // width
    grid = int(min(-(-rows // rpb), blocks_per_sm(dev, "warp", WARP_BLOCK_THREADS) * dev.n_sm * 4, MAX_GRID))
    res = _resident(dev, "warp", WARP_BLOCK_THREADS, 0, grid)
    per_block = min(rpb, rows) * cols * _itemsize(storage) * _arrays(direction)
    return Plan("warp", kernel_name(direction, "warp", nv, storage), grid, WARP_BLOCK_THREADS, width=width,
                resident=res, inflight_bytes_per_sm=res * per_block)


def _row_shapes(storage: str, direction: str, need: int, dev: Device):
    """Every (nv, threads, ss, smem) that holds `need` slot-grid elements in one block."""
    slots = -(-need // VEC[storage])
    arrays = _arrays(direction)
    nvs = VARIANTS[(storage, direction)]["row"]
    if FORCE_REGIME == "stage":
        nvs = nvs[:1]
    for nv in nvs:
        exact = min(ROW_MAX_THREADS, max(ROW_MIN_THREADS, -(-(-(-slots // nv)) // 32) * 32))
        for threads in sorted({exact, 256, 512, 1024}):
            if FORCE_REGIME == "stage":
                threads = ROW_MIN_THREADS
            ss = max(0, -(-slots // threads) - nv)
            if FORCE_REGIME == "stage":
                ss = max(ss, 1)
            smem = ss * threads * SLOT_BYTES * arrays
            if smem + STATIC_SMEM_MAX > dev.smem_per_block:
                continue
            yield nv, threads, ss, smem


def _plan_row(storage: str, direction: str, rows: int, cols: int, need: int, dev: Device) -> Plan | None:
    """One block per row, the row on chip (registers, then shared memory). Among
    the shapes that fit: the most bytes in flight up to INFLIGHT_GOOD, then two
    resident blocks rather than one (one loads while the other reduces), then no
    shared memory, then the least shared memory, the most bytes in flight, the
    most threads."""
    row_bytes = cols * _itemsize(storage) * _arrays(direction)
    best = None
    for nv, threads, ss, smem in _row_shapes(storage, direction, need, dev):
        occ = blocks_per_sm(dev, "row", threads, smem)
        if occ < 1:
            continue
        grid = int(min(rows, occ * dev.n_sm * ROW_GRID_WAVES, MAX_GRID))
        res = min(occ, -(-grid // dev.n_sm))
        inflight = res * row_bytes
        key = (min(inflight, INFLIGHT_GOOD), min(res, 2), ss == 0, -smem, inflight, threads)
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
        threads = max(128, -(-(-(-need // (nv * vec))) // 32) * 32)
        if threads <= SPLIT_THREADS:
            return nv, threads
    return None


def _plan_split(storage: str, direction: str, rows: int, cols: int, mis: int, dev: Device) -> Plan | None:
    """k co-resident blocks per row, each holding a chunk in registers."""
    vec = VEC[storage]
    nv = max(VARIANTS[(storage, direction)]["split"])
    per_sm = blocks_per_sm(dev, "split", SPLIT_THREADS)
    cap = (SPLIT_THREADS * nv * vec - mis) // vec * vec  # largest chunk one block holds
    k_fit = -(-cols // cap)
    if k_fit > per_sm * dev.n_sm:
        return None
    k_busy = -(-dev.n_sm // rows)
    k = max(k_fit, min(k_busy, cols // MIN_SPLIT_CHUNK), 1)
    chunk = -(-(-(-cols // k)) // vec) * vec
    k = -(-cols // chunk)
    if k == 1:
        return None  # one block holds the row: the row regime does it without a workspace
    nv, threads = _split_shape(storage, direction, chunk + mis)
    occ = blocks_per_sm(dev, "split", threads)
    groups = min(rows, occ * dev.n_sm // k)
    if groups < 1:
        return None
    grid = groups * k
    res = min(occ, -(-grid // dev.n_sm))
    chunk_bytes = chunk * _itemsize(storage) * _arrays(direction)
    return Plan("split", kernel_name(direction, "split", nv, storage), grid, threads, k=k, chunk=chunk,
                groups=groups, resident=res, inflight_bytes_per_sm=res * chunk_bytes)


def _plan_stream(storage: str, direction: str, rows: int, cols: int, dev: Device) -> Plan:
    """Online (max, sum) read + backwards write read. k > 1 co-resident blocks per
    row only when rows are fewer than SMs. When the resident rows do not fit in L2,
    rows in flight are cut (with unused dynamic shared memory) to the fewest that
    keep INFLIGHT_TARGET per SM: the second read then hits L2 for more of each row."""
    vec = VEC[storage]
    nv = VARIANTS[(storage, direction)]["stream"][0]
    name = kernel_name(direction, "stream", nv, storage)
    arrays = _arrays(direction)
    occ = blocks_per_sm(dev, "stream", STREAM_THREADS)
    res_total = occ * dev.n_sm
    k = max(1, min(-(-dev.n_sm // rows), cols // STREAM_MIN_CHUNK, res_total))
    k = max(k, -(-cols // (1 << 30)))  # chunks stay below 2**30 elements
    chunk = -(-(-(-cols // k)) // vec) * vec
    k = -(-cols // chunk)
    tile_bytes = STREAM_THREADS * nv * SLOT_BYTES * arrays
    chunk_bytes = chunk * _itemsize(storage) * arrays
    if k == 1:
        want = occ
        if occ * dev.n_sm * chunk_bytes > dev.l2_bytes:
            want = min(occ, max(1, -(-INFLIGHT_TARGET // tile_bytes)))
        smem = 0
        if want < occ:
            # Pad the dynamic shared memory so that `want` + 1 blocks do not fit on
            # an SM even if the kernel had no static shared memory at all.
            smem = dev.smem_per_sm // (want + 1) - SMEM_RESERVED_PER_BLOCK + 1
            smem = min(smem, dev.smem_per_block - STATIC_SMEM_MAX)
            if blocks_per_sm(dev, "stream", STREAM_THREADS, smem) != want:
                smem = 0
        grid = int(min(rows, MAX_GRID))
        res = _resident(dev, "stream", STREAM_THREADS, smem, grid)
        return Plan("stream", name, grid, STREAM_THREADS, k=1, chunk=cols, smem=smem, resident=res,
                    inflight_bytes_per_sm=res * min(tile_bytes, chunk_bytes))
    groups = min(rows, res_total // k)
    if groups < 1:
        raise RuntimeError(f"row of {cols} elements needs {k} co-resident blocks but only {res_total} fit on this GPU")
    grid = groups * k
    res = min(occ, -(-grid // dev.n_sm))
    return Plan("stream", name, grid, STREAM_THREADS, k=k, chunk=chunk, groups=groups, resident=res,
                inflight_bytes_per_sm=res * min(tile_bytes, chunk_bytes))


def _plan_lse(storage: str, rows: int, cols: int, need: int, dev: Device) -> Plan:
    vec = VEC[storage]
    itemsize = _itemsize(storage)
    if cols <= LSE_WARP_MAX_COLS:
        nv = VARIANTS[(storage, "lse")]["warp"][0]
        width = min(32, launch.next_pow2(-(-need // (nv * vec))))
        rpb = WARP_BLOCK_THREADS // width
        grid = int(min(-(-rows // rpb), blocks_per_sm(dev, "warp", WARP_BLOCK_THREADS) * dev.n_sm * 4, MAX_GRID))
        res = _resident(dev, "warp", WARP_BLOCK_THREADS, 0, grid)
        per_block = min(rpb, rows) * min(cols, width * nv * vec) * itemsize
        return Plan("warp", kernel_name("lse", "warp", nv, storage), grid, WARP_BLOCK_THREADS, width=width,
                    resident=res, inflight_bytes_per_sm=res * per_block)
    nv = VARIANTS[(storage, "lse")]["block"][0]
    name = kernel_name("lse", "block", nv, storage)
    occ = blocks_per_sm(dev, "block", LSE_THREADS)
    res_total = occ * dev.n_sm
    k = max(1, min(-(-dev.n_sm // rows), cols // LSE_MIN_CHUNK, res_total))
    k = max(k, -(-cols // (1 << 30)))
    chunk = -(-(-(-cols // k)) // vec) * vec
    k = -(-cols // chunk)
    tile_bytes = LSE_THREADS * nv * SLOT_BYTES
    if k == 1:
        grid = int(min(rows, MAX_GRID))
        res = _resident(dev, "block", LSE_THREADS, 0, grid)
        return Plan("stream", name, grid, LSE_THREADS, k=1, chunk=cols, resident=res,
                    inflight_bytes_per_sm=res * min(tile_bytes, cols * itemsize))
    groups = min(rows, res_total // k)
    if groups < 1:
        raise RuntimeError(f"row of {cols} elements needs {k} co-resident blocks but only {res_total} fit on this GPU")
    grid = groups * k
    res = min(occ, -(-grid // dev.n_sm))
    return Plan("split", name, grid, LSE_THREADS, k=k, chunk=chunk, groups=groups, resident=res,
                inflight_bytes_per_sm=res * min(tile_bytes, chunk * itemsize))


# ----------------------------------------------------------------------------------
# device facts and launches (cached per device / stream)

_devices: dict[int, Device] = {}


def current_device() -> Device:
    """Device description of CuPy's current device (read once per device)."""
    dev_id = launch.device_id()
    d = _devices.get(dev_id)
    if d is None:
        import cupy

        attrs = cupy.cuda.Device(dev_id).attributes
        d = Device(
            name=f"cuda:{dev_id}",
            n_sm=launch.sm_count(),
            threads_per_sm=int(attrs.get("MaxThreadsPerMultiProcessor", 2048)),
            regs_per_sm=int(attrs.get("MaxRegistersPerMultiprocessor", 65536)),
            smem_per_sm=int(attrs.get("MaxSharedMemoryPerMultiprocessor", 233472)),
            smem_per_block=int(attrs.get("MaxSharedMemoryPerBlockOptin", 232448)),
            l2_bytes=int(attrs.get("L2CacheSize", 50 << 20)),
            max_blocks_per_sm=int(attrs.get("MaxBlocksPerMultiprocessor", 32)),
        )
        _devices[dev_id] = d
    return d


def plan_for(direction: str, storage: str, rows: int, cols: int, mis: int = 0, dev: Device | None = None) -> Plan:
    """The plan a call would get (for benchmarks: Plan.inflight_bytes_per_sm etc.)."""
    return plan(storage, direction, rows, cols, mis, current_device() if dev is None else dev)


# (device, kernel) -> [RawKernel, its driver Function, dynamic smem opted in]: the
# per-call path skips RawModule.get_function and RawKernel's own dispatch.
_kernels: dict[tuple[int, str], list] = {}


def _launch(p: Plan, args: tuple) -> None:
    key = (launch.device_id(), p.kernel)
    entry = _kernels.get(key)
    if entry is None:
        rk = loader.get_function(FAMILY, p.kernel)
        entry = _kernels[key] = [rk, rk.kernel, 0]
    if p.smem > 48 * 1024 and entry[2] < p.smem:
        # Above 48 KiB a kernel must opt in to its dynamic shared memory (once per device).
        entry[0].max_dynamic_shared_size_bytes = p.smem
        entry[2] = p.smem
    # Blocks of a split row wait for each other: the driver must guarantee the
    # grid is co-resident, and a cooperative launch refuses rather than hangs.
    # (grid, block, args, shared_mem, stream=None: CuPy's current stream, cooperative)
    entry[1]((p.grid, 1, 1), (p.block, 1, 1), args, p.smem, None, p.cooperative)


_workspaces: dict[tuple[int, int, str], tuple] = {}


def _workspace(p: Plan, part_dtype):
    """Partials ([group][2 rounds][k][2]) and per-group counters ([2][groups]), one
    set per (device, stream, dtype), grown when needed. The kernels leave the
    counters at zero when they finish (group_release), so they are zeroed only when
    allocated; launches on one stream are ordered, so reuse across calls is safe."""
    import cupy

    if p.k <= 1:
        return launch.dummy("part", part_dtype), launch.dummy("cnt", np.uint64)
    key = (launch.device_id(), cupy.cuda.get_current_stream().ptr, part_dtype)
    ws = _workspaces.get(key)
    if ws is None or ws[0].size < p.groups * 4 * p.k or ws[1].size < 2 * p.groups:
        n_part = max(p.groups * 4 * p.k, 0 if ws is None else ws[0].size)
        n_cnt = max(2 * p.groups, 0 if ws is None else ws[1].size)
        ws = (cupy.empty(n_part, dtype=part_dtype), cupy.zeros(n_cnt, dtype=np.uint64))
        _workspaces[key] = ws
    return ws


# ----------------------------------------------------------------------------------
# forward


def _forward(x, layout: RowLayout, out, op: int, storage: str | None):
    """Shared body of softmax / log_softmax / logsumexp on a CuPy array."""
    import cupy

    st = launch.storage_of(x.dtype, storage)
    acc = launch.acc_dtype(st)
    rows, cols = layout.rows, layout.cols

    if op == OP_LOGSUMEXP:
        if rows == 0 or cols == 0:
            fill = -np.inf if cols == 0 else 0.0
            return cupy.full(layout.reduced_shape, fill, dtype=acc)
        xc = launch.rows_last(x, layout)
        lse = cupy.empty(rows, dtype=acc)
        p = plan(st, "lse", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), current_device())
        bound = p.bind(rows, cols, None)
        _launch(p, bound(xc, lse) if p.regime == "warp" else bound(xc, lse, *_workspace(p, np.float64)))
        return lse.reshape(layout.reduced_shape)

    if rows == 0 or cols == 0:
        return cupy.empty(x.shape, dtype=x.dtype) if out is None else out

    xc = launch.rows_last(x, layout)
    direct = (
        out is not None
        and layout.inner == 1
        and out.flags.c_contiguous
        and out.data.ptr % out.itemsize == 0
        and (out.data.ptr == xc.data.ptr or not launch.overlaps(out, xc))
    )
    y = out if direct else cupy.empty(xc.shape, dtype=xc.dtype)
    p = plan(st, "fwd", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), current_device())
    bound = p.bind(rows, cols, op)
    _launch(p, bound(xc, y) if p.regime in ("warp", "row") else bound(xc, y, *_workspace(p, acc)))
    if direct:
        return out
    if layout.inner != 1:
        y = cupy.moveaxis(y, -1, layout.axis)
    if out is None:
        return y if layout.inner == 1 else cupy.ascontiguousarray(y)
    out[...] = y
    return out


def softmax(a: SoftmaxArgs, *, storage: str | None = None):
    """Softmax of a CuPy array along a.layout.axis (see the module docstring for layout costs)."""
    return _forward(a.x, a.layout, a.out, OP_SOFTMAX, storage)


def log_softmax(a: SoftmaxArgs, *, storage: str | None = None):
    return _forward(a.x, a.layout, a.out, OP_LOG_SOFTMAX, storage)


def logsumexp(a: SoftmaxArgs, *, storage: str | None = None):
    """Per-row logsumexp, float32 (float64 for float64 input), the axis removed."""
    return _forward(a.x, a.layout, None, OP_LOGSUMEXP, storage)


# ----------------------------------------------------------------------------------
# backward


def _backward(grad_y, y, layout: RowLayout, op: int, storage: str | None):
    import cupy

    st = launch.storage_of(y.dtype, storage)
    launch.storage_of(grad_y.dtype, storage)
    rows, cols = layout.rows, layout.cols
    if rows == 0 or cols == 0:
        return cupy.empty(y.shape, dtype=y.dtype)
    yc = launch.rows_last(y, layout)
    gc = launch.rows_last(grad_y, layout)
    gx = cupy.empty(yc.shape, dtype=yc.dtype)
    p = plan(st, "bwd", rows, cols, worst_misalignment(yc.data.ptr, cols, yc.itemsize), current_device())
    bound = p.bind(rows, cols, op)
    # backward sums run in float64
    _launch(p, bound(gc, yc, gx) if p.regime in ("warp", "row") else bound(gc, yc, gx, *_workspace(p, np.float64)))
    if layout.inner != 1:
        gx = cupy.ascontiguousarray(cupy.moveaxis(gx, -1, layout.axis))
    return gx


def softmax_backward(a: BackwardArgs, *, storage: str | None = None):
    """grad_x = y * (grad_y - sum(grad_y * y)) along a.layout.axis."""
    return _backward(a.grad_y, a.y, a.layout, OP_SOFTMAX_BWD, storage)


def log_softmax_backward(a: BackwardArgs, *, storage: str | None = None):
    """grad_x = grad_y - exp(y) * sum(grad_y) along a.layout.axis."""
    return _backward(a.grad_y, a.y, a.layout, OP_LOG_SOFTMAX_BWD, storage)


# ----------------------------------------------------------------------------------
# raw entry for 16-bit words (the torch bridge's bfloat16)


def forward_raw(x, axis: int = -1, op: str = "softmax", out=None, *, storage: str | None = None):
    """softmax / log_softmax / logsumexp of a CuPy array with an explicit storage
    override: ``storage="bfloat16"`` reads ``x`` (dtype uint16) as bfloat16 words.
    No argument checks beyond shapes; the public API goes through _checks."""
    from .._checks import normalize_axis

    layout = row_layout(x.shape, normalize_axis(axis, x.ndim))
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype):
        raise ValueError("out must have x's shape and dtype")
    return _forward(x, layout, out if op != "logsumexp" else None, _FWD_OPS[op], storage)


def backward_raw(grad_y, y, axis: int = -1, op: str = "softmax_backward", *, storage: str | None = None):
    """softmax_backward / log_softmax_backward with a storage override (see forward_raw)."""
    from .._checks import normalize_axis

    if grad_y.shape != y.shape or grad_y.dtype != y.dtype:
        raise ValueError("grad_y and y must share shape and dtype")
    layout = row_layout(y.shape, normalize_axis(axis, y.ndim))
    return _backward(grad_y, y, layout, _BWD_OPS[op], storage)


__all__ = [
    "FAMILY",
    "ENTRY_POINTS",
    "VARIANTS",
    "BOUNDS",
    "Device",
    "H100",
    "H200",
    "Plan",
    "plan",
    "plan_for",
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_backward",
    "log_softmax_backward",
    "forward_raw",
    "backward_raw",
]
