"""CUDA launchers of vocabulary-parallel cross entropy (gpu_softmax.vocab_parallel).

The kernels, ``gs_vp_stats_*`` and ``gs_vp_finish_*``, live in
``cuda_src/cross_entropy.cu`` beside the row helpers they share with the fused
kernels (the stream regime's two passes, given the shard's offset), so they are
part of the cross-entropy module and its ENTRY_POINTS. Each is a block per row,
streamed over the local shard, one variant per storage.

``a`` is the CrossEntropyArgs of gpu_softmax.vocab_parallel: checked against the
full-vocabulary shape (a.layout.cols == V, class axis last) but holding the local
shard (..., width) in a.logits. No host synchronisation with validate=False
(validate=True reads one scalar in vp_finish, as the fused launcher does).
"""

from __future__ import annotations

import numpy as np

from .. import _checks
from .._checks import CrossEntropyArgs
from . import launch
from .cross_entropy import (NULL, VP_THREADS, _launch, _occupancy, _prep, require_kernel_options, unaliased,
                            vp_finish_name, vp_stats_name)
from .kernels import ENTRIES, RECORD_FIELDS, RECORD_WIDTH  # noqa: F401  (the record layout, re-exported)


def _vp_grid(name: str, rows: int) -> int:
    cap = max(1, _occupancy(name, VP_THREADS)) * launch.sm_count() * 2
    return int(min(rows, cap, 2**31 - 1))


def _vp_inputs(a: CrossEntropyArgs, storage: str | None):
    cupy = launch.cupy()

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
    """(rows, RECORD_WIDTH) records of the local shard (RECORD_FIELDS)."""
    cupy = launch.cupy()

    require_kernel_options(a, storage)
    st, acc, x, tgt, w = _vp_inputs(a, storage)
    rows, width = x.shape
    rec = cupy.empty((rows, RECORD_WIDTH), dtype=acc)
    if rows == 0:
        return rec
    name = vp_stats_name(st)
    _launch(name, _vp_grid(name, rows), VP_THREADS, ENTRIES[name].sig.pack(
        x=x, tgt=tgt, w=w, rec=rec, rows=rows, cols=width, v0=vocab_start, ignore=a.ignore_index,
        eps=a.label_smoothing, cap=a.logit_softcap or 0.0))  # cap 0: no cap (the kernels' convention)
    return rec


def _empty_result(a: CrossEntropyArgs, acc, want_grad: bool):
    cupy = launch.cupy()

    if a.reduction == "none":
        loss = cupy.empty(a.loss_shape, dtype=acc)
    else:
        loss = cupy.full((), np.nan if a.reduction == "mean" else 0.0, dtype=acc)
    if not want_grad:
        return loss, None
    return loss, (a.logits if a.inplace else cupy.empty(a.logits.shape, dtype=a.logits.dtype))


def vp_finish(a: CrossEntropyArgs, vocab_start: int, records, want_grad: bool, *, storage: str | None = None):
    """(loss, local grad or None) from the gathered (P, rows, RECORD_WIDTH) records.

    The gradient is d(loss * a.grad_output)/d local logits, in the logits' dtype and
    shape; with a.inplace it overwrites the local logits (returned as the gradient)."""
    cupy = launch.cupy()

    require_kernel_options(a, storage)
    st, acc, x, tgt, w = _vp_inputs(a, storage)
    rows, width = x.shape
    vocab = a.layout.cols
    if rows == 0:
        return _empty_result(a, acc, want_grad)
    recs = cupy.ascontiguousarray(records, dtype=acc)
    if recs.ndim != 3 or recs.shape[1:] != (rows, RECORD_WIDTH):
        raise ValueError(f"records has shape {tuple(records.shape)}, expected (ranks, {rows}, {RECORD_WIDTH})")

    coef, g_rows = _prep(a, st, acc, tgt, w, rows, vocab, want_grad)
    if a.inplace:  # the rows' blocks overwrite x while others still read these (issue 23 item 1)
        tgt, w, g_rows, recs = (unaliased(v, x) for v in (tgt, w, g_rows, recs))
    row_loss = cupy.empty(rows, dtype=acc)
    grad = NULL
    if want_grad:
        same_buffer = x.data.ptr == a.logits.data.ptr
        grad = x if (a.inplace and same_buffer) else cupy.empty(x.shape, dtype=x.dtype)
    name = vp_finish_name(st)
    _launch(name, _vp_grid(name, rows), VP_THREADS, ENTRIES[name].sig.pack(
        x=x, grad=grad, tgt=tgt, w=w, coef=coef, g_rows=g_rows, recs=recs, row_loss=row_loss,
        nranks=recs.shape[0], rows=rows, cols=width, v0=vocab_start, vocab=vocab, ignore=a.ignore_index,
        eps=a.label_smoothing, z=a.z_loss, cap=a.logit_softcap or 0.0))
    loss = row_loss.reshape(a.loss_shape) if a.reduction == "none" else row_loss.sum()
    if not want_grad:
        return loss, None
    grad = grad.reshape(a.logits.shape)
    if a.inplace:
        if grad.data.ptr != a.logits.data.ptr:
            a.logits[...] = grad
        grad = a.logits
    return loss, grad
