"""CUDA launchers for the fused softmax cross-entropy (cuda_src/cross_entropy.cu).

One call is two launches on CuPy's current stream: a one-block prep kernel that
reduces the targets and weights to the mean's divisor and the loss/gradient scales
(written to a 5-element device array the main kernel reads), then the per-row
kernel that writes each row's loss (and logsumexp) and, for
``cross_entropy_with_grad``, the gradient. The reduced loss is a fixed-order sum of
the per-row losses (no float atomics: the same inputs give the same bits).

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
from typing import Any, Callable

import numpy as np

from .. import _checks
from .._checks import CrossEntropyArgs
from . import launch, loader

FAMILY = "cross_entropy"

SUFFIX = launch.SUFFIX
VEC = launch.VEC

# storage -> regime -> compiled variants. warp: NV values (128-thread blocks);
# block: (NV, launch-bound threads); stream: NV (512 threads). Mirrors the
# GS_ENTRY_CE_* lines of cuda_src/cross_entropy.cu; every variant compiles with
# zero spills for sm_80 and sm_90 (tests/test_compile.py).
VARIANTS: dict[str, dict[str, Any]] = {
    "float32": {"warp": (1, 2, 4), "block": ((4, 1024), (8, 1024)), "stream": 4},
    "float16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "stream": 2},
    "bfloat16": {"warp": (1, 2), "block": ((2, 1024), (4, 1024)), "stream": 2},
    "float64": {"warp": (1, 2, 4), "block": ((4, 512), (8, 512)), "stream": 4},
}
WARP_BLOCK_THREADS = 128
BLOCK_MIN_THREADS = 128
STREAM_THREADS = 512
PREP_THREADS = 256
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
NULL = np.uint64(0)  # a null device pointer argument


def warp_name(nv: int, storage: str) -> str:
    return f"gs_ce_warp{nv}_{SUFFIX[storage]}"


def block_name(nv: int, storage: str) -> str:
    return f"gs_ce_block{nv}_{SUFFIX[storage]}"


def stream_name(storage: str, soft: bool) -> str:
    return f"gs_ce_stream{VARIANTS[storage]['stream']}_{'soft' if soft else 'hard'}_{SUFFIX[storage]}"


def prep_name(storage: str) -> str:
    return "gs_ce_prep_f64" if storage == "float64" else "gs_ce_prep_f32"


ENTRY_POINTS: tuple[str, ...] = tuple(
    sorted(
        [warp_name(nv, s) for s, v in VARIANTS.items() for nv in v["warp"]]
        + [block_name(nv, s) for s, v in VARIANTS.items() for nv, _ in v["block"]]
        + [stream_name(s, soft) for s in VARIANTS for soft in (False, True)]
        + ["gs_ce_prep_f32", "gs_ce_prep_f64"]
    )
)


# Vocabulary-parallel building blocks (gpu_softmax.vocab_parallel): a block per row,
# streamed over the local shard, one variant per storage.
VP_THREADS = 256


def vp_stats_name(storage: str) -> str:
    return f"gs_vp_stats_{SUFFIX[storage]}"


def vp_finish_name(storage: str) -> str:
    return f"gs_vp_finish_{SUFFIX[storage]}"


ENTRY_POINTS = tuple(
    sorted(ENTRY_POINTS + tuple(f(s) for s in VARIANTS for f in (vp_stats_name, vp_finish_name)))
)


def capacity(storage: str, regime: str) -> int:
    """Longest row (plus misalignment) a held regime keeps in registers."""
    v = VARIANTS[storage]
    if regime == "warp":
        return 32 * max(v["warp"]) * VEC[storage]
    if regime == "block":
        return max(nv * threads for nv, threads in v["block"]) * VEC[storage]
    raise ValueError(regime)


# The regime table: first row whose limit covers `need` (row length plus its
# worst misalignment in elements) wins. Soft labels always stream.
REGIMES: dict[str, tuple[tuple[float, str], ...]] = {
    s: ((capacity(s, "warp"), "warp"), (capacity(s, "block"), "block"), (float("inf"), "stream")) for s in VARIANTS
}


@dataclass(frozen=True)
class Plan:
    regime: str
    kernel: str
    grid: int
    block: int
    width: int = 0  # warp regime: lanes per row


def plan(storage: str, rows: int, cols: int, mis: int, soft: bool, n_sm: int,
         occupancy: Callable[[str, int], int]) -> Plan:
    """Regime, kernel and launch shape for `rows` rows of `cols` classes."""
    if rows < 1 or cols < 1:
        raise ValueError("plan() needs at least one row and one class")
    vec = VEC[storage]
    need = cols + mis
    regime = "stream" if soft else next(r for limit, r in REGIMES[storage] if need <= limit)
    max_grid = 2**31 - 1
    if regime == "warp":
        for nv in VARIANTS[storage]["warp"]:
            width = launch.next_pow2(-(-need // (nv * vec)))
            if width <= 32:
                break
        name = warp_name(nv, storage)
        rpb = WARP_BLOCK_THREADS // width
        cap = max(1, occupancy(name, WARP_BLOCK_THREADS)) * n_sm * 4
        return Plan("warp", name, int(min(-(-rows // rpb), cap, max_grid)), WARP_BLOCK_THREADS, width=width)
    if regime == "block":
        for nv, max_threads in VARIANTS[storage]["block"]:
            threads = max(BLOCK_MIN_THREADS, -(-(-(-need // (nv * vec))) // 32) * 32)
            if threads <= max_threads:
                break
        name = block_name(nv, storage)
        cap = max(1, occupancy(name, threads)) * n_sm * 4
        return Plan("block", name, int(min(rows, cap, max_grid)), threads)
    name = stream_name(storage, soft)
    cap = max(1, occupancy(name, STREAM_THREADS)) * n_sm * 2
    return Plan("stream", name, int(min(rows, cap, max_grid)), STREAM_THREADS)


def _occupancy(name: str, threads: int) -> int:
    return launch.occupancy(FAMILY, name, threads)


def _launch(name: str, grid: int, block: int, args: tuple) -> None:
    loader.get_function(FAMILY, name)((grid, 1, 1), (block, 1, 1), args)


def _prep(a: CrossEntropyArgs, st: str, acc, tgt, w, rows: int, classes: int, want_grad: bool):
    """Launch the prep kernel; returns (coef, per-row grad_output or NULL).

    `coef` holds the loss and gradient scales (the mean's divisor reduced on the
    device). With validate=True and hard targets, reads the count of out-of-range
    targets (the one host read that costs) and raises before any per-row kernel runs.
    """
    import cupy

    g_ptr, g_val, g_rows = NULL, 1.0, NULL
    go = a.grad_output
    if want_grad:
        if isinstance(go, cupy.ndarray):
            if go.ndim == 0:
                g_ptr = go.astype(acc).reshape(1)
            else:
                g_rows = cupy.ascontiguousarray(go.reshape(-1), dtype=acc)
        else:
            g_val = float(go)
    coef = cupy.empty(5, dtype=acc)
    n_bad = cupy.empty(1, dtype=np.uint64)
    _launch(prep_name(st), 1, PREP_THREADS, (
        tgt, np.int64(rows), np.int64(classes), np.int64(a.ignore_index), w,
        np.int32(REDUCTION_CODE[a.reduction]), g_ptr, np.float64(g_val), coef, n_bad,
    ))
    if a.validate and not a.soft:
        bad_count = int(n_bad.get()[0])
        if bad_count:
            bad = (tgt != a.ignore_index) & ((tgt < 0) | (tgt >= classes))
            example = a.target.reshape(-1)[int(cupy.flatnonzero(bad)[0])]
            _checks.raise_bad_targets(bad_count, classes, a.ignore_index, int(example))
    return coef, g_rows


def _run(a: CrossEntropyArgs, want_grad: bool, return_logsumexp: bool, storage: str | None):
    import cupy

    st = launch.storage_of(a.logits.dtype, storage)
    acc = launch.acc_dtype(st)
    layout = a.layout
    rows, cols = layout.rows, layout.cols
    loss_shape = a.loss_shape

    if rows == 0:
        if a.reduction == "none":
            loss = cupy.empty(loss_shape, dtype=acc)
        else:
            loss = cupy.full((), np.nan if a.reduction == "mean" else 0.0, dtype=acc)
        out = [loss]
        if want_grad:
            out.append(a.logits if a.inplace else cupy.empty(a.logits.shape, dtype=a.logits.dtype))
        if return_logsumexp:
            out.append(cupy.empty(loss_shape, dtype=acc))
        return out[0] if len(out) == 1 else tuple(out)

    x = launch.rows_last(a.logits, layout)
    if a.soft:
        soft_t = launch.rows_last(a.target, layout)
        if soft_t.dtype != acc:
            soft_t = soft_t.astype(acc)
        tgt = NULL
    else:
        soft_t = NULL
        tgt = _checks.hard_targets_int64(cupy, a.target, cols, a.ignore_index)
    w = NULL if a.weight is None else cupy.ascontiguousarray(a.weight, dtype=acc)

    coef, g_rows = _prep(a, st, acc, tgt, w, rows, cols, want_grad)

    row_loss = cupy.empty(rows, dtype=acc)
    row_lse = cupy.empty(rows, dtype=acc) if return_logsumexp else NULL
    grad = NULL
    if want_grad:
        same_buffer = x.data.ptr == a.logits.data.ptr and x.shape == a.logits.shape
        grad = x if (a.inplace and same_buffer) else cupy.empty(x.shape, dtype=x.dtype)

    p = plan(st, rows, cols, launch.worst_misalignment(x.data.ptr, cols, x.itemsize), a.soft,
             launch.sm_count(), _occupancy)
    args = (
        x, grad, tgt, soft_t, w, coef, g_rows, row_loss, row_lse,
        np.int64(rows), np.int64(cols), np.int64(a.ignore_index),
        np.float64(a.label_smoothing), np.float64(a.z_loss), np.float64(a.logit_softcap or 0.0),
    )
    if p.regime == "warp":
        args = args + (np.int32(p.width),)
    _launch(p.kernel, p.grid, p.block, args)

    loss = row_loss.reshape(loss_shape) if a.reduction == "none" else row_loss.sum()
    out = [loss]
    if want_grad:
        if layout.inner != 1:
            grad = cupy.moveaxis(grad, -1, layout.axis)
        else:
            grad = grad.reshape(a.logits.shape)
        if a.inplace and grad.data.ptr != a.logits.data.ptr:
            a.logits[...] = grad
            grad = a.logits
        elif a.inplace:
            grad = a.logits
        out.append(grad)
    if return_logsumexp:
        out.append(row_lse.reshape(loss_shape))
    return out[0] if len(out) == 1 else tuple(out)


def cross_entropy(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None):
    """Loss only: each logits row read once, nothing of size N x C written."""
    return _run(a, want_grad=False, return_logsumexp=return_logsumexp, storage=storage)


def cross_entropy_with_grad(a: CrossEntropyArgs, return_logsumexp: bool = False, *, storage: str | None = None):
    """(loss, grad_logits[, lse]) in one pass over the logits (two for rows past the held regimes)."""
    return _run(a, want_grad=True, return_logsumexp=return_logsumexp, storage=storage)


# ----------------------------------------------------------------------------------
# vocabulary-parallel cross entropy: per-shard statistics and the finishing pass.
# `a` is the CrossEntropyArgs of gpu_softmax.vocab_parallel: checked against the
# full-vocabulary shape (a.layout.cols == V, class axis last) but holding the local
# shard (..., width) in a.logits. No host synchronisation with validate=False
# (validate=True reads one scalar in vp_finish, as the fused launcher does).


def _vp_grid(name: str, rows: int) -> int:
    cap = max(1, _occupancy(name, VP_THREADS)) * launch.sm_count() * 2
    return int(min(rows, cap, 2**31 - 1))


def _vp_inputs(a: CrossEntropyArgs, storage: str | None):
    import cupy

    st = launch.storage_of(a.logits.dtype, storage)
    acc = launch.acc_dtype(st)
    width = a.logits.shape[-1]
    x = a.logits
    if not x.flags.c_contiguous:
        x = cupy.ascontiguousarray(x)
    if x.data.ptr % x.itemsize:
        x = x.copy()
    x = x.reshape(a.layout.rows, width)
    tgt = _checks.hard_targets_int64(cupy, a.target, a.layout.cols, a.ignore_index)
    w = NULL if a.weight is None else cupy.ascontiguousarray(a.weight, dtype=acc)
    return st, acc, x, tgt, w


def vp_stats(a: CrossEntropyArgs, vocab_start: int, *, storage: str | None = None):
    """(rows, RECORD_WIDTH) records of the local shard (gpu_softmax.vocab_parallel.RECORD_FIELDS)."""
    import cupy

    from ..vocab_parallel import RECORD_WIDTH

    st, acc, x, tgt, w = _vp_inputs(a, storage)
    rows, width = x.shape
    rec = cupy.empty((rows, RECORD_WIDTH), dtype=acc)
    if rows == 0:
        return rec
    name = vp_stats_name(st)
    _launch(name, _vp_grid(name, rows), VP_THREADS, (
        x, tgt, w, rec, np.int64(rows), np.int64(width), np.int64(vocab_start), np.int64(a.ignore_index),
        np.float64(a.label_smoothing),
    ))
    return rec


def vp_finish(a: CrossEntropyArgs, vocab_start: int, records, want_grad: bool, *, storage: str | None = None):
    """(loss, local grad or None) from the gathered (P, rows, RECORD_WIDTH) records.

    The gradient is d(loss * a.grad_output)/d local logits, in the logits' dtype and
    shape; with a.inplace it overwrites the local logits (returned as the gradient)."""
    import cupy

    from ..vocab_parallel import RECORD_WIDTH

    st, acc, x, tgt, w = _vp_inputs(a, storage)
    rows, width = x.shape
    vocab = a.layout.cols
    loss_shape = a.loss_shape
    if rows == 0:
        if a.reduction == "none":
            loss = cupy.empty(loss_shape, dtype=acc)
        else:
            loss = cupy.full((), np.nan if a.reduction == "mean" else 0.0, dtype=acc)
        if not want_grad:
            return loss, None
        return loss, (a.logits if a.inplace else cupy.empty(a.logits.shape, dtype=a.logits.dtype))
    recs = cupy.ascontiguousarray(records, dtype=acc)
    if recs.ndim != 3 or recs.shape[1:] != (rows, RECORD_WIDTH):
        raise ValueError(f"records has shape {tuple(records.shape)}, expected (ranks, {rows}, {RECORD_WIDTH})")

    coef, g_rows = _prep(a, st, acc, tgt, w, rows, vocab, want_grad)
    row_loss = cupy.empty(rows, dtype=acc)
    grad = NULL
    if want_grad:
        same_buffer = x.data.ptr == a.logits.data.ptr
        grad = x if (a.inplace and same_buffer) else cupy.empty(x.shape, dtype=x.dtype)
    name = vp_finish_name(st)
    _launch(name, _vp_grid(name, rows), VP_THREADS, (
        x, grad, tgt, w, coef, g_rows, recs, row_loss, np.int32(recs.shape[0]), np.int64(rows), np.int64(width),
        np.int64(vocab_start), np.int64(vocab), np.int64(a.ignore_index), np.float64(a.label_smoothing),
        np.float64(a.z_loss),
    ))
    loss = row_loss.reshape(loss_shape) if a.reduction == "none" else row_loss.sum()
    if not want_grad:
        return loss, None
    grad = grad.reshape(a.logits.shape)
    if a.inplace:
        if grad.data.ptr != a.logits.data.ptr:
            a.logits[...] = grad
        grad = a.logits
    return loss, grad
