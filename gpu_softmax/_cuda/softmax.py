"""CUDA launchers for softmax, log_softmax, logsumexp and their backward passes.

Kernels live in ``cuda_src/softmax.cu`` (warp, block, stream and logsumexp templates)
and compile lazily, once per process and device, through :mod:`.loader`. Every
launch goes on CuPy's current stream; nothing here synchronises the host.

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

Regime choice (:func:`plan`) uses the explicit table :data:`REGIMES` keyed by
dtype and row length, plus the device's multiprocessor count and the occupancy
of the chosen kernel (both cached per device).

Precision: softmax / log_softmax accumulate in float32 (float64 for float64),
keeping the row sum as ``1 + r`` so that ``log(sum)`` keeps its relative
accuracy when one element dominates. logsumexp and both backward passes
accumulate in float64 for every dtype: their results subtract from or add to
the row statistic (``m + log(sum)`` near 0, ``grad_y - sum`` near 0), where a
float32 statistic would miss the tolerance against the float64 reference.

Rows split over several blocks ("split" and split "stream"/logsumexp plans)
need every block of the grid resident at once (the blocks of a row wait for each
other's partials): the grid is sized from the occupancy calculator and launched
as a cooperative launch, so the driver refuses rather than hangs if it would
not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._checks import BackwardArgs, RowLayout, SoftmaxArgs, row_layout
from . import launch, loader
from .launch import STORAGES, SUFFIX, VEC, worst_misalignment

FAMILY = "softmax"

# ----------------------------------------------------------------------------------
# compiled variants (must mirror the GS_ENTRY_* lines of cuda_src/softmax.cu)

# (storage, direction) -> regime -> NV values compiled (16-byte slots per thread
# per tile). Caps keep every variant free of register spills: about 32
# accumulators per thread for the forward, 2 x 16 for the backward.
VARIANTS: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
for _s in ("float32", "float64"):
    VARIANTS[(_s, "fwd")] = {"warp": (1, 2, 4, 8), "block": (2, 4, 8), "stream": (4,)}
    VARIANTS[(_s, "bwd")] = {"warp": (1, 2, 4), "block": (2, 4), "stream": (2,)}
    VARIANTS[(_s, "lse")] = {"warp": (2,), "block": (2,)}
for _s in ("float16", "bfloat16"):
    VARIANTS[(_s, "fwd")] = {"warp": (1, 2, 4), "block": (1, 2, 4), "stream": (2,)}
    VARIANTS[(_s, "bwd")] = {"warp": (1, 2), "block": (1, 2), "stream": (1,)}
    VARIANTS[(_s, "lse")] = {"warp": (1,), "block": (1,)}
del _s

WARP_BLOCK_THREADS = 128  # warp kernels: 4 warps per block (launch bound 128)
BLOCK_MAX_THREADS = 512  # block kernels' launch bound
BLOCK_MIN_THREADS = 128
STREAM_THREADS = 512  # stream kernels' launch bound


def kernel_name(direction: str, regime: str, nv: int, storage: str) -> str:
    return f"gs_{direction}_{regime}{nv}_{SUFFIX[storage]}"


ENTRY_POINTS: tuple[str, ...] = tuple(
    sorted(
        kernel_name(direction, regime, nv, storage)
        for (storage, direction), regimes in VARIANTS.items()
        for regime, nvs in regimes.items()
        for nv in nvs
    )
)

# ops (runtime kernel argument)
OP_SOFTMAX, OP_LOG_SOFTMAX, OP_LOGSUMEXP = 0, 1, 2
OP_SOFTMAX_BWD, OP_LOG_SOFTMAX_BWD = 0, 1
_FWD_OPS = {"softmax": OP_SOFTMAX, "log_softmax": OP_LOG_SOFTMAX, "logsumexp": OP_LOGSUMEXP}
_BWD_OPS = {"softmax_backward": OP_SOFTMAX_BWD, "log_softmax_backward": OP_LOG_SOFTMAX_BWD}


# ----------------------------------------------------------------------------------
# the regime table


def _cap(storage: str, direction: str, regime: str, threads: int) -> int:
    """Elements one group of `threads` threads holds with the largest NV of `regime`."""
    return threads * max(VARIANTS[(storage, direction)][regime]) * VEC[storage]


# (storage, direction) -> ((max_need, regime), ...), first match wins. `need` is
# the row length plus its worst-case misalignment in elements (0..VEC-1): the
# slot grid starts at the 16-byte boundary at or below the row start.
#   warp:  width (1..32) lanes per row, rows held in registers;
#   block: one block (<= 512 threads) per row, row held in registers;
#   split: k blocks per row, each holding a chunk (rows longer than a block holds,
#          or few rows that would leave SMs idle); partials merged across blocks;
#   stream: longer than the co-resident blocks can hold: online (max, sum) read,
#          then a second read to write (split across blocks the same way).
#   logsumexp (direction "lse") holds nothing: one online read, `width` lanes per
#          row up to LSE_WARP_MAX_COLS, else blocks (k per row when rows are few).
REGIMES: dict[tuple[str, str], tuple[tuple[int, str], ...]] = {
    key: (
        (_cap(key[0], key[1], "warp", 32), "warp"),
        (_cap(key[0], key[1], "block", BLOCK_MAX_THREADS), "block"),
        (math.inf, "split"),  # falls back to "stream" when it cannot be held on chip
    )
    for key in VARIANTS
    if key[1] != "lse"
}
LSE_WARP_MAX_COLS = 2048
for _s in STORAGES:
    REGIMES[(_s, "lse")] = ((LSE_WARP_MAX_COLS, "warp"), (math.inf, "block"))
del _s
LSE_THREADS = 512
LSE_MIN_CHUNK = 1 << 14

# Test hook, None in normal use: "stream" sends every softmax/log_softmax/backward
# call to the stream kernels (so small tests reach them); "split" sends rows of
# the block regime through the split planner (which splits only when rows are few).
FORCE_REGIME: str | None = None

MIN_SPLIT_CHUNK = 2048  # elements: below this a split costs more than it spreads
STREAM_MIN_CHUNK = 1 << 15
SPLIT_MIN_COLS = 1 << 14  # rows shorter than this are never split just to fill SMs


@dataclass(frozen=True)
class Plan:
    regime: str  # "warp" | "block" | "split" | "stream"
    kernel: str
    grid: int
    block: int
    width: int = 0  # warp regime: lanes per row
    k: int = 1  # blocks per row
    chunk: int = 0  # elements per block and row (multiple of VEC)
    groups: int = 0  # row groups (grid // k)

    @property
    def cooperative(self) -> bool:
        return self.k > 1


def _block_shape(storage: str, direction: str, need: int) -> tuple[int, int] | None:
    """(NV, threads) of a block kernel holding `need` elements: the smallest NV for
    which at most BLOCK_MAX_THREADS threads do (more threads, fewer registers)."""
    vec = VEC[storage]
    for nv in VARIANTS[(storage, direction)]["block"]:
        threads = -(-need // (nv * vec))
        threads = max(BLOCK_MIN_THREADS, -(-threads // 32) * 32)
        if threads <= BLOCK_MAX_THREADS:
            return nv, threads
    return None


def plan(
    storage: str,
    direction: str,
    rows: int,
    cols: int,
    mis: int,
    n_sm: int,
    occupancy: Callable[[str, int], int],
) -> Plan:
    """Pick regime, kernel and launch shape. `occupancy(kernel, threads)` gives
    resident blocks per SM; `mis` is worst_misalignment of the layout array."""
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one column")
    vec = VEC[storage]
    need = cols + mis
    max_grid = 2**31 - 1
    if direction == "lse":
        return _plan_lse(storage, rows, cols, need, n_sm, occupancy)
    regime = next(r for limit, r in REGIMES[(storage, direction)] if need <= limit)
    if FORCE_REGIME == "stream":
        regime = "stream"
    elif FORCE_REGIME == "split" and regime != "warp":
        regime = "split"

    if regime == "warp":
        for nv in VARIANTS[(storage, direction)]["warp"]:
            width = launch.next_pow2(-(-need // (nv * vec)))
            if width <= 32:
                break
        rpb = WARP_BLOCK_THREADS // width
        name = kernel_name(direction, "warp", nv, storage)
        nblocks = -(-rows // rpb)
        cap = max(1, occupancy(name, WARP_BLOCK_THREADS)) * n_sm * 4
        return Plan("warp", name, int(min(nblocks, cap, max_grid)), WARP_BLOCK_THREADS, width=width)

    # Rows of one block: split anyway when there are too few rows to give every
    # SM a block and the row is long enough to be worth it.
    if regime == "block" and not (rows < n_sm and cols >= SPLIT_MIN_COLS):
        nv, threads = _block_shape(storage, direction, need)
        name = kernel_name(direction, "block", nv, storage)
        res = max(1, occupancy(name, threads)) * n_sm
        return Plan("block", name, int(min(rows, res * 4, max_grid)), threads, k=1, chunk=cols, groups=0)

    if regime == "stream":
        return _plan_stream(storage, direction, rows, cols, n_sm, occupancy)

    # split: k blocks per row, each holding a chunk in registers. The NV is
    # picked for >= 2 resident blocks per SM where one fits (a block waiting for
    # its row's partials then overlaps with another's loads), then for capacity.
    best = None
    for nv in VARIANTS[(storage, direction)]["block"]:
        name = kernel_name(direction, "block", nv, storage)
        per_sm = occupancy(name, BLOCK_MAX_THREADS)
        # Largest chunk (a multiple of VEC) one block holds at this misalignment.
        cap = (BLOCK_MAX_THREADS * nv * vec - mis) // vec * vec
        k_fit = -(-cols // cap)
        if k_fit <= per_sm * n_sm:
            key = (min(per_sm, 2), nv)
            if best is None or key > best[0]:
                best = (key, k_fit)
    if best is not None:
        k_fit = best[1]
        k_busy = -(-n_sm // rows)
        k = max(k_fit, min(k_busy, cols // MIN_SPLIT_CHUNK), 1)
        chunk = -(-(-(-cols // k)) // vec) * vec
        k = -(-cols // chunk)
        nv, threads = _block_shape(storage, direction, chunk + mis)
        name = kernel_name(direction, "block", nv, storage)
        res = occupancy(name, threads) * n_sm
        if k == 1:
            return Plan("block", name, int(min(rows, max(res, 1) * 4, max_grid)), threads, k=1, chunk=cols)
        groups = min(rows, res // k)
        if groups >= 1:
            return Plan("split", name, groups * k, threads, k=k, chunk=chunk, groups=groups)

    return _plan_stream(storage, direction, rows, cols, n_sm, occupancy)


def _plan_stream(storage: str, direction: str, rows: int, cols: int, n_sm: int, occupancy) -> Plan:
    """Online (max, sum) read + write read, split over k co-resident blocks."""
    vec = VEC[storage]
    max_grid = 2**31 - 1
    nv = VARIANTS[(storage, direction)]["stream"][0]
    name = kernel_name(direction, "stream", nv, storage)
    res = max(1, occupancy(name, STREAM_THREADS)) * n_sm
    k = max(1, min(-(-2 * n_sm // rows), cols // STREAM_MIN_CHUNK, res))
    # Chunks stay below 2**30 elements, whatever the row.
    k = max(k, -(-cols // (1 << 30)))
    chunk = -(-(-(-cols // k)) // vec) * vec
    k = -(-cols // chunk)
    if k == 1:
        return Plan("stream", name, int(min(rows, res * 2, max_grid)), STREAM_THREADS, k=1, chunk=cols)
    groups = min(rows, res // k)
    if groups < 1:
        raise RuntimeError(
            f"row of {cols} elements needs {k} co-resident blocks but only {res} fit on this GPU"
        )
    return Plan("stream", name, groups * k, STREAM_THREADS, k=k, chunk=chunk, groups=groups)


def _plan_lse(storage: str, rows: int, cols: int, need: int, n_sm: int, occupancy) -> Plan:
    vec = VEC[storage]
    max_grid = 2**31 - 1
    if cols <= LSE_WARP_MAX_COLS:
        nv = VARIANTS[(storage, "lse")]["warp"][0]
        width = min(32, launch.next_pow2(-(-need // (nv * vec))))
        name = kernel_name("lse", "warp", nv, storage)
        rpb = WARP_BLOCK_THREADS // width
        cap = max(1, occupancy(name, WARP_BLOCK_THREADS)) * n_sm * 4
        return Plan("warp", name, int(min(-(-rows // rpb), cap, max_grid)), WARP_BLOCK_THREADS, width=width)
    nv = VARIANTS[(storage, "lse")]["block"][0]
    name = kernel_name("lse", "block", nv, storage)
    res = max(1, occupancy(name, LSE_THREADS)) * n_sm
    k = max(1, min(-(-2 * n_sm // rows), cols // LSE_MIN_CHUNK, res))
    k = max(k, -(-cols // (1 << 30)))
    chunk = -(-(-(-cols // k)) // vec) * vec
    k = -(-cols // chunk)
    if k == 1:
        return Plan("stream", name, int(min(rows, res * 4, max_grid)), LSE_THREADS, k=1, chunk=cols)
    groups = min(rows, res // k)
    if groups < 1:
        raise RuntimeError(f"row of {cols} elements needs {k} co-resident blocks but only {res} fit on this GPU")
    return Plan("split", name, groups * k, LSE_THREADS, k=k, chunk=chunk, groups=groups)


# ----------------------------------------------------------------------------------
# device facts (cached per device in .launch)


def sm_count() -> int:
    return launch.sm_count()


def _occupancy(name: str, threads: int) -> int:
    return launch.occupancy(FAMILY, name, threads)


def _launch(p: Plan, args: tuple) -> None:
    import cupy

    rk = loader.get_function(FAMILY, p.kernel)
    if p.cooperative:
        # Blocks of a split row wait for each other: the grid must be co-resident.
        # plan() sizes it from the occupancy calculator; a cooperative launch also
        # has the driver check it. Older CuPy without the keyword: plain launch.
        try:
            rk.kernel(
                (p.grid, 1, 1), (p.block, 1, 1), args,
                shared_mem=0, stream=cupy.cuda.get_current_stream(), enable_cooperative_groups=True,
            )
            return
        except TypeError:
            pass
    rk((p.grid, 1, 1), (p.block, 1, 1), args)


def _workspace(p: Plan, part_dtype):
    """Partials ([group][2 rounds][k][2]) and per-group arrival counters (zeroed)."""
    import cupy

    if p.k <= 1:
        return launch.dummy("part", part_dtype), launch.dummy("cnt", np.uint64)
    part = cupy.empty(p.groups * 2 * p.k * 2, dtype=part_dtype)
    cnt = cupy.zeros(p.groups, dtype=np.uint64)
    return part, cnt


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
        p = plan(st, "lse", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), sm_count(), _occupancy)
        part, cnt = _workspace(p, np.float64)
        if p.regime == "warp":
            args = (xc, lse, np.int64(rows), np.int64(cols), np.int32(p.width))
        else:
            args = (xc, lse, np.int64(rows), np.int64(cols), np.int32(p.k), np.int64(p.chunk), part, cnt)
        _launch(p, args)
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
    p = plan(st, "fwd", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), sm_count(), _occupancy)
    part, cnt = _workspace(p, acc)
    if p.regime == "warp":
        args = (xc, y, np.int64(rows), np.int64(cols), np.int32(op), np.int32(p.width))
    else:
        args = (xc, y, np.int64(rows), np.int64(cols), np.int32(op), np.int32(p.k), np.int64(p.chunk), part, cnt)
    _launch(p, args)
    if direct:
        return out
    if layout.inner != 1:
        y = cupy.moveaxis(y, -1, layout.axis)
    if out is None:
        return cupy.ascontiguousarray(y)
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
    p = plan(st, "bwd", rows, cols, worst_misalignment(yc.data.ptr, cols, yc.itemsize), sm_count(), _occupancy)
    part, cnt = _workspace(p, np.float64)  # backward sums run in float64
    if p.regime == "warp":
        args = (gc, yc, gx, np.int64(rows), np.int64(cols), np.int32(op), np.int32(p.width))
    else:
        args = (gc, yc, gx, np.int64(rows), np.int64(cols), np.int32(op), np.int32(p.k), np.int64(p.chunk), part, cnt)
    _launch(p, args)
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
    "REGIMES",
    "plan",
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_backward",
    "log_softmax_backward",
    "forward_raw",
    "backward_raw",
]
