"""Vocabulary-parallel cross entropy: the building blocks, for NumPy and CuPy arrays.

When the classes (the vocabulary) are split over P ranks, rank p holding the logits
columns ``[vocab_start, vocab_start + width)`` of the full V, the loss of the
gathered logits is computed without ever gathering them:

1. ``partial_stats`` - per row, over the local shard, one record
   ``[m, r, x_t, d, W]`` of the (soft-capped, with ``logit_softcap``) logits x: the
   shard's max ``m`` and ``r = sum exp(x - m) - 1`` (the
   (max, sum - 1) pair of ``cuda_src/common.cuh``; an empty or all -inf shard is
   ``(-inf, -1)``), the target logit when the (global) target lies in this shard
   (else 0), and, when label smoothing is on (else 0), ``d = sum_c w_c (m - x_c)``
   and ``W = sum_c w_c`` over the shard.
2. One collective: every rank gathers the P records of every row, shape
   ``(P, rows, 5)`` in rank order (``torch.distributed.all_gather_into_tensor``).
3. ``finish`` - merges the P records in rank order (``merge_stats``; the same order,
   hence the same numbers, on every rank) into the global ``(M, R)``, ``x_t`` and
   ``D = sum_c w_c (M - x_c) = sum_p d_p + (M - m_p) W_p``, so with
   ``l = log1p(R)`` the loss is ``(1-e) w_t ((M - x_t) + l) + (e/V) (D + l W)``:
   non-negative pieces, never ``lse * W - sum w x``, which overflows or cancels when
   the logits are large. It writes the loss and the gradient of the LOCAL shard:
   ``p_c = exp(x_c - M) / (1 + R)``, ``q_c = (1-e) w_t [c == t] + (e/V) w_c``,
   ``grad = (p sum(q) - q) * scale_ce + 2 z lse p * scale_z``, ignored rows 0, times
   the cap's derivative ``1 - (x_c / cap)^2`` with a soft cap.

The mean's divisor (sum of ``w[t]`` over non-ignored rows) and the number of
non-ignored rows need no collective: targets and ``weight`` (the full (V,) class
weight) are the same on every rank. Semantics are exactly those of
``gpu_softmax.reference.cross_entropy_with_grad`` on the full logits with the class
axis last (hard labels only): weights, ``ignore_index``, label smoothing over the full
vocabulary, z-loss, ``logit_softcap``, the three reductions.

NumPy arrays are computed in float64 (records float64), like the reference; CuPy
arrays run the ``gs_vp_stats_*`` / ``gs_vp_finish_*`` kernels (``cuda_src/cross_entropy.cu``,
launched by ``gpu_softmax._cuda.vocab_parallel``), records in the accumulation dtype (float32,
float64 for float64 logits), with no host synchronisation. ``gpu_softmax.torch``'s
``vocab_parallel_cross_entropy`` puts these around one ``torch.distributed``
collective.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np

from . import _checks, reference
from ._checks import CrossEntropyArgs
from ._cuda import vocab_parallel as _cuda_vp
from ._cuda.kernels import RECORD_FIELDS, RECORD_WIDTH  # the kernels' record layout, re-exported
from .options import CEOptions

__all__ = ["check_args", "partial_stats", "merge_stats", "finish", "RECORD_FIELDS"]


# ----------------------------------------------------------------------------------
# argument checks (through gpu_softmax._checks, on the full-vocabulary shape)


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_args(
    local_logits: Any,
    target: Any,
    vocab_start: Any,
    vocab_size: Any,
    *,
    weight: Any = None,
    grad_output: Any = None,
    inplace: Any = False,
    storage: str | None = None,
    options: CEOptions | None = None,
    **option_values: Any,
) -> CrossEntropyArgs:
    """The checks of ``cross_entropy_with_grad`` for the full (..., V) logits, plus the shard's place.

    Returns the CrossEntropyArgs of the full problem (layout.cols == V, class axis
    last) holding the real local shard in ``logits``. ``storage="bfloat16"``: the
    logits are bfloat16 words in a uint16 CuPy array (checked as float16).
    """
    named = {"logits": local_logits, "target": target, "weight": weight}
    if grad_output is not None and not isinstance(grad_output, numbers.Real):
        named["grad_output"] = grad_output
    kind = _checks.common_kind(named)
    logits_dtype = local_logits.dtype
    if storage == "bfloat16" and np.dtype(logits_dtype) == np.uint16:
        logits_dtype = np.dtype(np.float16)
    else:
        _checks.require_float(local_logits, "logits")
    if local_logits.ndim == 0:
        _checks.normalize_axis(-1, 0, "logits")  # the one error text for a 0-d input
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(
            "vocabulary-parallel cross entropy takes class indices (hard labels): target must hold "
            f"integers, got dtype {target.dtype}"
        )
    width = int(local_logits.shape[-1])
    vocab_start = _check_int(vocab_start, "vocab_start")
    vocab_size = _check_int(vocab_size, "vocab_size")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be at least 1 (the sum of the shard widths), got {vocab_size}")
    if vocab_start < 0 or vocab_start + width > vocab_size:
        raise ValueError(
            f"this shard's columns [{vocab_start}, {vocab_start + width}) do not lie inside the vocabulary "
            f"[0, {vocab_size}); vocab_start must be the sum of the lower ranks' shard widths"
        )
    full_shape = tuple(local_logits.shape[:-1]) + (vocab_size,)
    go = grad_output
    go_standin = _checks.standin(go) if go is not None and not isinstance(go, numbers.Real) else go
    a = _checks.check_cross_entropy(
        _checks.standin(local_logits, full_shape, logits_dtype), _checks.standin(target), axis=-1,
        weight=_checks.standin(weight), grad_output=go_standin, inplace=inplace,
        logits_strides=tuple(int(np.prod(full_shape[i + 1:])) for i in range(len(full_shape))),
        options=options, **option_values,
    )
    if a.inplace and kind == "numpy" and not local_logits.flags.writeable:
        raise ValueError("inplace=True needs writable logits")
    if a.inplace:  # the stand-in above is contiguous: check the real shard
        _checks.require_no_self_overlap(local_logits.shape, local_logits.strides, local_logits.itemsize,
                                        "inplace=True")
    return dataclasses.replace(
        a, kind=kind, logits=local_logits, target=target, weight=weight,
        grad_output=1.0 if go is None else go,
    )


def _bad_targets_check(a: CrossEntropyArgs) -> None:
    """validate=True on NumPy: targets in [0, V) or == ignore_index (V = the full vocabulary)."""
    if a.validate:
        _checks.validate_targets(np, a.target, a.layout.cols, a.ignore_index)


def _capped_logits(a: CrossEntropyArgs) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows, width) float64 logits after the soft cap, and the cap's derivative (None without one)."""
    x = np.asarray(a.logits, dtype=np.float64).reshape(a.layout.rows, a.logits.shape[-1])
    if a.logit_softcap is None:
        return x, None
    th = np.tanh(x / a.logit_softcap)
    return a.logit_softcap * th, 1.0 - th * th


