"""Fused linear + cross-entropy for PyTorch: ``linear_cross_entropy``, the LM-head loss
without the (N, V) logits, with torch's own ``F.linear_cross_entropy`` signature.

``linear_cross_entropy(input, linear_weight, target, *, linear_bias, weight, reduction,
ignore_index, label_smoothing)`` gives torch's ``F.linear_cross_entropy`` results (class
weights, probability targets, the three reductions, label smoothing with weights) with
autograd to ``input``, ``linear_weight`` and ``linear_bias``, but only a (chunk, V) block
of logits exists at a time (K-dimensional losses too: ``linear_weight`` (C, *K, H)). Our
additions: ``z_loss``, ``logit_softcap``, ``chunk_size``, ``grad_weight_acc``, ``skip_ignored``,
and any leading shape of ``input``.

- **CUDA tensors** go zero-copy to the CuPy launcher
  (:mod:`gpu_softmax._cuda.linear_cross_entropy`: cuBLAS products and our fused
  cross-entropy kernel, in place) through the bridge: PyTorch's current stream and caching
  allocator, bfloat16 as 16-bit words. Targets are not range-checked (a bad target gives
  NaN). Leaving ignored rows out of the products counts them: one host read, skipped
  (all rows computed, no read) while the stream is captured into a CUDA graph.
- **CPU tensors** run the same chunk loop (:func:`gpu_softmax._chunking.run_chunks`) with
  torch matrix products and the NumPy reference cross entropy per chunk.
- **Autograd.** ``mean``/``sum``: the forward computes the loss and the wanted gradients in
  one chunked pass and saves them; the backward scales them by ``grad_output``. ``none``: the
  forward computes the losses only, the backward runs the pass with the per-row
  ``grad_output``. No second derivative: differentiating the gradients raises a clear error.
- **torch.compile** traces the unfused torch formula instead (:func:`unfused`): same
  results, none of the memory saving.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _checks, _checks_linear, _chunking, reference
from .._chunking import Wants
from ..options import CEOptions
from . import _bridge

__all__ = ["linear_cross_entropy", "unfused"]


NO_GRAD = Wants(False, False, False)
TORCH_NAMES = {"hidden": "input", "weight": "linear_weight", "bias": "linear_bias", "class_weight": "weight"}
_UNSET = object()


# ----------------------------------------------------------------------------------
# CPU: torch products, the reference cross entropy per chunk


def _np_acc(acc: torch.dtype):
    return np.float64 if acc == torch.float64 else np.float32


def _cpu_targets(a: _checks_linear.LinearCrossEntropyArgs, target: Tensor) -> np.ndarray:
    if a.ce.soft:
        return _bridge.to_numpy(target.detach().reshape((a.rows, a.classes) + a.out_features))
    raw = _bridge.to_numpy(target.reshape(-1))
    reference.hard_target_check(dataclasses.replace(a.ce, kind="numpy", target=raw), hint=_bridge.CPU_TARGETS_HINT)
    return _checks.hard_targets_int64(np, raw, a.classes, a.ce.ignore_index)


def _cpu_run(a: _checks_linear.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
             bias: Tensor | None, target: Tensor, class_weight: Tensor | None, grad_output: Any, chunk: int):
    acc = _bridge.acc_dtype(hidden)
    n_rows, feats, classes = a.rows, a.features, a.weight_rows  # classes: the logits' columns
    h = hidden.detach().reshape(n_rows, feats)
    w = weight.detach().reshape(classes, feats)
    b = None if bias is None else bias.detach().reshape(classes)
    t = _cpu_targets(a, target)
    go = grad_output.detach().double().numpy() if isinstance(grad_output, Tensor) else float(grad_output)
    if isinstance(go, np.ndarray) and go.ndim:
        go = go.reshape((n_rows,) + a.out_features)
    sum_dtype = h.dtype if a.grad_weight_acc == "weight" else acc

    def allocate(wants: Wants, per_row: bool, zero_rows: bool, zero_sums: bool):
        rows_alloc = torch.zeros if zero_rows else torch.empty
        return (rows_alloc(n_rows * a.positions, dtype=acc) if per_row else torch.zeros((), dtype=acc),
                rows_alloc((n_rows, feats), dtype=h.dtype) if wants.hidden else None,
                torch.zeros((classes, feats), dtype=sum_dtype) if wants.weight else None,
                torch.zeros(classes, dtype=sum_dtype) if wants.bias else None)

    def rows(r):
        return h[r] if isinstance(r, slice) else h[torch.from_numpy(r)]

    def logits(hc: Tensor) -> np.ndarray:
        chunk_logits = hc @ w.T if b is None else torch.addmm(b, hc, w.T)
        return _bridge.to_numpy(chunk_logits)  # a view (a float32 copy for bf16)

    def cross_entropy(rec, want_grad: bool):
        if not want_grad:
            part, grad = reference.cross_entropy_checked(rec), None
        else:
            part, g = reference.cross_entropy_with_grad_checked(rec)
            # In place: the chunk's logits now hold their gradient (a float32 copy for bf16).
            grad = torch.from_numpy(g).to(h.dtype)
        return torch.from_numpy(np.asarray(part)).to(acc), grad

    def grad_hidden(grad, r, out) -> None:
        if isinstance(r, slice):
            torch.mm(grad, w, out=out[r])
        else:
            out[torch.from_numpy(r)] = grad @ w

    def grad_weight(grad, hc, first: bool, out) -> None:
        out.addmm_(grad.T.to(out.dtype), hc.to(out.dtype))

    def grad_bias(grad, m: int, first: bool, out) -> None:
        out += grad.sum(dim=0, dtype=out.dtype)

    ops = _chunking.ChunkOps("numpy", np, _np_acc(acc), allocate, rows, logits, cross_entropy, grad_hidden,
                             grad_weight, grad_bias)
    cw = None if class_weight is None else _bridge.to_numpy(class_weight).astype(np.float64)
    a = dataclasses.replace(a, ce=dataclasses.replace(a.ce, weight=cw))
    return _chunking.run_chunks(a, wants, ops, t, go, chunk)


# ----------------------------------------------------------------------------------
# CUDA: the CuPy launcher through gpu_softmax.torch's bridge


def _free_device_bytes(device: torch.device) -> int:
    """Free memory as PyTorch's allocator sees it: the driver's free plus torch's cached blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _cuda_run(a: _checks_linear.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
              bias: Tensor | None, target: Tensor, class_weight: Tensor | None, grad_output: Any,
              chunk: int | None):
    from .._cuda import linear_cross_entropy as launch

    acc = _bridge.acc_dtype(hidden)
    free = None if chunk is not None else _free_device_bytes(hidden.device)
    if a.ce.soft and target.dtype in (torch.bfloat16, torch.float16):
        target = target.detach().to(acc)  # the kernel reads probabilities in its accumulation dtype
    with _bridge.cupy_on(hidden.device):
        go = _bridge.to_cupy(grad_output.detach().to(acc)) if isinstance(grad_output, Tensor) \
            else float(grad_output)
        cw = None if class_weight is None else _bridge.to_cupy(class_weight.detach().to(acc))
        rec = dataclasses.replace(
            a, kind="cupy", hidden=_bridge.to_cupy(hidden), weight=_bridge.to_cupy(weight), bias=_bridge.to_cupy(bias),
            target=_bridge.to_cupy(target), chunk_size=chunk,
            ce=dataclasses.replace(a.ce.with_options(validate=False), kind="cupy", grad_output=go, weight=cw),
        )
        loss, gh, gw, gb = launch.run(rec, wants, storage=_bridge.storage(hidden), free_bytes=free)
        sums = hidden.dtype if a.grad_weight_acc == "weight" else acc
        back = lambda x, dtype: None if x is None else _bridge.from_cupy(x, dtype)  # noqa: E731
        return back(loss, acc), back(gh, hidden.dtype), back(gw, sums), back(gb, sums)


