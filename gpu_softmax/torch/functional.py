"""The public functions of :mod:`gpu_softmax.torch` and their operators (design: the package docstring)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _checks, reference
from . import _bridge

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "softmax",
    "log_softmax",
    "logsumexp",
]

_NS = "gpu_softmax"


# ----------------------------------------------------------------------------------
# argument checks: torch-specific ones in _bridge, everything else through _checks,
# on (shape, dtype, kind) descriptions of the tensors


def _class_dim(ndim: int) -> int:
    """torch's class dim: 1 for inputs of 2+ dims, 0 for a (C,) input."""
    return 0 if ndim == 1 else 1


_CE_CHECKED: dict[tuple, _checks.CrossEntropyArgs] = {}


def _ce_args(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: Any, reduction: Any,
             label_smoothing: Any, z_loss: Any, logit_softcap: Any, inplace: Any = False) -> _checks.CrossEntropyArgs:
    """The shared checks on the tensors' descriptions; a repeat of an accepted call is one dict lookup.

    The public function and the operator both ask (the operator must check under
    torch.compile, where the public function does not): the second ask is a hit.
    The key holds each option's type as well as its value (True == 1, but only
    one of them is a valid label_smoothing)."""
    options = (ignore_index, reduction, label_smoothing, z_loss, logit_softcap, inplace)
    strides = tuple(logits.stride())  # in-place on logits whose elements share memory is refused
    key = (tuple(logits.shape), strides, logits.dtype, tuple(target.shape), target.dtype,
           None if weight is None else (tuple(weight.shape), weight.dtype),
           tuple((type(v), v) for v in options))
    try:
        a = _CE_CHECKED.get(key)
    except TypeError:  # an unhashable option: let the checks name it
        key, a = None, None
    if a is None:
        a = _checks.check_cross_entropy(
            _bridge.describe(logits), _bridge.describe(target), axis=_class_dim(logits.ndim),
            weight=_bridge.describe(weight), ignore_index=ignore_index, label_smoothing=label_smoothing,
            reduction=reduction, z_loss=z_loss, logit_softcap=logit_softcap, inplace=inplace,
            logits_strides=strides,
        )
        if key is not None:
            if len(_CE_CHECKED) >= 256:
                _CE_CHECKED.clear()
            _CE_CHECKED[key] = a
    return a


def _softmax_args(x: Tensor, dim: Any) -> _checks.SoftmaxArgs:
    return _checks.check_softmax(_bridge.describe(x), dim, name="input")


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


# ----------------------------------------------------------------------------------
# operators: cross entropy


def _ce_compute(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
                label_smoothing: float, z_loss: float, logit_softcap: float | None, want_grad: bool,
                inplace: bool) -> tuple[Tensor, Tensor | None]:
    """(loss in logits' dtype, gradient of the loss w.r.t. logits or None); one pass."""
    a = _ce_args(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap, inplace)
    if _bridge.device_kind(logits) == "cpu":
        bf16 = logits.dtype == torch.bfloat16
        rec = dataclasses.replace(
            a, kind="numpy", logits=_bridge.to_numpy(logits), target=_bridge.to_numpy(target),
            weight=_bridge.to_numpy(weight),
            inplace=inplace and not bf16,  # bf16: computed in float32, copied back below
        )
        reference.hard_target_check(rec, hint=_bridge.CPU_TARGETS_HINT)
        rec = rec.with_options(validate=False)  # checked just above
        if not want_grad:
            return _bridge.from_numpy(reference.cross_entropy_checked(rec), logits.dtype), None
        loss, grad = reference.cross_entropy_with_grad_checked(rec)
        loss = _bridge.from_numpy(loss, logits.dtype)
        if inplace:
            if bf16:
                logits.detach().copy_(torch.from_numpy(np.asarray(grad)))
            return loss, None
        return loss, _bridge.from_numpy(grad, logits.dtype)
    if _bridge.device_kind(logits) != "cuda":
        raise _bridge.unsupported(logits)
    from .._cuda import cross_entropy as launch

    with _bridge.cupy_on(logits.device):
        rec = dataclasses.replace(
            a.with_options(validate=False), kind="cupy", logits=_bridge.to_cupy(logits),
            target=_bridge.to_cupy(_bridge.acc_float(target)), weight=_bridge.to_cupy(_bridge.acc_float(weight)),
            inplace=inplace,
        )
        # The loss comes back in the logits' own storage: no cast after.
        st, loss_st = _bridge.storage(logits), _bridge.storage_name(logits)
        if not want_grad:
            return _bridge.from_cupy(launch.cross_entropy(rec, storage=st, loss_storage=loss_st), logits.dtype), None
        loss, grad = launch.cross_entropy_with_grad(rec, storage=st, loss_storage=loss_st)
        loss = _bridge.from_cupy(loss, logits.dtype)
        if inplace:
            return loss, None  # the launcher wrote the gradient into the logits' memory
        return loss, _bridge.from_cupy(grad, logits.dtype)