def _local_weight(a: CrossEntropyArgs, vocab_start: int, width: int) -> np.ndarray:
    if a.weight is None:
        return np.ones(width)
    return np.asarray(a.weight, dtype=np.float64)[vocab_start : vocab_start + width]


# ----------------------------------------------------------------------------------
# the three steps


def _stats_numpy(a: CrossEntropyArgs, vocab_start: int) -> np.ndarray:
    width = a.logits.shape[-1]
    x, _ = _capped_logits(a)
    rows = x.shape[0]
    rec = np.zeros((rows, RECORD_WIDTH))
    with np.errstate(all="ignore"):
        if width == 0:
            m = np.full(rows, -np.inf)
            r = np.full(rows, -1.0)
        else:
            m = x.max(axis=1)  # NaN propagates
            z = x - m[:, None]
            at_max = z == 0
            # the max contributes exactly 1: sum the others apart (as common.cuh does)
            r = np.where(at_max, 0.0, np.exp(z)).sum(axis=1) + (at_max.sum(axis=1) - 1.0)
            r = np.where(m == -np.inf, -1.0, r)  # all -inf shard: sum 0
        rec[:, 0], rec[:, 1] = m, r
        t = _checks.hard_targets_int64(np, a.target, a.layout.cols, a.ignore_index)
        lt = t - vocab_start
        hit = np.flatnonzero((t != a.ignore_index) & (lt >= 0) & (lt < width))
        rec[hit, 2] = x[hit, lt[hit]]
        if a.label_smoothing > 0.0 and width:
            w = _local_weight(a, vocab_start, width)
            rec[:, 3] = (w * _gap(m[:, None], x)).sum(axis=1)
            rec[:, 4] = w.sum()
    return rec


def partial_stats(
    local_logits: Any,
    target: Any,
    vocab_start: int,
    vocab_size: int,
    *,
    weight: Any = None,
    storage: str | None = None,
    **options: Any,
) -> Any:
    """(rows, 5) records [max, sum - 1, target logit or 0, sum_c w_c (max - x_c), sum_c w_c] of this shard.

    The last two are 0 without label smoothing. With ``logit_softcap`` the records are
    those of the capped logits ``cap * tanh(x / cap)``.

    ``local_logits`` (..., width) with the classes last, ``target`` (...) of global
    class ids, ``weight`` the full (V,) class weight. NumPy: float64 records; CuPy:
    the accumulation dtype (``storage="bfloat16"`` reads uint16 words as bfloat16).
    """
    opts = CEOptions.from_keywords(options, "partial_stats")
    a = check_args(local_logits, target, vocab_start, vocab_size, weight=weight, storage=storage, options=opts)
    return _partial_stats_checked(a, int(vocab_start), storage)