def _compute(a: _checks_linear.LinearCrossEntropyArgs, wants: Wants, hidden: Tensor, weight: Tensor,
             bias: Tensor | None, target: Tensor, class_weight: Tensor | None, grad_output: Any):
    """(loss, grad_hidden, grad_weight, grad_bias) in the inputs' dtypes; unwanted ones None."""
    kind = _bridge.device_kind(hidden)
    tensors = (hidden, weight, bias, target, class_weight, grad_output)
    if kind == "cpu":
        chunk = a.chunk_size or _chunking.chunk_rows(a.rows, a.weight_rows, hidden.element_size())
        loss, gh, gw, gb = _cpu_run(a, wants, *tensors, chunk)
    elif kind == "cuda":
        loss, gh, gw, gb = _cuda_run(a, wants, *tensors, a.chunk_size)
    else:
        raise _bridge.unsupported(hidden)
    loss = loss.reshape(a.loss_shape) if a.ce.reduction == "none" else loss.reshape(())
    return (loss, None if gh is None else gh.reshape(hidden.shape),
            None if gw is None else gw.reshape(weight.shape).to(weight.dtype),
            None if gb is None else gb.reshape(bias.shape).to(bias.dtype))


_NO_SECOND_ORDER = (
    "gpu_softmax.torch.linear_cross_entropy has no second derivative: its gradients were computed "
    "chunk by chunk and cannot be differentiated again (create_graph=True, hessian, gradient penalties "
    "through the head). Use torch.nn.functional.linear_cross_entropy(..., options=None) for that"
)


