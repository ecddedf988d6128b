"""CUDA launchers for the fused softmax cross-entropy (cuda_src/cross_entropy.cu).

One call is two or three launches on CuPy's current stream: a one-block prep kernel
that reduces the targets and weights to the mean's divisor and the loss/gradient
scales (written to a 5-element device array the main kernel reads), the per-row
kernel that writes each row's loss (and logsumexp) and, for
``cross_entropy_with_grad``, the gradient, and (for a reduced loss, or a loss asked
for in another storage) a one-block finish kernel: a fixed-order float64 sum of the
per-row losses written in the requested storage (no float atomics: the same inputs
give the same bits; a 16-bit loss needs no cast launch afterwards).

A split plan for a call with the default options (hard labels, no weight, smoothing,
z-loss or cap: `lean_options`) launches the regime's fast-path instantiation
(`gs_ce_split*_lean_*`, docs/cross_entropy_kernels.md), whose partials are tagged
64-bit words (a uint64 workspace).

Passes over the logits: one read (and one gradient write) in the warp, row and
split regimes; the stream regime (soft labels, or rows longer than the co-resident
blocks hold) reads twice. The split regime runs k blocks per row that wait for
each other: it is planned only when the device supports cooperative launches, with
the grid sized from the occupancy model (plan.py, as for softmax), and launched
cooperatively through the device state, which first compares the grid with the
driver's occupancy x SMs and raises if it is larger (the driver does not refuse
such a grid: CuPy shrinks it and the row's blocks would wait; the device-side
spin is bounded and traps after about a second). The split workspace is cached
per stream and left zeroed by the kernel (device.DeviceState.workspace).

``scale_grad`` is the backward of the autograd bridges: an in-place multiply of a
saved gradient by ``grad_output`` that returns early on the device when the scalar
is exactly 1 (no N x C traffic, no host sync).

Host synchronisation: none with ``validate=False``. ``validate=True`` reads one
scalar (the count of out-of-range targets, computed by the prep kernel) before the
main kernel runs, so a bad target raises before anything is written, also with
``inplace=True``.

Layout costs: a class axis other than the last is moved last with a copy (one
extra read and write of the logits) and the gradient is moved back as a view; with
``inplace=True`` it is then copied into the logits. Non-contiguous logits are
copied first. Soft targets are read in the accumulation dtype (float32, float64
for float64 logits), converted once when they come in another dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _checks, options
from .._checks import CrossEntropyArgs
from . import abi, device, kernels, launch
from .abi import cdiv
from .cross_entropy_plan import (  # noqa: F401  (re-exported)
    BLOCK_MIN_THREADS,
    REGIMES,
    STREAM_THREADS,
    WARP_BLOCK_THREADS,
    capacity,
    lean_variant,
    occupancy_of,
    plan,
)
from .kernels import ENTRIES
from .plan import DEFAULT_POLICY, Device, Plan, Policy

FAMILY = "cross_entropy"

SUFFIX = launch.SUFFIX
VEC = launch.VEC

# Compiled variants, names and C signatures: the kernel table (kernels.py).
VARIANTS = kernels.CE_VARIANTS
PREP_THREADS = 256
SCALE_THREADS = 256
FINISH_THREADS = 256
FINISH_MAX_ROWS = 1 << 16  # one block sums this many row losses in a few microseconds
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
NULL = abi.NULL  # a null device pointer argument

warp_name = kernels.ce_warp_name
block_name = kernels.ce_block_name
split_name = kernels.ce_split_name
split_lean_name = kernels.ce_split_lean_name
stream_name = kernels.ce_stream_name
finish_name = kernels.ce_finish_name
scale_name = kernels.ce_scale_name
prep_name = kernels.ce_prep_name
vp_stats_name = kernels.vp_stats_name
vp_finish_name = kernels.vp_finish_name
ENTRY_POINTS: tuple[str, ...] = kernels.entry_points(FAMILY)
VP_THREADS = kernels.CE_AUX_THREADS  # vocabulary parallel: a block per row, streamed over the local shard


# The planner's knobs for every call of this module (plan.Policy; the default is
# normal use). ce_split_max_chunk caps the split regime's chunk so that short rows
# reach it (the emulator runs every CUDA thread of every block on the CPU).
POLICY: Policy = DEFAULT_POLICY


def _occupancy(name: str, threads: int) -> int:
    """Resident blocks per SM on the current device (the occupancy model)."""
    return occupancy_of(device.current().desc, name, threads)


def _launch(name: str, grid: int, block: int, args: tuple, cooperative: bool = False) -> None:
    """One launch through the device state: a cooperative one (the split regime's
    blocks wait for each other) after the grid guard against the driver's occupancy."""
    device.current().launch(FAMILY, name, grid, block, args, 0, cooperative)


