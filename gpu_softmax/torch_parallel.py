"""Vocabulary-parallel cross entropy for ``torch.distributed`` (tensor parallelism).

When a model's output layer is split over the ranks of a process group by
vocabulary (as in Megatron-LM), rank p holds ``logits[..., vocab_start : vocab_start +
width]`` of the full V classes. :func:`vocab_parallel_cross_entropy` gives, on every
rank, exactly the loss ``cross_entropy`` gives on the gathered full-vocabulary logits
(label smoothing over the full vocabulary, class weights, ``ignore_index``, z-loss,
the three reductions), and the gradient of that loss with respect to the LOCAL
logits, without ever gathering the logits:

1. per row, the local statistics ``[max, sum exp(x - max) - 1, target logit if the
   target is in this shard else 0, sum_c w_c x_c (smoothing only)]``
   (``gpu_softmax.vocab_parallel.partial_stats``; CUDA: the ``gs_vp_stats_*`` kernel);
2. ONE collective: ``all_gather_single`` (``all_gather_into_tensor`` before torch 2.13) of those (rows, 4) records (16 bytes a
   row in float32, 32 in float64), no host synchronisation;
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
(``ValueError``, raised on every rank before the collective, since targets are
replicated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from . import _torch_bridge as _bridge
from . import vocab_parallel as vp

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


def _shard_widths(width: int, device: torch.device, group, world: int) -> list[int]:
    """Every rank's shard width (one tiny all-gather; on CUDA a host sync)."""
    dev = device if device.type == "cuda" else torch.device("cpu")
    return [int(w) for w in _all_gather_stacked(torch.tensor([width], dtype=torch.int64, device=dev), group,
                                                world).reshape(-1).tolist()]


def _compute(logits: Tensor, target: Tensor, weight: Tensor | None, a, group, world: int, vocab_start: int,
             want_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(loss in logits' dtype, d loss / d local logits or None): stats, one all-gather, finish."""
    rows = a.layout.rows
    kind = _bridge.device_kind(logits)
    if kind == "cpu":
        rec = dataclasses.replace(a, kind="numpy", logits=_bridge.to_numpy(logits),
                                  target=_bridge.to_numpy(target), weight=_bridge.to_numpy(weight), inplace=False)
        stats = vp._partial_stats_checked(rec, vocab_start)
        if rows:
            gathered = _all_gather_stacked(torch.from_numpy(stats), group, world).numpy()
        else:
            gathered = np.zeros((world, 0, 4))
        loss, grad = vp._finish_checked(rec, vocab_start, gathered, want_grad)
        grad = _bridge.from_numpy(grad, logits.dtype) if want_grad else None
        return _bridge.from_numpy(loss, logits.dtype), grad
    if kind != "cuda":
        raise _bridge.unsupported(logits)
    storage = _bridge.storage(logits)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with _bridge.cupy_on(logits.device):
        rec = dataclasses.replace(
            a, kind="cupy", logits=_bridge.to_cupy(logits), target=_bridge.to_cupy(target),
            weight=_bridge.to_cupy(_bridge.acc_float(weight)), validate=False, inplace=False,
        )
        stats = _bridge.from_cupy(vp._partial_stats_checked(rec, vocab_start, storage), acc)
    if rows:
        gathered = _all_gather_stacked(stats, group, world)
    else:
        gathered = stats.new_zeros((world, 0, 4))
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
        _bridge.check_not_spent(ctx, "vocab_parallel_cross_entropy")
        (grad,) = ctx.saved_tensors
        return (_bridge.scale_saved_grad(ctx, grad, grad_loss, max(grad.dim() - 1, 0), eager=True),
                None, None, None, None, None, None)


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
) -> Tensor:
    """Cross entropy over a vocabulary split across the ranks of ``group``.

    ``local_logits`` (..., width): this rank's columns ``[vocab_start, vocab_start +
    width)`` of the full (..., V) logits, classes along the LAST dim (as Megatron-LM;
    for (N, width) that is ``F.cross_entropy``'s layout). ``target`` (...): global class
    ids, the same on every rank. ``weight``: the full (V,) class weight, the same on
    every rank. ``vocab_start`` defaults to the sum of the lower ranks' widths and
    ``vocab_size`` to the sum of all widths (``weight.shape[0]`` when ``weight`` is
    given and ``vocab_start`` is passed): finding them costs one tiny all-gather of
    the widths (and a host sync on CUDA), so pass both to avoid it. Every rank returns
    the same loss, that of ``torch.nn.functional.cross_entropy(full_logits, target,
    weight, ignore_index=..., reduction=..., label_smoothing=...)`` (plus ``z_loss *
    logsumexp**2`` per non-ignored row, averaged over them under ``mean``), and
    backpropagates into its own shard only.

    Cost per call: one all-gather of a (rows, 4) float32 (float64 for float64 logits)
    buffer per rank; two passes over the local logits in the forward (statistics,
    then loss + gradient), none in the backward. ``torch.distributed`` must be
    initialised (NCCL for CUDA tensors, gloo for CPU tensors).

    Example (``torchrun --nproc-per-node 2 script.py``)::

        dist.init_process_group("nccl")
        rank, P = dist.get_rank(), dist.get_world_size()
        torch.cuda.set_device(rank)
        local = full_logits[:, rank * V // P:(rank + 1) * V // P]   # this rank's shard
        loss = vocab_parallel_cross_entropy(local, target, label_smoothing=0.1)
        loss.backward()                                              # local.grad: this shard's slice
    """
    _bridge.require_tensors(local_logits=local_logits, target=target, weight=weight)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "vocab_parallel_cross_entropy needs torch.distributed initialised "
            "(torch.distributed.init_process_group; nccl for CUDA tensors, gloo for CPU tensors)"
        )
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if local_logits.dim() == 0:
        vp.check_args(_bridge.describe(local_logits), _bridge.describe(target), 0, 1)  # raises the 0-d error
    width = int(local_logits.shape[-1])
    if vocab_start is None or (vocab_size is None and weight is None):
        widths = _shard_widths(width, local_logits.device, group, world)
        if vocab_start is None:
            vocab_start = sum(widths[:rank])
        if vocab_size is None:
            vocab_size = sum(widths)
    elif vocab_size is None:
        vocab_size = int(weight.shape[0])
    a = vp.check_args(
        _bridge.describe(local_logits), _bridge.describe(target), vocab_start, vocab_size,
        weight=_bridge.describe(weight),
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss,
    )
    grad_on = torch.is_grad_enabled()
    if grad_on and weight is not None and weight.requires_grad:
        raise NotImplementedError(
            "vocab_parallel_cross_entropy gives no gradient with respect to weight; pass weight.detach()"
        )
    vocab_start = int(vocab_start)
    if grad_on and local_logits.requires_grad:
        return _VocabParallelCrossEntropy.apply(local_logits, target, weight, a, group, world, vocab_start)
    loss, _ = _compute(local_logits, target, weight, a, group, world, vocab_start, want_grad=False)
    return loss