def _partial_stats_checked(a: CrossEntropyArgs, vocab_start: int, storage: str | None = None) -> Any:
    if a.kind == "cupy":
        return _cuda_vp.vp_stats(a, vocab_start, storage=storage)
    _bad_targets_check(a)
    return _stats_numpy(a, vocab_start)


def _nan_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where((a > b) | np.isnan(a), a, b)


def _rel_exp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # exp(a - b) with exactly 1 for equal arguments (two -inf partials: no inf - inf)
    with np.errstate(all="ignore"):
        return np.where(a == b, 1.0, np.exp(a - b))


def _gap(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    # m - x >= 0, with 0 where they are equal (two -inf: no inf - inf)
    return np.where(m == x, 0.0, m - x)


def _shift(m: np.ndarray, w: np.ndarray, M: np.ndarray) -> np.ndarray:
    # (M - m) * w: a shard's gaps moved from its max m to the global max M (0 for no weight)
    return np.where((w == 0) | (m == M), 0.0, (M - m) * w)


def merge_stats(records: np.ndarray) -> np.ndarray:
    """(rows, 5) global [M, R, x_t, D, W] from the gathered (P, rows, 5) records.

    Merged in rank order with the (max, sum - 1) merge of common.cuh, so every rank
    gets the same numbers; x_t and W are plain sums over ranks, D = sum_c w_c (M - x_c)
    the shards' gaps moved to the global max M. NumPy only (the CUDA finishing kernel
    merges the records itself, in the same order).
    """
    rec = np.asarray(records, dtype=np.float64)
    if rec.ndim != 3 or rec.shape[-1] != RECORD_WIDTH or rec.shape[0] < 1:
        raise ValueError(f"records must have shape (ranks, rows, {RECORD_WIDTH}), got {rec.shape}")
    M, R = rec[0, :, 0].copy(), rec[0, :, 1].copy()
    with np.errstate(all="ignore"):
        for p in range(1, rec.shape[0]):
            m2, r2 = rec[p, :, 0], rec[p, :, 1]
            Mn = _nan_max(M, m2)
            R = np.where(M == Mn, R + (1.0 + r2) * _rel_exp(m2, Mn), r2 + (1.0 + R) * _rel_exp(M, Mn))
            M = Mn
    out = np.empty(rec.shape[1:])
    out[:, 0], out[:, 1] = M, R
    out[:, 2] = rec[:, :, 2].sum(axis=0)
    with np.errstate(all="ignore"):
        out[:, 3] = sum(rec[p, :, 3] + _shift(rec[p, :, 0], rec[p, :, 4], M) for p in range(rec.shape[0]))
    out[:, 4] = rec[:, :, 4].sum(axis=0)
    return out


def _finish_numpy(a: CrossEntropyArgs, vocab_start: int, records: np.ndarray, want_grad: bool):
    width = a.logits.shape[-1]
    V = a.layout.cols
    eps, zc = a.label_smoothing, a.z_loss
    g = merge_stats(records)
    if g.shape[0] != a.layout.rows:
        raise ValueError(f"records hold {g.shape[0]} rows, the logits {a.layout.rows}")
    M, R, xt, gaps = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
    w = np.ones(V) if a.weight is None else np.asarray(a.weight, dtype=np.float64)
    W = float(w.sum())
    t = _checks.hard_targets_int64(np, a.target, V, a.ignore_index)
    valid = t != a.ignore_index
    bad = valid & ((t < 0) | (t >= V))
    ok = valid & ~bad
    tt = np.where(ok, t, 0)
    w_t = np.where(ok, w[tt], 0.0)
    with np.errstate(all="ignore"):
        finite = np.isfinite(M)
        l = np.where(finite, np.log1p(R), np.nan)  # an infinite or NaN max: a NaN row
        lse = M + l
        inv_s = np.where(finite, 1.0 / (1.0 + R), np.nan)
        # (M - x_t) + l, not lse - x_t: M + l rounds l away when |M| is large
        ce = np.where(ok, w_t * ((M - xt) + l), 0.0)
        if eps > 0.0:
            ce = (1.0 - eps) * ce + (eps / V) * np.where(ok, gaps + l * W, 0.0)
        ce = np.where(bad, np.nan, ce)
        zl = np.where(valid, zc * lse * lse, 0.0) if zc else np.zeros(len(t))
        divisor = np.nan if bad.any() else float(w_t.sum())
        n_valid = float(valid.sum())
    loss = reference._reduce(a, ce, zl, divisor, n_valid)
    if not want_grad:
        return loss, None

    x, dcap = _capped_logits(a)
    go = np.asarray(a.grad_output, dtype=np.float64)
    with np.errstate(all="ignore"):
        if a.reduction == "none":
            ce_scale = zl_scale = np.broadcast_to(go, a.loss_shape).reshape(-1, 1)
        elif a.reduction == "sum":
            ce_scale = zl_scale = go
        else:
            ce_scale, zl_scale = go / divisor, go / n_valid
        p = np.exp(x - M[:, None]) * inv_s[:, None]
        qsum = ((1.0 - eps) * w_t + ((eps / V) * W if eps > 0.0 else 0.0))[:, None]
        grad = p * qsum
        if eps > 0.0:
            grad = grad - (eps / V) * _local_weight(a, vocab_start, width)
        lt = tt - vocab_start
        hit = np.flatnonzero(ok & (lt >= 0) & (lt < width))
        grad[hit, lt[hit]] -= (1.0 - eps) * w_t[hit]
        grad = grad * ce_scale
        if zc:
            grad = grad + (2.0 * zc) * (lse[:, None] * p) * zl_scale
        if dcap is not None:
            grad = grad * dcap
        grad = np.where(valid[:, None], grad, 0.0)
        grad = np.where(bad[:, None], np.nan, grad)
    grad = grad.reshape(a.logits.shape)
    if a.inplace:
        a.logits[...] = grad
        return loss, a.logits
    return loss, grad.astype(a.logits.dtype)


def finish(
    local_logits: Any,
    target: Any,
    vocab_start: int,
    vocab_size: int,
    records: Any,
    *,
    weight: Any = None,
    grad_output: Any = 1.0,
    want_grad: bool = True,
    inplace: bool = False,
    storage: str | None = None,
    **options: Any,
):
    """(loss, local gradient) from the gathered (P, rows, 5) records of every rank.

    The loss is that of ``cross_entropy`` on the full logits (every rank computes the
    same); the gradient is d(loss * grad_output)/d local_logits (None when
    ``want_grad`` is False). ``inplace=True`` writes it over ``local_logits``.
    ``logit_softcap`` must be the one the records were made with.
    """
    opts = CEOptions.from_keywords(options, "finish")
    a = check_args(local_logits, target, vocab_start, vocab_size, weight=weight, grad_output=grad_output,
                   inplace=inplace, storage=storage, options=opts)
    return _finish_checked(a, int(vocab_start), records, want_grad, storage)


def _finish_checked(a: CrossEntropyArgs, vocab_start: int, records: Any, want_grad: bool,
                    storage: str | None = None):
    if a.kind == "cupy":
        return _cuda_vp.vp_finish(a, vocab_start, records, want_grad, storage=storage)
    _bad_targets_check(a)
    return _finish_numpy(a, vocab_start, np.asarray(records), want_grad)


def cross_entropy_sharded(logits: Any, target: Any, widths, **kwargs):
    """All P ranks in one process: split ``logits`` (..., V) by ``widths``, run the three
    steps, return (loss, full gradient). For tests and for trying the blocks out.
    ``widths`` must be non-negative and sum to the logits' last dimension (ValueError)."""
    xp_concat = np.concatenate
    if _checks.array_kind(logits, "logits") == "cupy":
        import cupy

        xp_concat = cupy.concatenate
    widths = [_check_int(w, "each width") for w in widths]
    V = sum(widths)
    cols = logits.shape[-1] if logits.ndim else None
    if min(widths, default=-1) < 0 or V != cols:
        raise ValueError(
            f"widths {widths} must be non-negative and sum to logits' last dimension, {cols} "
            f"(they sum to {V}): every column belongs to exactly one shard"
        )
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
    shards = [logits[..., s : s + w] for s, w in zip(starts, widths)]
    stat_kw = {k: kwargs[k] for k in ("weight", "ignore_index", "label_smoothing", "logit_softcap", "validate",
                                      "storage") if k in kwargs}
    recs = [partial_stats(x, target, int(s), V, **stat_kw) for x, s in zip(shards, starts)]
    stacked = xp_concat([r[None] for r in recs])
    outs = [finish(x, target, int(s), V, stacked, **kwargs) for x, s in zip(shards, starts)]
    loss = outs[0][0]
    grads = [g for _, g in outs]
    return loss, (xp_concat(grads, axis=-1) if grads[0] is not None else None)