class _SecondOrderRefused(torch.autograd.Function):
    """Passes a gradient through; differentiating it raises `_NO_SECOND_ORDER` (only then)."""

    @staticmethod
    def forward(ctx, grad, *anchors):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *unused):
        raise RuntimeError(_NO_SECOND_ORDER)


def _refuse_second_order(grads: tuple, inputs: tuple) -> tuple:
    """Under create_graph=True, tie the gradients to the inputs that require grad so that their
    own backward explains itself (else they would not require grad, and torch's message would
    name no cause)."""
    anchors = [x for x in inputs if x is not None and x.requires_grad]
    if not torch.is_grad_enabled() or not anchors:
        return grads
    return tuple(None if g is None else _SecondOrderRefused.apply(g, *anchors) for g in grads)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, class_weight, a):
        wants = Wants(*ctx.needs_input_grad[:3])
        ctx.recompute = a.ce.reduction == "none" and wants.any
        if ctx.recompute or not wants.any:
            loss = _compute(a, NO_GRAD, hidden, weight, bias, target, class_weight, 1.0)[0]
            if ctx.recompute:
                ctx.save_for_backward(hidden, weight, bias, target, class_weight)
                ctx.args, ctx.wants = a, wants
            return loss
        loss, gh, gw, gb = _compute(a, wants, hidden, weight, bias, target, class_weight, 1.0)
        ctx.save_for_backward(gh, gw, gb, hidden, weight, bias)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        with torch.no_grad():
            if ctx.recompute:
                hidden, weight, bias, target, class_weight = ctx.saved_tensors
                _, gh, gw, gb = _compute(ctx.args, ctx.wants, hidden, weight, bias, target, class_weight,
                                         grad_loss)
                inputs = (hidden, weight, bias)
            else:
                # Out of place, so that a retained graph (gradcheck, retain_graph=True) can run
                # backward again; the saved gradients are freed when this returns otherwise.
                saved = ctx.saved_tensors
                gh, gw, gb = (None if g is None else g * grad_loss for g in saved[:3])
                inputs = saved[3:]
        gh, gw, gb = _refuse_second_order((gh, gw, gb), inputs)
        return gh, gw, gb, None, None, None


# ----------------------------------------------------------------------------------
# the unfused formula: torch.compile's path, and the meaning of every option


def unfused(input: Tensor, linear_weight: Tensor, target: Tensor, linear_bias: Tensor | None,
            weight: Tensor | None, opts: CEOptions) -> Tensor:
    """The loss from the full logits with torch ops: ``F.cross_entropy`` of the (capped) float32
    (float64) logits plus the z-loss on the non-ignored rows (its mean over their count)."""
    classes, out, feats = linear_weight.shape[0], tuple(linear_weight.shape[1:-1]), linear_weight.shape[-1]
    acc = _bridge.acc_dtype(input)
    flat_bias = None if linear_bias is None else linear_bias.reshape(-1)
    x = torch.nn.functional.linear(input, linear_weight.reshape(-1, feats), flat_bias).to(acc)
    x = x.reshape((-1, classes) + out)  # torch's K-dimensional layout: classes on dim 1
    if opts.logit_softcap is not None:
        x = opts.logit_softcap * torch.tanh(x / opts.logit_softcap)
    soft = target.is_floating_point()
    t = target.reshape((-1, classes) + out).to(acc) if soft else target.reshape((-1,) + out)
    loss = torch.nn.functional.cross_entropy(
        x, t, weight=None if weight is None else weight.to(acc), ignore_index=opts.ignore_index,
        label_smoothing=opts.label_smoothing, reduction=opts.reduction)
    if opts.z_loss:
        valid = torch.ones_like(x[:, 0], dtype=torch.bool) if soft else t != opts.ignore_index
        zl = torch.where(valid, opts.z_loss * torch.logsumexp(x, 1) ** 2, 0.0)
        if opts.reduction == "none":
            loss = loss + zl
        else:
            loss = loss + (zl.sum() / valid.sum() if opts.reduction == "mean" else zl.sum())
    return loss.reshape(tuple(input.shape[:-1]) + out) if opts.reduction == "none" else loss


# ----------------------------------------------------------------------------------
# the public function