def plan_for(storage: str, rows: int, cols: int, mis: int = 0, soft: bool = False, dev: Device | None = None,
             default_options: bool = True) -> Plan:
    """The plan a fused call would get (for benchmarks and reports): by default one
    with no weight, smoothing, z-loss or cap (the fast-path kernels where they exist)."""
    p = plan(storage, rows, cols, mis, soft, device.current().desc if dev is None else dev, POLICY)
    return lean_variant(p, storage) if default_options and not soft else p


def lean_options(a: CrossEntropyArgs) -> bool:
    """Whether a call may take the fast-path kernels: hard labels, no class weight,
    smoothing, z-loss or soft cap (tested once per call, not per element)."""
    return not a.soft and a.weight is None and not a.label_smoothing and not a.z_loss and not a.logit_softcap


# ----------------------------------------------------------------------------------
# one fused call, step by step: inputs in the kernels' layout, validation and scales
# (prep), outputs, the launch, the reduction, the gradient back in the logits' layout


@dataclass
class _Inputs:
    storage: str
    acc: np.dtype
    x: Any  # (rows, cols) C-contiguous, class axis last
    tgt: Any  # int64 class indices or NULL
    soft_t: Any  # (rows, cols) probabilities in acc or NULL
    w: Any  # (cols,) weights in acc or NULL


def _kernel_inputs(a: CrossEntropyArgs, storage: str | None) -> _Inputs:
    """Logits, targets and weights in the layout and dtypes the kernels read."""
    cupy = launch.cupy()

    st = launch.storage_of(a.logits.dtype, storage)
    acc = launch.acc_dtype(st)
    x = launch.rows_last(a.logits, a.layout)
    if a.soft:
        soft_t = launch.rows_last(a.target, a.layout)
        if soft_t.dtype != acc:
            soft_t = soft_t.astype(acc)
        tgt = NULL
    else:
        soft_t = NULL
        tgt = _checks.hard_targets_int64(cupy, a.target, a.layout.cols, a.ignore_index)
    w = NULL if a.weight is None else cupy.ascontiguousarray(a.weight, dtype=acc)
    if a.inplace:  # (the per-row kernel reads the weights from prep's copy, never `w`)
        soft_t, tgt = (unaliased(v, x) for v in (soft_t, tgt))
    return _Inputs(st, acc, x, tgt, soft_t, w)


def unaliased(v, x):
    """`v`, or a copy of it when it may share memory with `x`, the logits the gradient
    overwrites (inplace): the blocks write rows while others still read `v`, so the
    kernels must read the values the input held at the call, as the reference does."""
    cupy = launch.cupy()

    if isinstance(v, cupy.ndarray) and cupy.may_share_memory(v, x):
        return v.copy()
    return v


def _grad_output_args(go, acc, want_grad: bool):
    """(pointer to a scalar grad_output or NULL, its value when a Python number, per-row array or NULL)."""
    cupy = launch.cupy()

    if not want_grad:
        return NULL, 1.0, NULL
    if isinstance(go, cupy.ndarray):
        if go.ndim == 0:
            return go.astype(acc).reshape(1), 1.0, NULL
        return NULL, 1.0, cupy.ascontiguousarray(go.reshape(-1), dtype=acc)
    return NULL, float(go), NULL


def _validate_targets(a: CrossEntropyArgs, tgt, classes: int, n_bad) -> None:
    """validate=True: the one host read; raises before any per-row kernel runs."""
    cupy = launch.cupy()

    bad_count = int(n_bad.get()[0])
    if bad_count:
        bad = (tgt != a.ignore_index) & ((tgt < 0) | (tgt >= classes))
        example = a.target.reshape(-1)[int(cupy.flatnonzero(bad)[0])]
        _checks.raise_bad_targets(bad_count, classes, a.ignore_index, int(example))


def _prep(a: CrossEntropyArgs, st: str, acc, tgt, w, rows: int, classes: int, want_grad: bool,
          w_scaled=NULL):
    """Launch the prep kernel; returns (coef, per-row grad_output or NULL).

    `coef` holds the loss and gradient scales (the mean's divisor reduced on the
    device). With validate=True and hard targets, raises for out-of-range targets.
    `w_scaled`: a (classes,) buffer the kernel fills with the weights over their
    absolute sum (the scales then carry that sum), for a per-row kernel to read
    instead of `w`; NULL: the scales are for `w` itself.
    """
    cupy = launch.cupy()

    g_ptr, g_val, g_rows = _grad_output_args(a.grad_output, acc, want_grad)
    coef = cupy.empty(5, dtype=acc)
    n_bad = cupy.empty(1, dtype=np.uint64)
    name = prep_name(st)
    _launch(name, 1, PREP_THREADS, ENTRIES[name].sig.pack(
        tgt=tgt, rows=rows, cols=classes, ignore=a.ignore_index, w=w, w_scaled=w_scaled,
        reduction=REDUCTION_CODE[a.reduction], g_ptr=g_ptr, g_val=g_val, coef=coef, n_bad=n_bad))
    if a.validate and not a.soft:
        _validate_targets(a, tgt, classes, n_bad)
    return coef, g_rows


