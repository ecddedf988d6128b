"""Fused linear + cross-entropy for PyTorch: ``linear_cross_entropy`` and
``LinearCrossEntropyLoss``, the LM-head loss without the (N, V) logits.

``linear_cross_entropy(hidden, weight, target, bias)`` equals
``F.cross_entropy(F.linear(hidden, weight, bias).float(), target, ...)`` (float64 in,
float64 out) with autograd to ``hidden``, ``weight`` and ``bias``, but only a
(chunk, V) block of logits exists at a time.

- **CUDA tensors** go zero-copy to the CuPy launcher
  (:mod:`gpu_softmax._cuda.linear_cross_entropy`: cuBLAS products and our fused
  cross-entropy kernel, in place) through :mod:`gpu_softmax.torch`'s bridge: PyTorch's
  current stream and caching allocator, bfloat16 as 16-bit words. No host sync: targets
  are not range-checked (a bad target gives NaN), as in ``gst.cross_entropy``.
- **CPU tensors** run the same chunked algorithm with torch matrix products and the
  NumPy reference cross entropy on each chunk (float64 inside), so autograd, gradcheck
  and the memory accounting are testable without a GPU.
- **Autograd.** With ``reduction="mean"`` or ``"sum"`` the forward computes the loss
  and all wanted gradients in one chunked pass (gradients for ``grad_output = 1``) and
  saves them; the backward scales them in place by ``grad_output`` (one elementwise
  pass, no matrix product). With ``reduction="none"`` the forward computes only the
  losses and the backward runs the chunked pass with the per-row ``grad_output``
  (the logits product is then done twice). Inputs that do not require grad skip their
  product (a frozen head skips the grad_weight product and its accumulator).

Not supported (raising): class weights (``class_weight``), soft labels, double backward.
Not a ``torch.library.custom_op`` yet: ``torch.compile`` graph-breaks around it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _checks, _chunking, reference
from ..options import CEOptions
from . import _bridge
from .._chunking import Wants

__all__ = ["linear_cross_entropy"]


NO_GRAD = Wants(False, False, False)


# ----------------------------------------------------------------------------------
# CPU: torch products, the reference cross entropy per chunk


def _cpu_run(a: _checks.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
             bias: Tensor | None, target: Tensor, grad_output: Any, chunk: int):
    acc = _bridge.acc_dtype(hidden)
    n_rows, feats, classes = a.rows, a.features, a.classes
    h = hidden.detach().reshape(n_rows, feats)
    w = weight.detach()
    b = None if bias is None else bias.detach()
    t = _bridge.to_numpy(target.reshape(n_rows))
    reference.hard_target_check(dataclasses.replace(a.ce, kind="numpy", target=t), hint=_bridge.CPU_TARGETS_HINT)
    go = grad_output.detach().double().numpy() if isinstance(grad_output, Tensor) else float(grad_output)
    if isinstance(go, np.ndarray) and go.ndim:
        go = go.reshape(n_rows)
    bf16 = h.dtype == torch.bfloat16

    def allocate(wants: Wants, per_row: bool):
        return (torch.empty(n_rows, dtype=acc) if per_row else torch.zeros((), dtype=acc),
                torch.empty((n_rows, feats), dtype=h.dtype) if wants.hidden else None,
                torch.zeros((classes, feats), dtype=acc) if wants.weight else None,
                torch.zeros(classes, dtype=acc) if wants.bias else None)

    def mean_scale(target) -> float:
        n_valid = int((target != a.ce.ignore_index).sum())
        return 1.0 / n_valid if n_valid else float("inf")

    def logits(start: int, stop: int) -> np.ndarray:
        hc = h[start:stop]
        chunk_logits = hc @ w.T if b is None else torch.addmm(b, hc, w.T)
        return _bridge.to_numpy(chunk_logits)  # a view (a float32 copy for bf16)

    def cross_entropy(rec, want_grad: bool):
        if not want_grad:
            part, grad = reference.cross_entropy_checked(rec), None
        else:
            part, g = reference.cross_entropy_with_grad_checked(rec)
            # In place: the chunk's logits now hold their gradient (a float32 copy for bf16).
            grad = torch.from_numpy(g).to(h.dtype) if bf16 else torch.from_numpy(g)
        return torch.from_numpy(np.asarray(part)).to(acc), grad

    def grad_hidden(grad, start: int, stop: int, out) -> None:
        torch.mm(grad, w, out=out[start:stop])

    def grad_weight(grad, start: int, stop: int, first: bool, out) -> None:
        out.addmm_(grad.T.to(acc), h[start:stop].to(acc))

    def grad_bias(grad, start: int, stop: int, first: bool, out) -> None:
        out += grad.sum(dim=0, dtype=acc)

    ops = _chunking.ChunkOps("numpy", allocate, mean_scale, logits, cross_entropy, grad_hidden, grad_weight,
                             grad_bias)
    return _chunking.run_chunks(a, wants, ops, t, go, chunk)


# ----------------------------------------------------------------------------------
# CUDA: the CuPy launcher through gpu_softmax.torch's bridge


def _free_device_bytes(device: torch.device) -> int:
    """Free memory as PyTorch's allocator sees it: the driver's free plus torch's cached blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _cuda_run(a: _checks.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
              bias: Tensor | None, target: Tensor, grad_output: Any, chunk: int | None):
    from .._cuda import linear_cross_entropy as launch

    free = None if chunk is not None else _free_device_bytes(hidden.device)
    with _bridge.cupy_on(hidden.device):
        go = _bridge.to_cupy(grad_output.detach().to(_bridge.acc_dtype(hidden))) if isinstance(grad_output, Tensor) \
            else float(grad_output)
        rec = dataclasses.replace(
            a, kind="cupy", hidden=_bridge.to_cupy(hidden), weight=_bridge.to_cupy(weight), bias=_bridge.to_cupy(bias),
            target=_bridge.to_cupy(target), chunk_size=chunk,
            ce=dataclasses.replace(a.ce.with_options(validate=False), kind="cupy", grad_output=go),
        )
        loss, gh, gw, gb = launch.run(rec, wants, storage=_bridge.storage(hidden), free_bytes=free)
        acc = _bridge.acc_dtype(hidden)
        return (_bridge.from_cupy(loss, acc), None if gh is None else _bridge.from_cupy(gh, hidden.dtype),
                None if gw is None else _bridge.from_cupy(gw, acc), None if gb is None else _bridge.from_cupy(gb, acc))


