"""The public functions of :mod:`gpu_softmax.torch`: policy only (torch.compile, torch.func,
leaf rules), the work in :mod:`._ops` and :mod:`._autograd` (design: the package docstring)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _checks
from ..options import CEOptions
from . import _autograd, _bridge, _ops

__all__ = ["cross_entropy", "softmax", "log_softmax", "logsumexp"]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _refuse_func_transforms(fn: str) -> None:
    """NotImplementedError naming an active torch.func differentiating transform.

    Our autograd formulas are plain autograd (custom ops, autograd.Function without
    functorch rules): under torch.func.grad they would fail deep inside with an
    unrelated message. torch.func.vmap works (torch's per-sample fallback)."""
    stack = torch._C._functorch.get_interpreter_stack() or ()
    names = {torch._C._functorch.TransformType.Grad: "torch.func.grad (or vjp, jacrev, hessian)",
             torch._C._functorch.TransformType.Jvp: "torch.func.jvp (or jacfwd)"}
    for interp in stack:
        name = names.get(interp.key())
        if name is not None:
            raise NotImplementedError(
                f"gpu_softmax.torch.{fn} does not support {name}: its gradient is plain autograd. "
                "Differentiate with .backward() or torch.autograd.grad, or use the torch function under "
                "torch.func; torch.func.vmap is supported"
            )


def _softmax_family(fn: str, op, input: Tensor, dim: Any) -> Tensor:
    _bridge.require_tensors(input=input)
    if not _compiling():
        _refuse_func_transforms(fn)
        _checks.check_softmax(_bridge.describe(input), dim, name="input")
    return op(input, int(dim) if not isinstance(dim, bool) else dim)


def softmax(input: Tensor, dim: int = -1) -> Tensor:
    """Softmax along ``dim``: ``y_i = exp(x_i - max x) / sum_k exp(x_k - max x)``.

    As ``torch.softmax(input, dim)`` for float16/bfloat16/float32/float64 tensors of at
    least one dimension; the backward is ``y * (g - sum(g * y))`` (our backward kernel on
    CUDA, the reference on CPU). Rows holding NaN or +inf, or entirely -inf, are NaN.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> gst.softmax(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[0.0900, 0.2447, 0.6652]])
    """
    return _softmax_family("softmax", _ops.softmax_op, input, dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """Log-softmax along ``dim``: ``x_i - max x - log sum_k exp(x_k - max x)``.

    As ``torch.log_softmax(input, dim)``; the backward is ``g - exp(y) * sum(g)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> gst.log_softmax(torch.zeros(2))
        tensor([-0.6931, -0.6931])
    """
    return _softmax_family("log_softmax", _ops.log_softmax_op, input, dim)


def logsumexp(input: Tensor, dim: int = -1) -> Tensor:
    """``log sum_k exp(x_k)`` along ``dim`` (removed), in the input's dtype, as ``torch.logsumexp``.

    Accumulates in float32 (float64 for float64). The backward is ``g * softmax(x)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> gst.logsumexp(torch.log(torch.tensor([1.0, 2.0, 3.0])))
        tensor(1.7918)
    """
    return _softmax_family("logsumexp", _ops.logsumexp_op, input, dim)


_OPTIONS: dict[tuple, CEOptions] = {}


def _options(raw: dict[str, Any]) -> CEOptions:
    """CEOptions.checked(**raw), remembered by each option's type and value (True == 1, but only
    one of them is a valid label_smoothing): a repeat costs a dictionary lookup."""
    key = tuple((type(v), v) for v in raw.values())
    try:
        opts = _OPTIONS.get(key)
    except TypeError:  # an unhashable option: let the checks name it
        key, opts = None, None
    if opts is None:
        opts = CEOptions.checked(**raw)
        if key is not None:
            if len(_OPTIONS) >= 256:
                _OPTIONS.clear()
            _OPTIONS[key] = opts
    return opts


def _refuse_grads_we_do_not_give(target: Tensor, weight: Tensor | None) -> None:
    if target.requires_grad:
        raise NotImplementedError(
            "gpu_softmax.torch.cross_entropy gives no gradient with respect to target; pass target.detach()"
        )
    if weight is not None and weight.requires_grad:
        raise NotImplementedError(
            "gpu_softmax.torch.cross_entropy gives no gradient with respect to weight; pass weight.detach()"
        )


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_float32(input: Tensor, target: Tensor, weight: Tensor | None):
    """Under torch.autocast, 16-bit floats as float32 (and a float32 loss), as
    F.cross_entropy, which is on autocast's float32 list; untouched otherwise."""
    if not torch.is_autocast_enabled(input.device.type):
        return input, target, weight

    def up(t):
        return t.float() if t is not None and t.dtype in _LOW_PRECISION else t

    return up(input), up(target), up(weight)


def _refuse_inplace_on_leaf(input: Tensor) -> None:
    if input.is_leaf or (input._base is not None and input._base.is_leaf):
        raise RuntimeError(
            "cross_entropy(..., inplace_backward=True) overwrites its input with the gradient, but the input "
            "is a leaf tensor that requires grad (or a view of one), e.g. a parameter or a tensor created with "
            "requires_grad=True, whose values autograd must keep: pass logits computed from it (the output "
            "of the model's last layer), or use inplace_backward=False"
        )


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    inplace_backward: bool = False,
) -> Tensor:
    """Softmax cross-entropy, as ``torch.nn.functional.cross_entropy``, loss and gradient fused.

    Shapes as torch: ``input`` (N, C), (C,) with a 0-d ``target``, or (N, C, d1, ...) with
    the classes along dim 1; ``target`` holds class indices (the shape of ``input``
    without dim 1) or class probabilities (``input``'s shape). The per-row formulas
    (weights, ``ignore_index``, ``label_smoothing``, ``z_loss``, ``logit_softcap``) and the
    reductions are those of :func:`gpu_softmax.cross_entropy`, written there once. The
    loss has ``input``'s dtype; the kernels accumulate in float32 (float64 for float64).

    The forward computes the loss and ``d loss / d input`` in one pass and saves the
    gradient; the backward multiplies it by ``grad_output`` in place (on CUDA nothing of
    size N x C is touched when ``grad_output`` is 1, and a second backward through the
    same loss, ``retain_graph=True``, raises). With
    ``inplace_backward=True`` that gradient overwrites ``input`` (peak memory for a large
    vocabulary halves): ``input`` must be an intermediate result (not a leaf that
    requires grad) that nothing else in the graph needs, or autograd raises "modified by
    an inplace operation" at backward time; ``input`` holds the gradient afterwards.
    Logits whose elements share memory are refused (ValueError); under
    ``torch.compile`` the option is ignored (the out-of-place path runs).

    On CUDA, targets are not range-checked (that would sync the host): a target outside
    ``[0, C)`` other than ``ignore_index`` gives a NaN loss. On CPU it raises ValueError.
    Ignored rows get an exact 0 gradient.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
        >>> loss = gst.cross_entropy(x, torch.tensor([0, 2]))
        >>> round(loss.item(), 4)
        0.6691
        >>> loss.backward(); x.grad.shape
        torch.Size([2, 3])
    """
    _bridge.require_tensors(input=input, target=target, weight=weight)
    input, target, weight = _autocast_float32(input, target, weight)
    opts = _options(dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                         z_loss=z_loss, logit_softcap=logit_softcap))
    grad_on = torch.is_grad_enabled()
    if grad_on:
        _refuse_grads_we_do_not_give(target, weight)
    transformed = torch._C._are_functorch_transforms_active()
    # Under vmap the per-sample input does not report requires_grad: the gradient is
    # computed whenever grad mode is on, so a backward after vmap has it.
    want_grad = grad_on and (input.requires_grad or transformed)
    if _compiling() or transformed:
        # Traced or transformed: the registered operator. A compiled graph cannot tell
        # whether overwritten logits are used later (it materialises their gradient as
        # zeros), so inplace_backward takes the out-of-place path there: same results.
        if not _compiling():
            _refuse_func_transforms("cross_entropy")
        loss, _ = _ops.ce_op(input, target, weight, *opts.op_args(), want_grad)
        return loss
    a = _ops.ce_args(input, target, weight, opts, inplace_backward)
    if a.inplace and want_grad:
        _refuse_inplace_on_leaf(input)
        if input._base is not None:
            return _autograd.CrossEntropyInplaceView.apply(input, target, weight, a)
        loss, _ = _autograd.CrossEntropyInplace.apply(input, target, weight, a)
        return loss
    return _autograd.CrossEntropy.apply(input, target, weight, a, want_grad)