def _loss_shape(logits: Tensor, reduction: str) -> tuple[int, ...]:
    if reduction != "none":
        return ()
    cdim = _class_dim(logits.dim())
    return tuple(logits.shape[:cdim]) + tuple(logits.shape[cdim + 1:])


@torch.library.custom_op(f"{_NS}::cross_entropy", mutates_args=())
def _ce_op(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
           label_smoothing: float, z_loss: float, logit_softcap: float | None,
           want_grad: bool) -> tuple[Tensor, Tensor]:
    """(loss, grad) with grad = d loss / d logits (empty when want_grad is False)."""
    loss, grad = _ce_compute(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                             logit_softcap, want_grad, inplace=False)
    return loss, (grad if grad is not None else logits.new_empty(0))


@_ce_op.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap, want_grad):
    loss = logits.new_empty(_loss_shape(logits, reduction))
    return loss, (logits.new_empty(logits.shape) if want_grad else logits.new_empty(0))


@torch.library.custom_op(f"{_NS}::cross_entropy_inplace_", mutates_args=("logits",))
def _ce_inplace_op(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
                   label_smoothing: float, z_loss: float, logit_softcap: float | None) -> Tensor:
    """The loss; d loss / d logits overwrites logits."""
    loss, _ = _ce_compute(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                          logit_softcap, want_grad=True, inplace=True)
    return loss


@_ce_inplace_op.register_fake
def _(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap):
    return logits.new_empty(_loss_shape(logits, reduction))


def _ce_setup_context(ctx, inputs, output):
    logits = inputs[0]
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.class_dim = _class_dim(logits.dim())