def _compute(a: _checks.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
             bias: Tensor | None, target: Tensor, grad_output: Any):
    """(loss, grad_hidden, grad_weight, grad_bias) in the inputs' dtypes; unwanted ones None."""
    kind = _bridge.device_kind(hidden)
    if kind == "cpu":
        chunk = a.chunk_size or _chunking.chunk_rows(a.rows, a.classes, hidden.element_size())
        loss, gh, gw, gb = _cpu_run(a, wants, hidden, weight, bias, target, grad_output, chunk)
    elif kind == "cuda":
        loss, gh, gw, gb = _cuda_run(a, wants, hidden, weight, bias, target, grad_output, a.chunk_size)
    else:
        raise _bridge.unsupported(hidden)
    loss = loss.reshape(a.loss_shape) if a.ce.reduction == "none" else loss.reshape(())
    return (loss, None if gh is None else gh.reshape(hidden.shape),
            None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, a):
        wants = Wants(*ctx.needs_input_grad[:3])
        ctx.recompute = a.ce.reduction == "none" and wants.any
        if ctx.recompute or not wants.any:
            loss = _compute(a, NO_GRAD, hidden, weight, bias, target, 1.0)[0]
            if ctx.recompute:
                ctx.save_for_backward(hidden, weight, bias, target)
                ctx.args, ctx.wants = a, wants
            return loss
        loss, gh, gw, gb = _compute(a, wants, hidden, weight, bias, target, 1.0)
        ctx.save_for_backward(gh, gw, gb)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        if ctx.recompute:
            hidden, weight, bias, target = ctx.saved_tensors
            _, gh, gw, gb = _compute(ctx.args, ctx.wants, hidden, weight, bias, target, grad_loss)
        else:
            # Out of place, so that a retained graph (gradcheck, retain_graph=True) can run
            # backward again; the saved gradients are freed when this returns otherwise.
            gh, gw, gb = (None if g is None else g * grad_loss for g in ctx.saved_tensors)
        return gh, gw, gb, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    class_weight: Tensor | None = None,
) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), target, ...)`` without the logits.

    ``hidden`` is (..., H), ``weight`` (V, H) as ``torch.nn.Linear.weight``, ``bias`` (V,)
    or None, ``target`` integer class indices of shape (...). Options as
    :func:`gpu_softmax.torch.cross_entropy` (``ignore_index``, ``label_smoothing``,
    ``reduction``, ``z_loss``, ``logit_softcap``); class weights are not supported yet
    (passing ``class_weight`` raises). The loss is float32 (float64 for float64 inputs);
    gradients reach ``hidden``, ``weight`` and ``bias`` in their dtypes, ``grad_weight``
    accumulated over chunks in float32. ``chunk_size`` rows of logits exist at a time
    (chosen from N, V and the free memory when None; fixed chunking is deterministic).

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> h = torch.eye(2, requires_grad=True); w = torch.eye(2, requires_grad=True)
        >>> loss = gst.linear_cross_entropy(h, w, torch.tensor([0, 1]))
        >>> round(loss.item(), 4)
        0.3133
        >>> loss.backward(); w.grad.shape
        torch.Size([2, 2])
    """
    _bridge.require_tensors(hidden=hidden, weight=weight, target=target, bias=bias, class_weight=class_weight)
    floats = [t for t in (hidden, weight, bias) if t is not None and t.is_floating_point()]
    if len({t.dtype for t in floats}) > 1:
        # checked here, not by _checks: bfloat16 and float16 share a stand-in dtype there
        raise TypeError("hidden, weight and bias must share one dtype, got "
                        + ", ".join(str(t.dtype) for t in floats))
    opts = CEOptions.checked(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                             z_loss=z_loss, logit_softcap=logit_softcap)
    a = _checks.check_linear_cross_entropy(
        _bridge.describe(hidden), _bridge.describe(weight), _bridge.describe(target), _bridge.describe(bias),
        chunk_size=chunk_size, class_weight=_bridge.describe(class_weight), options=opts,
    )
    if not torch.is_grad_enabled():  # eval: the loss only (apply would still see requires_grad)
        return _compute(a, NO_GRAD, hidden, weight, bias, target, 1.0)[0]
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, a)