def _legacy_bias(bias: Any, linear_bias: Tensor | None) -> Tensor | None:
    if bias is _UNSET:
        return linear_bias
    if linear_bias is not None:
        raise TypeError("linear_cross_entropy() got both bias (deprecated) and linear_bias; pass linear_bias only")
    warnings.warn(
        "gpu_softmax.torch.linear_cross_entropy(input, linear_weight, target, bias): the bias as a 4th "
        "positional argument (or bias=) is deprecated and goes in the next release; pass linear_bias=bias, "
        "as torch.nn.functional.linear_cross_entropy takes it",
        DeprecationWarning, stacklevel=3)
    return bias


def _chunk_from_options(chunk_size: Any, options: Any) -> Any:
    """torch's LinearCrossEntropyOptions: its batch_chunk_size stands in for chunk_size; its
    accumulation policies have no counterpart (ours is grad_weight_acc)."""
    if options is None:
        return chunk_size
    chunked = getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if chunked is None or not isinstance(options, chunked):
        raise TypeError(f"options must be a torch.nn.LinearCrossEntropyOptions or None, got {options!r}")
    return chunk_size if chunk_size is not None else options.batch_chunk_size


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    bias: Any = _UNSET,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    grad_weight_acc: str = "float32",
    skip_ignored: bool = True,
    options: Any = None,
) -> Tensor:
    """``torch.nn.functional.linear_cross_entropy`` without the logits, plus our options.

    ``input`` (..., H), ``linear_weight`` (V, H) as ``torch.nn.Linear.weight`` (or (V, *K, H): torch's
    K-dimensional loss), ``linear_bias`` (V, *K) or None, ``target`` class indices of shape (..., *K)
    or class probabilities (..., V, *K);
    ``weight`` (V,) class weights; ``reduction``, ``ignore_index`` (None means -100, as torch's;
    no effect with probabilities), ``label_smoothing`` as torch's. Ours: ``z_loss``,
    ``logit_softcap`` (as :func:`gpu_softmax.torch.cross_entropy`); ``chunk_size`` rows of logits
    at a time (from N, V and the free memory when None; ``options.batch_chunk_size`` of a
    ``torch.nn.LinearCrossEntropyOptions`` is taken for it); ``grad_weight_acc`` "float32"
    (grad_weight/grad_bias summed over chunks in float32, float64 for float64) or "weight" (in
    the weight's dtype); ``skip_ignored``: leave ignored (and weight-0) rows out of the products.
    The loss is float32 (float64 for float64 inputs); the gradients have their inputs' dtypes.
    The 4th positional ``bias`` of earlier releases still works, with a DeprecationWarning.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> h = torch.eye(2, requires_grad=True); w = torch.eye(2, requires_grad=True)
        >>> loss = gst.linear_cross_entropy(h, w, torch.tensor([0, 1]))
        >>> round(loss.item(), 4)
        0.3133
        >>> loss.backward(); w.grad.shape
        torch.Size([2, 2])
    """
    linear_bias = _legacy_bias(bias, linear_bias)
    chunk_size = _chunk_from_options(chunk_size, options)
    opts = CEOptions.checked(ignore_index=-100 if ignore_index is None else ignore_index,
                             label_smoothing=label_smoothing, reduction=reduction, z_loss=z_loss,
                             logit_softcap=logit_softcap)
    if torch.compiler.is_compiling():
        return unfused(input, linear_weight, target, linear_bias, weight, opts)
    _bridge.require_tensors(input=input, linear_weight=linear_weight, target=target, linear_bias=linear_bias,
                            weight=weight)
    floats = [t for t in (input, linear_weight, linear_bias) if t is not None and t.is_floating_point()]
    if len({t.dtype for t in floats}) > 1:
        # checked here, not by _checks: bfloat16 and float16 share a stand-in dtype there
        raise TypeError("input, linear_weight and linear_bias must share one dtype, got "
                        + ", ".join(str(t.dtype) for t in floats))
    a = _checks_linear.check_linear_cross_entropy(
        _bridge.describe(input), _bridge.describe(linear_weight), _bridge.describe(target),
        _bridge.describe(linear_bias), chunk_size=chunk_size, class_weight=_bridge.describe(weight),
        grad_weight_acc=grad_weight_acc, skip_ignored=skip_ignored, options=opts, names=TORCH_NAMES,
    )
    if a.ce.soft and target.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            "linear_cross_entropy gives no gradient to probability targets; pass target.detach() "
            "(or use torch.nn.functional.linear_cross_entropy, which builds the logits)")
    if not torch.is_grad_enabled():  # eval: the loss only (apply would still see requires_grad)
        return _compute(a, NO_GRAD, input, linear_weight, linear_bias, target, weight, 1.0)[0]
    return _LinearCrossEntropy.apply(input, linear_weight, linear_bias, target, weight, a)