def _ce_backward(ctx, grad_loss, _grad_grad):
    """The forward saved d loss / d logits for grad_output = 1 (mean's divisor in it).

    CUDA: scaled in place and handed on, the scale kernel deciding on the device
    (grad_output == 1 reads, writes and allocates nothing of size N x C; no host
    sync). The saved buffer is then spent: a second backward through the same graph
    (retain_graph=True) raises. CPU (and under torch.compile on CPU): as before, the
    saved buffer itself for a scalar 1, else a scaled copy; repeatable."""
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: the saved gradient has no derivative we provide.
        raise RuntimeError("gpu_softmax.torch.cross_entropy does not support double backward (create_graph=True)")
    _bridge.check_not_spent(ctx, "gpu_softmax.torch.cross_entropy")
    (grad,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or grad_loss is None:
        return (None,) * 9
    return (_bridge.scale_saved_grad(ctx, grad, grad_loss, ctx.class_dim),) + (None,) * 8


_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


def _scale_inplace(ctx, grad_loss):
    """Backward of the in-place path: the saved gradient (in the logits' memory) times grad_output, in place."""
    (grad,) = ctx.saved_tensors  # raises if anything modified the logits since (e.g. a 2nd backward)
    if grad_loss is None:
        return (None,) * 8
    _bridge.scale_grad_(grad, grad_loss, ctx.class_dim)  # bumps the version: a second backward raises
    return (grad,) + (None,) * 7


class _CrossEntropyEager(torch.autograd.Function):
    """The default path in eager mode: the forward and backward of the
    ``gpu_softmax::cross_entropy`` operator (which torch.compile traces) without the
    custom-op dispatcher's per-call cost, twice per step."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap):
        ctx.set_materialize_grads(False)
        loss, grad = _ce_compute(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                                 logit_softcap, want_grad=True, inplace=False)
        ctx.save_for_backward(grad)
        ctx.class_dim = _class_dim(logits.dim())
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError("gpu_softmax.torch.cross_entropy does not support double backward (create_graph=True)")
        _bridge.check_not_spent(ctx, "gpu_softmax.torch.cross_entropy")
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return (None,) * 8
        return (_bridge.scale_saved_grad(ctx, grad, grad_loss, ctx.class_dim, eager=True),) + (None,) * 7


class _CrossEntropyInplace(torch.autograd.Function):
    """inplace_backward=True on a tensor that is not a view.

    The gradient overwrites the logits through a mutating custom op (its version
    counter moves on, so any other use of the old values that autograd saved raises
    "modified by an inplace operation" at backward time) and the logits are marked
    dirty, so their history now ends in this node. The backward scales the gradient in
    place."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap):
        ctx.set_materialize_grads(False)
        loss = _ce_inplace_op(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                              logit_softcap)
        ctx.mark_dirty(logits)
        ctx.save_for_backward(logits)
        ctx.class_dim = _class_dim(logits.dim())
        return loss, logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_overwritten):
        # A differentiable use of the overwritten tensor (it holds the gradient now) has
        # no derivative we provide. Eager autograd passes None when it is unused;
        # torch.compile materialises a zero tensor, so this check is eager-only.
        if grad_overwritten is not None and not torch.compiler.is_compiling():
            raise RuntimeError(
                "cross_entropy(..., inplace_backward=True) overwrote its input with the gradient, "
                "and the overwritten tensor was then used in the graph; use inplace_backward=False"
            )
        return _scale_inplace(ctx, grad_loss)


