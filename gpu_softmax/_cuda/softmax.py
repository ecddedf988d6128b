"""CUDA launchers for softmax, log_softmax, logsumexp and their backward passes.

Kernels live in ``cuda_src/softmax.cu`` (warp, row, split, stream and logsumexp
templates); their ``extern "C"`` entry points, C signatures and variants are
declared once in the kernel table (:mod:`.kernels`), which also packs each
launch's arguments. Plans come from :mod:`.softmax_plan` (pure functions of the
shape, a :class:`Device` description and a :class:`Policy`); kernel handles,
workspaces and the launch itself from the per-device state (:mod:`.device`).
Modules compile lazily, once per process and device, through :mod:`.loader`.
Every launch goes on CuPy's current stream; nothing here synchronises the host.

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
wait for each other's partials): such a plan is always launched cooperatively.
The driver does not refuse a cooperative grid that is too large (CuPy shrinks it
and warns), so the launch path first compares the grid with the driver's
occupancy x SMs and raises (device.CooperativeGridError); the spin itself is
bounded on the device (group_publish_wait traps after about a second). There is
no fallback to a plain launch.
"""

from __future__ import annotations

import numpy as np

from .._checks import BackwardArgs, RowLayout, SoftmaxArgs, normalize_axis, row_layout
from . import device, kernels, launch
from .kernels import BOUNDS, VARIANTS, kernel_name  # noqa: F401  (re-exported)
from .launch import STORAGES, SUFFIX, VEC, worst_misalignment  # noqa: F401  (re-exported)
from .plan import DEFAULT_POLICY, H100, H200, Device, Plan, Policy  # noqa: F401  (re-exported)
from .softmax_plan import (  # noqa: F401  (re-exported)
    LSE_THREADS,
    MIN_SPLIT_CHUNK,
    ROW_MAX_THREADS,
    ROW_MIN_THREADS,
    SPLIT_MIN_COLS,
    SPLIT_THREADS,
    STREAM_THREADS,
    WARP_BLOCK_THREADS,
    _warp_capacity,
    blocks_per_sm,
    plan,
    row_capacity,
)

FAMILY = "softmax"

ENTRY_POINTS: tuple[str, ...] = kernels.entry_points(FAMILY)
_variants = kernels.softmax_variants

# ops (runtime kernel argument)
OP_SOFTMAX, OP_LOG_SOFTMAX, OP_LOGSUMEXP = 0, 1, 2
OP_SOFTMAX_BWD, OP_LOG_SOFTMAX_BWD = 0, 1
_FWD_OPS = {"softmax": OP_SOFTMAX, "log_softmax": OP_LOG_SOFTMAX, "logsumexp": OP_LOGSUMEXP}
_BWD_OPS = {"softmax_backward": OP_SOFTMAX_BWD, "log_softmax_backward": OP_LOG_SOFTMAX_BWD}


# ----------------------------------------------------------------------------------
# device state and launches

# The planner's knobs for every call of this module (plan.Policy; the default is
# normal use). Tests replace it with another frozen Policy to reach every regime.
POLICY: Policy = DEFAULT_POLICY


def current_device() -> Device:
    """Description of CuPy's current device (read once per device, device.py)."""
    return device.current().desc


def plan_for(direction: str, storage: str, rows: int, cols: int, mis: int = 0, dev: Device | None = None) -> Plan:
    """The plan a call would get (for benchmarks: Plan.inflight_bytes_per_sm etc.)."""
    return plan(storage, direction, rows, cols, mis, current_device() if dev is None else dev, POLICY)


def _launch(ds: device.DeviceState, p: Plan, args: tuple) -> None:
    ds.launch(FAMILY, p.kernel, p.grid, p.block, args, p.smem, p.cooperative)


def _workspace(ds: device.DeviceState, p: Plan, part_dtype):
    """The split workspace (device.DeviceState.workspace), or dummies when no row splits."""
    if p.k <= 1:
        return launch.dummy("part", part_dtype), launch.dummy("cnt", np.uint64)
    return ds.workspace(p.groups, p.k, part_dtype)


# ----------------------------------------------------------------------------------
# forward


def _forward(x, layout: RowLayout, out, op: int, storage: str | None):
    """Shared body of softmax / log_softmax / logsumexp on a CuPy array."""
    cupy = launch.cupy()

    st = launch.storage_of(x.dtype, storage)
    acc = launch.acc_dtype(st)
    rows, cols = layout.rows, layout.cols

    if op == OP_LOGSUMEXP:
        if rows == 0 or cols == 0:
            fill = -np.inf if cols == 0 else 0.0
            return cupy.full(layout.reduced_shape, fill, dtype=acc)
        xc = launch.rows_last(x, layout)
        lse = cupy.empty(rows, dtype=acc)
        ds = device.current()
        p = plan(st, "lse", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), ds.desc, POLICY)
        bound = p.bind(rows, cols, None)
        _launch(ds, p, bound(xc, lse) if p.regime == "warp" else bound(xc, lse, *_workspace(ds, p, np.float64)))
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
    ds = device.current()
    p = plan(st, "fwd", rows, cols, worst_misalignment(xc.data.ptr, cols, xc.itemsize), ds.desc, POLICY)
    bound = p.bind(rows, cols, op)
    _launch(ds, p, bound(xc, y) if p.regime in ("warp", "row") else bound(xc, y, *_workspace(ds, p, acc)))
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
    cupy = launch.cupy()

    st = launch.storage_of(y.dtype, storage)
    launch.storage_of(grad_y.dtype, storage)
    rows, cols = layout.rows, layout.cols
    if rows == 0 or cols == 0:
        return cupy.empty(y.shape, dtype=y.dtype)
    yc = launch.rows_last(y, layout)
    gc = launch.rows_last(grad_y, layout)
    gx = cupy.empty(yc.shape, dtype=yc.dtype)
    ds = device.current()
    p = plan(st, "bwd", rows, cols, worst_misalignment(yc.data.ptr, cols, yc.itemsize), ds.desc, POLICY)
    bound = p.bind(rows, cols, op)
    ws = () if p.regime in ("warp", "row") else _workspace(ds, p, np.float64)  # backward sums run in float64
    _launch(ds, p, bound(gc, yc, gx, *ws))
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
    layout = row_layout(x.shape, normalize_axis(axis, x.ndim))
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype):
        raise ValueError("out must have x's shape and dtype")
    return _forward(x, layout, out if op != "logsumexp" else None, _FWD_OPS[op], storage)


def backward_raw(grad_y, y, axis: int = -1, op: str = "softmax_backward", *, storage: str | None = None):
    """softmax_backward / log_softmax_backward with a storage override (see forward_raw)."""
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