def _grad_buffer(a: CrossEntropyArgs, x):
    """Where the kernel writes the gradient: over x itself when it is the logits' memory and inplace."""
    cupy = launch.cupy()

    same_buffer = x.data.ptr == a.logits.data.ptr and x.shape == a.logits.shape
    return x if (a.inplace and same_buffer) else cupy.empty(x.shape, dtype=x.dtype)


def _launch_fused(a: CrossEntropyArgs, inp: _Inputs, coef, g_rows, grad, row_loss, row_lse) -> Plan:
    rows, cols = a.layout.rows, a.layout.cols
    x = inp.x
    ds = device.current()
    p = plan(inp.storage, rows, cols, launch.worst_misalignment(x.data.ptr, cols, x.itemsize), a.soft, ds.desc,
             POLICY)
    if lean_options(a):
        p = lean_variant(p, inp.storage)
    extra = {}
    if p.regime == "warp":
        extra = {"width": p.width}
    elif p.regime == "split":
        # the fast path's partials are tagged 64-bit words (common.cuh, tagged_merge)
        lean = "_lean_" in p.kernel
        part, cnt = ds.workspace(p.groups, p.k, np.uint64 if lean else inp.acc)
        extra = {"k": p.k, "chunk": p.chunk, "part": part, "cnt": cnt}
    args = ENTRIES[p.kernel].sig.pack(
        x=x, grad=grad, tgt=inp.tgt, soft_t=inp.soft_t, w=inp.w, coef=coef, g_rows=g_rows, row_loss=row_loss,
        row_lse=row_lse, rows=rows, cols=cols, ignore=a.ignore_index, eps=a.label_smoothing, z=a.z_loss,
        cap=a.logit_softcap or 0.0, **extra)
    _launch(p.kernel, p.grid, p.block, args, cooperative=p.cooperative)
    return p


def _reduce(a: CrossEntropyArgs, row_loss, acc, loss_storage: str | None):
    """The loss from the per-row losses (the mean's divisor is already in each row): per
    row, or their fixed-order sum, in `loss_storage` (None: the accumulation dtype).

    The finish kernel sums (one block, float64, fixed order) and converts in one launch,
    so a 16-bit loss needs no cast afterwards; rows past FINISH_MAX_ROWS are first
    summed by CuPy's reduction (also a fixed order)."""
    cupy = launch.cupy()

    reduce = a.reduction != "none"
    out_st = loss_storage or ("float64" if acc == np.float64 else "float32")
    if not reduce and np.dtype(out_st if out_st != "bfloat16" else np.uint16) == row_loss.dtype:
        return row_loss.reshape(a.loss_shape)
    rows = row_loss.size
    if reduce and rows > FINISH_MAX_ROWS:
        row_loss, rows = row_loss.sum().reshape(1), 1
    out = cupy.empty(() if reduce else a.loss_shape, dtype=np.uint16 if out_st == "bfloat16" else out_st)
    grid = 1 if reduce else int(min(cdiv(rows, FINISH_THREADS), launch.sm_count() * 4))
    name = finish_name(out_st)
    _launch(name, grid, FINISH_THREADS, ENTRIES[name].sig.pack(row_loss=row_loss, out=out, rows=rows, reduce=reduce))
    return out


def _grad_to_logits_layout(a: CrossEntropyArgs, grad):
    """The rows-last gradient in the logits' layout; with inplace, in the logits' memory."""
    cupy = launch.cupy()

    layout = a.layout
    grad = cupy.moveaxis(grad, -1, layout.axis) if layout.inner != 1 else grad.reshape(a.logits.shape)
    if a.inplace:
        if grad.data.ptr != a.logits.data.ptr:
            a.logits[...] = grad
        grad = a.logits
    return grad


def _empty_rows(a: CrossEntropyArgs, acc, want_grad: bool, return_logsumexp: bool):
    cupy = launch.cupy()

    if a.reduction == "none":
        loss = cupy.empty(a.loss_shape, dtype=acc)
    else:
        loss = cupy.full((), np.nan if a.reduction == "mean" else 0.0, dtype=acc)
    out = [loss]
    if want_grad:
        out.append(a.logits if a.inplace else cupy.empty(a.logits.shape, dtype=a.logits.dtype))
    if return_logsumexp:
        out.append(cupy.empty(a.loss_shape, dtype=acc))
    return out