class _CrossEntropyInplaceView(torch.autograd.Function):
    """inplace_backward=True on a view (e.g. ``logits.view(-1, V)``).

    Autograd cannot mark a view dirty in a Function with two outputs, so this variant
    relies on the version counter alone (shared by the view and its base): any saved
    use of the old values raises at backward time."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap):
        loss = _ce_inplace_op(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss,
                              logit_softcap)
        ctx.save_for_backward(logits)
        ctx.class_dim = _class_dim(logits.dim())
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return _scale_inplace(ctx, grad_loss)


# ----------------------------------------------------------------------------------
# operators: softmax family


def _softmax_compute(x: Tensor, dim: int, op: str) -> Tensor:
    a = _softmax_args(x, dim)
    out_dtype = x.dtype  # logsumexp: torch returns the input dtype
    if _bridge.device_kind(x) == "cpu":
        rec = dataclasses.replace(a, kind="numpy", x=_bridge.to_numpy(x))
        return _bridge.from_numpy(getattr(reference, f"{op}_checked")(rec), out_dtype)
    if _bridge.device_kind(x) != "cuda":
        raise _bridge.unsupported(x)
    from .._cuda import softmax as launch

    with _bridge.cupy_on(x.device):
        cx = _bridge.to_cupy(x)
        if x.dtype == torch.bfloat16:
            y = launch.forward_raw(cx, a.layout.axis, op, storage="bfloat16")
        else:
            y = getattr(launch, op)(dataclasses.replace(a, kind="cupy", x=cx))
        return _bridge.from_cupy(y, out_dtype)


def _backward_compute(grad_y: Tensor, y: Tensor, dim: int, op: str) -> Tensor:
    grad_y = grad_y.to(y.dtype)
    a = _checks.check_backward(_bridge.describe(grad_y), _bridge.describe(y), dim)
    if _bridge.device_kind(y) == "cpu":
        rec = dataclasses.replace(a, kind="numpy", grad_y=_bridge.to_numpy(grad_y), y=_bridge.to_numpy(y))
        return _bridge.from_numpy(getattr(reference, f"{op}_checked")(rec), y.dtype)
    if _bridge.device_kind(y) != "cuda":
        raise _bridge.unsupported(y)
    from .._cuda import softmax as launch

    with _bridge.cupy_on(y.device):
        gy, cy = _bridge.to_cupy(grad_y.contiguous()), _bridge.to_cupy(y)
        if y.dtype == torch.bfloat16:
            gx = launch.backward_raw(gy, cy, a.layout.axis, op, storage="bfloat16")
        else:
            gx = getattr(launch, op)(dataclasses.replace(a, kind="cupy", grad_y=gy, y=cy))
        return _bridge.from_cupy(gx, y.dtype)


def _reduced_shape(x: Tensor, dim: int) -> tuple[int, ...]:
    d = dim % x.dim()
    return tuple(x.shape[:d]) + tuple(x.shape[d + 1:])


@torch.library.custom_op(f"{_NS}::softmax", mutates_args=())
def _softmax_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "softmax")


@torch.library.custom_op(f"{_NS}::log_softmax", mutates_args=())
def _log_softmax_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "log_softmax")


@torch.library.custom_op(f"{_NS}::logsumexp", mutates_args=())
def _logsumexp_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "logsumexp")


@torch.library.custom_op(f"{_NS}::softmax_backward", mutates_args=())
def _softmax_backward_op(grad_y: Tensor, y: Tensor, dim: int) -> Tensor:
    return _backward_compute(grad_y, y, dim, "softmax_backward")


@torch.library.custom_op(f"{_NS}::log_softmax_backward", mutates_args=())
def _log_softmax_backward_op(grad_y: Tensor, y: Tensor, dim: int) -> Tensor:
    return _backward_compute(grad_y, y, dim, "log_softmax_backward")


def _same_shape_fake(x, dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(grad_y, y, dim):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


_softmax_op.register_fake(_same_shape_fake)
_log_softmax_op.register_fake(_same_shape_fake)
_softmax_backward_op.register_fake(_backward_fake)
_log_softmax_backward_op.register_fake(_backward_fake)


@_logsumexp_op.register_fake
def _(x, dim):
    return x.new_empty(_reduced_shape(x, dim))


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1]


def _save_input(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.dim = inputs[1]


def _softmax_bwd(ctx, grad):
    (y,) = ctx.saved_tensors
    return _softmax_backward_op(grad, y, ctx.dim), None


def _log_softmax_bwd(ctx, grad):
    (y,) = ctx.saved_tensors
    return _log_softmax_backward_op(grad, y, ctx.dim), None


def _logsumexp_bwd(ctx, grad):
    # d lse / d x = softmax(x): one forward pass of our softmax kernel, times grad.
    (x,) = ctx.saved_tensors
    return _softmax_op(x, ctx.dim) * grad.unsqueeze(ctx.dim).to(x.dtype), None


_softmax_op.register_autograd(_softmax_bwd, setup_context=_save_output)
_log_softmax_op.register_autograd(_log_softmax_bwd, setup_context=_save_output)
_logsumexp_op.register_autograd(_logsumexp_bwd, setup_context=_save_input)


# ----------------------------------------------------------------------------------
# public API


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
    _bridge.require_tensors(input=input)
    if not _compiling():
        _refuse_func_transforms("softmax")
        _softmax_args(input, dim)
    return _softmax_op(input, int(dim) if not isinstance(dim, bool) else dim)


def log_softmax(input: Tensor, dim: int = -1) -> Tensor:
    """Log-softmax along ``dim``: ``x_i - max x - log sum_k exp(x_k - max x)``.

    As ``torch.log_softmax(input, dim)``; the backward is ``g - exp(y) * sum(g)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> gst.log_softmax(torch.zeros(2))
        tensor([-0.6931, -0.6931])
    """
    _bridge.require_tensors(input=input)
    if not _compiling():
        _refuse_func_transforms("log_softmax")
        _softmax_args(input, dim)
    return _log_softmax_op(input, int(dim) if not isinstance(dim, bool) else dim)


def logsumexp(input: Tensor, dim: int = -1) -> Tensor:
    """``log sum_k exp(x_k)`` along ``dim`` (removed), in the input's dtype, as ``torch.logsumexp``.

    Accumulates in float32 (float64 for float64). The backward is ``g * softmax(x)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> gst.logsumexp(torch.log(torch.tensor([1.0, 2.0, 3.0])))
        tensor(1.7918)
    """
    _bridge.require_tensors(input=input)
    if not _compiling():
        _refuse_func_transforms("logsumexp")
        _softmax_args(input, dim)
    return _logsumexp_op(input, int(dim) if not isinstance(dim, bool) else dim)


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
    without dim 1) or class probabilities (``input``'s shape). Per row, with
    ``p = softmax(x)``, class weights ``w`` and smoothing ``e``:

    - hard labels: ``loss = (1-e) * (-w[t] log p[t]) + (e/C) * sum_c(-w_c log p_c)``, 0 where
      ``t == ignore_index``;
    - soft labels: ``loss = -sum_c w_c t'_c log p_c`` with ``t' = t(1-e) + e/C``;
    - ``z_loss`` adds ``z_loss * logsumexp(x)**2`` per non-ignored row (PaLM);
    - ``logit_softcap=cap`` first replaces the logits by ``cap * tanh(x / cap)`` (Gemma 2).

    ``reduction="mean"`` divides the cross-entropy terms by ``sum w[t]`` over non-ignored
    rows (the number of rows for soft labels) and the z-loss terms by the number of
    non-ignored rows; ``"sum"`` adds; ``"none"`` returns per-element losses. The loss has
    ``input``'s dtype; the kernels accumulate in float32 (float64 for float64).

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
    if not _compiling():
        _refuse_func_transforms("cross_entropy")
        a = _ce_args(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap,
                     inplace_backward)
        ignore_index, label_smoothing, z_loss = a.ignore_index, a.label_smoothing, a.z_loss
        logit_softcap, inplace_backward = a.logit_softcap, a.inplace
    grad_on = torch.is_grad_enabled()
    if grad_on and target.requires_grad:
        raise NotImplementedError(
            "gpu_softmax.torch.cross_entropy gives no gradient with respect to target; pass target.detach()"
        )
    if grad_on and weight is not None and weight.requires_grad:
        raise NotImplementedError(
            "gpu_softmax.torch.cross_entropy gives no gradient with respect to weight; pass weight.detach()"
        )
    want_grad = grad_on and input.requires_grad
    if inplace_backward and _compiling():
        # A compiled graph cannot tell whether the overwritten logits are used later
        # (it materialises their gradient as zeros): out of place there, same results.
        inplace_backward = False
    if inplace_backward and want_grad and (input.is_leaf or (input._base is not None and input._base.is_leaf)):
        raise RuntimeError(
            "cross_entropy(..., inplace_backward=True) overwrites its input with the gradient, but the input "
            "is a leaf tensor that requires grad (or a view of one), e.g. a parameter or a tensor created with "
            "requires_grad=True, whose values autograd must keep: pass logits computed from it (the output "
            "of the model's last layer), or use inplace_backward=False"
        )
    if inplace_backward and want_grad:
        args = (input, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap)
        if input._base is not None:
            return _CrossEntropyInplaceView.apply(*args)
        loss, _ = _CrossEntropyInplace.apply(*args)
        return loss
    args = (input, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap)
    if _compiling() or torch._C._are_functorch_transforms_active():
        # Traced or transformed (torch.compile, torch.func): the registered operator.
        loss, _ = _ce_op(*args, want_grad)
        return loss
    if want_grad:
        return _CrossEntropyEager.apply(*args)
    loss, _ = _ce_compute(*args, want_grad=False, inplace=False)
    return loss


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on our fused kernels; arguments as :func:`cross_entropy`.

    ``weight`` is a buffer (it moves with ``.to()``).

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> crit = gst.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = crit(torch.zeros(4, 10), torch.tensor([1, 2, 3, 4]))
        >>> round(loss.item(), 4)
        2.3026
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0, logit_softcap: float | None = None,
                 inplace_backward: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.logit_softcap = logit_softcap
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            z_loss=self.z_loss, logit_softcap=self.logit_softcap, inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.logit_softcap is not None:
            parts.append(f"logit_softcap={self.logit_softcap}")
        if self.inplace_backward:
            parts.append("inplace_backward=True")
        return ", ".join(parts)
