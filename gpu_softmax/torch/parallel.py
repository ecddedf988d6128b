"""Vocabulary-parallel cross entropy for ``torch.distributed`` (tensor parallelism).

When a model's output layer is split over the ranks of a process group by
vocabulary (as in Megatron-LM), rank p holds ``logits[..., vocab_start : vocab_start +
width]`` of the full V classes. :func:`vocab_parallel_cross_entropy` gives, on every
rank, exactly the loss ``cross_entropy`` gives on the gathered full-vocabulary logits
(label smoothing over the full vocabulary, class weights, ``ignore_index``, z-loss,
``logit_softcap``, the three reductions), and the gradient of that loss with respect to the LOCAL
logits, without ever gathering the logits:

0. one tiny all-gather of a 19-int64 row per rank that checks the ranks agree (shard
   layout, row count, dtype, options; ``gpu_softmax._parallel_checks``), read on the
   host, so a misuse raises the same error on every rank instead of hanging;
1. per row, the local statistics ``[max, sum exp(x - max) - 1, target logit if the
   target is in this shard else 0, sum_c w_c (max - x_c), sum_c w_c (smoothing only)]``
   (``gpu_softmax.vocab_parallel.partial_stats``; CUDA: the ``gs_vp_stats_*`` kernel);
2. one all-gather (``all_gather_single``; ``all_gather_into_tensor`` before torch 2.13)
   of those (rows, 5) records (20 bytes a row in float32, 40 in float64);
3. every rank merges the P records in rank order (the same numbers on every rank)
   and writes the loss and its local gradient slice
   (``gpu_softmax.vocab_parallel.finish``; CUDA: the ``gs_vp_finish_*`` kernel).

The forward saves the local gradient; the backward scales it in place by
``grad_output`` (no collective in the backward; with ``grad_output == 1``, decided on
the device, nothing of the shard's size is touched).

CUDA tensors (NCCL) run the kernels on PyTorch's current stream through the same
zero-copy bridge as :mod:`gpu_softmax.torch`; CPU tensors (gloo) run the NumPy
building blocks in float64. As in :mod:`gpu_softmax.torch`, CUDA targets are not
range-checked (an out-of-range target gives a NaN loss) and CPU targets are
(``ValueError``, raised on every rank before the records' collective, since targets
are replicated; ``validate=True`` checks that they are).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .. import _checks
from .. import _parallel_checks as pc
from . import _autograd, _bridge
from .. import vocab_parallel as vp
from ..options import CEOptions

__all__ = ["vocab_parallel_cross_entropy"]


def _all_gather_stacked(t: Tensor, group, world: int) -> Tensor:
    """(world, *t.shape): every rank's t in rank order; one collective.

    Gathered into the concatenated form (world * t.shape[0], ...), the one both gloo
    and NCCL accept, then viewed stacked."""
    t = t.contiguous()
    out = t.new_empty((world * t.shape[0],) + tuple(t.shape[1:]))
    # all_gather_single is the newer name (torch 2.13 deprecates all_gather_into_tensor)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t, group=group)
    return out.view((world,) + tuple(t.shape))


def _compute(logits: Tensor, target: Tensor, weight: Tensor | None, a, group, world: int, vocab_start: int,
             want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(loss in logits' dtype, d loss / d local logits or None): stats, one all-gather, finish."""
    rows = a.layout.rows
    kind = _bridge.device_kind(logits)
    if kind == "cpu":
        rec = dataclasses.replace(a, kind="numpy", logits=_bridge.to_numpy(logits), target=_bridge.to_numpy(target),
                                  weight=_bridge.to_numpy(weight), inplace=False)
        stats = vp._partial_stats_checked(rec, vocab_start)
        if rows:
            gathered = _all_gather_stacked(torch.from_numpy(stats), group, world).numpy()
        else:
            gathered = np.zeros((world, 0, vp.RECORD_WIDTH))
        loss, grad = vp._finish_checked(rec, vocab_start, gathered, want_grad)
        return _bridge.from_numpy(loss, logits.dtype), (_bridge.from_numpy(grad, logits.dtype) if want_grad else None)
    if kind != "cuda":
        raise _bridge.unsupported(logits)
    storage = _bridge.storage(logits)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with _bridge.cupy_on(logits.device):
        rec = dataclasses.replace(
            a, kind="cupy", logits=_bridge.to_cupy(logits), target=_bridge.to_cupy(target),
            weight=_bridge.to_cupy(_bridge.acc_float(weight)), inplace=False,
        ).with_options(validate=False)
        stats = _bridge.from_cupy(vp._partial_stats_checked(rec, vocab_start, storage), acc)
    if rows:
        gathered = _all_gather_stacked(stats, group, world)
    else:
        gathered = stats.new_zeros((world, 0, vp.RECORD_WIDTH))
    with _bridge.cupy_on(logits.device):
        loss, grad = vp._finish_checked(rec, vocab_start, _bridge.to_cupy(gathered), want_grad, storage)
        loss = _bridge.from_cupy(loss, logits.dtype)
        grad = _bridge.from_cupy(grad, logits.dtype) if want_grad else None
    return loss, grad


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Forward: stats, one all-gather, finish (the local gradient saved). Backward: scale it."""

    @staticmethod
    def forward(ctx, logits, target, weight, a, group, world, vocab_start):
        loss, grad = _compute(logits, target, weight, a, group, world, vocab_start, want_grad=True)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        # The saved local gradient scaled in place and handed on: nothing of the
        # shard's size is read or written when grad_output is 1 (decided on the device).
        _autograd.check_not_spent(ctx, "vocab_parallel_cross_entropy")
        (grad,) = ctx.saved_tensors
        return (_autograd.scale_by_grad_output(ctx, grad, grad_loss, max(grad.dim() - 1, 0), eager=True),
                None, None, None, None, None, None)


def _checksums(target: Tensor, weight: Tensor | None) -> Tensor:
    """validate=True: (sum t, sum i t) of the targets and the same of weight's float64 bits,
    on the device (wrapping int64 sums: a checksum, compared exactly)."""
    t = target.detach().reshape(-1).to(torch.int64)
    sums = [t.sum(), (t * torch.arange(1, t.numel() + 1, device=t.device)).sum()]
    if weight is None:
        sums += [torch.zeros((), dtype=torch.int64, device=t.device)] * 2
    else:
        b = weight.detach().reshape(-1).to(torch.float64).view(torch.int64)
        sums += [b.sum(), (b * torch.arange(1, b.numel() + 1, device=b.device)).sum()]
    return torch.stack(sums)


def _int_or_0(v: Any) -> int:
    try:
        return operator.index(v)
    except TypeError:
        return 0  # check_args names the type


def _describe_call(local_logits, target, weight, vocab_start, vocab_size, opts: CEOptions, validate) -> list[int]:
    """This rank's row of the agreement table, after every check that needs only its own
    arguments (vocab_start/vocab_size as given, or provisional ones that cannot fail)."""
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be True or False, got {validate!r}")
    if local_logits.dim() == 0:
        vp.check_args(_bridge.describe(local_logits), _bridge.describe(target), 0, 1)  # raises the 0-d error
    width = int(local_logits.shape[-1])
    start = 0 if vocab_start is None else vocab_start
    if vocab_size is not None:
        size = vocab_size
    else:  # provisional (the real default comes from every rank's width): one that cannot fail
        size = int(weight.shape[0]) if weight is not None else max(width + _int_or_0(start), 1)
    a = vp.check_args(
        _bridge.describe(local_logits), _bridge.describe(target), start, size, weight=_bridge.describe(weight),
        options=opts,
    )
    if torch.is_grad_enabled() and weight is not None and weight.requires_grad:
        raise NotImplementedError(
            "vocab_parallel_cross_entropy gives no gradient with respect to weight; pass weight.detach()"
        )
    dtype = "bfloat16" if local_logits.dtype == torch.bfloat16 else str(local_logits.dtype).split(".")[-1]
    target_range = None
    if _bridge.device_kind(target) == "cpu":  # CPU targets are range-checked (CUDA: NaN, no host sync)
        t = _checks.hard_targets_int64(np, _bridge.to_numpy(target), 2**62, a.ignore_index)
        t = t[t != a.ignore_index]
        target_range = (int(t.min()), int(t.max())) if t.size else (0, 0)
    return pc.describe(rows=a.layout.rows, width=width, vocab_start=vocab_start, vocab_size=vocab_size,
                       dtype=dtype, opts=a.opts, weight_len=None if weight is None else int(weight.shape[0]), validate=validate,
                       target_range=target_range)


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    group: Any = None,
    vocab_start: int | None = None,
    vocab_size: int | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    validate: bool = False,
    check_ranks: bool = True,
) -> Tensor:
    """Cross entropy over a vocabulary split across the ranks of ``group``.

    ``local_logits`` (..., width): this rank's columns ``[vocab_start, vocab_start +
    width)`` of the full (..., V) logits, classes along the LAST dim (as Megatron-LM;
    for (N, width) that is ``F.cross_entropy``'s layout). ``target`` (...): global class
    ids, the same on every rank. ``weight``: the full (V,) class weight, the same on
    every rank. ``vocab_start`` defaults to the sum of the lower ranks' widths and
    ``vocab_size`` to the sum of all widths. Every rank returns
    the same loss, that of ``torch.nn.functional.cross_entropy(full_logits, target,
    weight, ignore_index=..., reduction=..., label_smoothing=...)`` (plus ``z_loss *
    logsumexp**2`` per non-ignored row, averaged over them under ``mean``; with
    ``logit_softcap`` the logits are first capped to ``cap * tanh(x / cap)``, as in
    ``gpu_softmax.torch.cross_entropy``), and backpropagates into its own shard only.

    Checked across ranks on every call (docs/vocab_parallel_checks.md): the shard
    layout (the shards must cover [0, V) exactly once, whether ``vocab_start`` /
    ``vocab_size`` are given or not), the row count, the dtype and the options; a
    mismatch raises the same error on every rank instead of hanging.
    ``validate=True`` also compares checksums of ``target`` and ``weight``.
    ``check_ranks=False`` skips that step (one collective, no host sync: for CUDA-graph
    capture of a step whose layout was checked before); it needs ``vocab_start`` and
    ``vocab_size``, and a misuse then gives a wrong loss or a hang, not an error (different
    row counts on the ranks: gloo aborts the process, SIGABRT).

    Cost per call: one all-gather of a 19-int64 row per rank (the checks above; on CUDA
    it is read on the host, one sync), then one all-gather of a (rows, 5) float32
    (float64 for float64 logits) buffer per rank; two passes over the local logits in
    the forward (statistics, then loss + gradient), none in the backward.
    ``torch.distributed`` must be initialised (NCCL for CUDA tensors, gloo for CPU
    tensors).

    Example (``torchrun --nproc-per-node 2 script.py``)::

        dist.init_process_group("nccl")
        rank, P = dist.get_rank(), dist.get_world_size()
        torch.cuda.set_device(rank)
        local = full_logits[:, rank * V // P:(rank + 1) * V // P]   # this rank's shard
        loss = vocab_parallel_cross_entropy(local, target, label_smoothing=0.1)
        loss.backward()                                              # local.grad: this shard's slice
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "vocab_parallel_cross_entropy needs torch.distributed initialised "
            "(torch.distributed.init_process_group; nccl for CUDA tensors, gloo for CPU tensors)"
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    options = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss,
                   logit_softcap=logit_softcap)
    if check_ranks is False:
        _bridge.require_tensors(local_logits=local_logits, target=target, weight=weight)
        return _unchecked(local_logits, target, weight, group, world, vocab_start, vocab_size, options, validate)
    dev = _table_device(local_logits, group)
    # Every rank joins the one table gather, even with arguments it refuses itself
    # (every check that can differ between ranks runs in here, down to building the
    # row's tensor): the others would otherwise wait for it forever.
    local_error = None
    try:
        if check_ranks is not True:
            raise TypeError(f"check_ranks must be True or False, got {check_ranks!r}")
        _bridge.require_tensors(local_logits=local_logits, target=target, weight=weight)
        opts = CEOptions.checked(**options)
        row = _describe_call(local_logits, target, weight, vocab_start, vocab_size, opts, validate)
        meta = torch.tensor(row, dtype=torch.int64, device=dev)
        if validate is True:
            meta[pc.INDEX["target_sum"]:] = _checksums(target.to(dev), None if weight is None else weight.to(dev))
    except (TypeError, ValueError, NotImplementedError, OverflowError, RuntimeError) as exc:
        local_error, meta = exc, torch.tensor(pc.error_row(), dtype=torch.int64, device=dev)
    table = _all_gather_stacked(meta, group, world).tolist()
    if local_error is not None:
        raise local_error
    vocab_start, vocab_size = pc.agree(table, rank)
    return _run(local_logits, target, weight, group, world, vocab_start, vocab_size, opts)


def _table_device(local_logits: Any, group) -> torch.device:
    """Where the agreement row travels: the logits' CUDA device, else the CPU; for a
    non-tensor argument on an NCCL group, this rank's current CUDA device (the row must
    still reach the others)."""
    if isinstance(local_logits, Tensor):
        return local_logits.device if local_logits.device.type == "cuda" else torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _unchecked(local_logits, target, weight, group, world, vocab_start, vocab_size, options: dict,
               validate) -> Tensor:
    """check_ranks=False: the caller vouches for the layout; no agreement gather."""
    if vocab_start is None or vocab_size is None:
        raise ValueError("check_ranks=False needs vocab_start and vocab_size (finding them takes a collective)")
    if validate:
        raise ValueError("validate=True compares the ranks' arguments, which check_ranks=False skips")
    opts = CEOptions.checked(**options)
    _describe_call(local_logits, target, weight, vocab_start, vocab_size, opts, False)
    return _run(local_logits, target, weight, group, world, vocab_start, vocab_size, opts)


def _run(local_logits, target, weight, group, world, vocab_start, vocab_size, opts: CEOptions) -> Tensor:
    a = vp.check_args(
        _bridge.describe(local_logits), _bridge.describe(target), vocab_start, vocab_size, weight=_bridge.describe(weight),
        options=opts,
    )
    vocab_start = int(vocab_start)
    if torch.is_grad_enabled() and local_logits.requires_grad:
        return _VocabParallelCrossEntropy.apply(local_logits, target, weight, a, group, world, vocab_start)
    loss, _ = _compute(local_logits, target, weight, a, group, world, vocab_start, want_grad=False)
    return loss