def require_kernel_options(a: CrossEntropyArgs, storage: str | None) -> None:
    """The option scalars float32 kernels cannot carry are refused (options.require_float32_options)."""
    if launch.acc_dtype(launch.storage_of(a.logits.dtype, storage)) == np.float32:
        options.require_float32_options(a.opts, a.layout.cols)


def _run(a: CrossEntropyArgs, want_grad: bool, return_logsumexp: bool, storage: str | None,
         loss_storage: str | None = None):
    cupy = launch.cupy()

    rows = a.layout.rows
    if loss_storage is not None and loss_storage not in launch.STORAGES:
        raise ValueError(f"loss_storage must be one of {launch.STORAGES} or None, got {loss_storage!r}")
    require_kernel_options(a, storage)
    if rows == 0:
        out = _empty_rows(a, launch.acc_dtype(launch.storage_of(a.logits.dtype, storage)), want_grad,
                          return_logsumexp)
        return out[0] if len(out) == 1 else tuple(out)
    inp = _kernel_inputs(a, storage)
    w_scaled = NULL if a.weight is None else cupy.empty(a.layout.cols, dtype=inp.acc)
    coef, g_rows = _prep(a, inp.storage, inp.acc, inp.tgt, inp.w, rows, a.layout.cols, want_grad, w_scaled)
    inp.w = w_scaled  # the per-row kernel reads the weights prep scaled (and the scales match them)
    if a.inplace:
        g_rows = unaliased(g_rows, inp.x)
    row_loss = cupy.empty(rows, dtype=inp.acc)
    row_lse = cupy.empty(rows, dtype=inp.acc) if return_logsumexp else NULL
    grad = _grad_buffer(a, inp.x) if want_grad else NULL
    _launch_fused(a, inp, coef, g_rows, grad, row_loss, row_lse)
    out = [_reduce(a, row_loss, inp.acc, loss_storage)]
    if want_grad:
        out.append(_grad_to_logits_layout(a, grad))
    if return_logsumexp:
        out.append(row_lse.reshape(a.loss_shape))
    return out[0] if len(out) == 1 else tuple(out)


def cross_entropy(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None,
                  loss_storage: str | None = None):
    """Loss only: each logits row read once, nothing of size N x C written.

    `loss_storage`: the loss's storage (e.g. the logits' own, as the torch bridge
    returns it; "bfloat16" as uint16 words); None: the accumulation dtype."""
    return _run(a, False, return_logsumexp, storage, loss_storage)


def cross_entropy_with_grad(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None,
                            loss_storage: str | None = None):
    """(loss, grad_logits[, lse]): the logits read once and the gradient written once (twice read when streamed)."""
    return _run(a, True, return_logsumexp, storage, loss_storage)


def scale_grad(grad, grad_output, cols: int, inner: int, *, storage: str | None = None) -> None:
    """grad *= grad_output in place, on the device; nothing happens past one scalar read when it is 1.

    grad: a C-contiguous gradient in the logits' own layout (class axis of length
    `cols` followed by `inner` elements per class); grad_output: a 0-d or 1-element
    array (one scalar) or one value per row (the loss shape, rows ordered as in
    grad), in the accumulation dtype of grad's storage."""
    cupy = launch.cupy()

    st = launch.storage_of(grad.dtype, storage)
    acc = launch.acc_dtype(st)
    if not grad.flags.c_contiguous:
        raise ValueError("scale_grad needs a C-contiguous gradient")
    if grad_output.dtype != acc:
        raise TypeError(f"grad_output must be {acc} for {st} gradients, got {grad_output.dtype}")
    n = grad.size
    if n == 0:
        return
    scalar = grad_output.size == 1 and grad_output.ndim <= 1
    if not scalar and grad_output.size * cols != n:
        raise ValueError(f"grad_output has {grad_output.size} values, expected 1 or one per row ({n // cols})")
    go = cupy.ascontiguousarray(grad_output.reshape(-1))
    slots = cdiv(n + VEC[st], VEC[st])
    name = scale_name(st)
    # One wave of resident blocks, grid-stride: the common grad_output == 1 launch is
    # then as short as a launch can be (every block reads one scalar and leaves).
    grid = int(min(cdiv(slots, SCALE_THREADS), max(1, _occupancy(name, SCALE_THREADS)) * launch.sm_count()))
    _launch(name, grid, SCALE_THREADS, ENTRIES[name].sig.pack(
        grad=grad, n=n, cols=cols, inner=inner, g_scalar=go if scalar else NULL, g_rows=NULL if scalar else go))

