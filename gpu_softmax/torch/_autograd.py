"""Autograd of the cross-entropy bridges: the registered operator's formula (what
torch.compile traces), one eager ``autograd.Function`` and the in-place pair, and
:func:`scale_by_grad_output`, the one backward they all share (as does
:mod:`gpu_softmax.torch.parallel`).

Every forward saves d loss / d logits for grad_output = 1 (the mean's divisor in it);
every backward multiplies it by grad_output through :func:`scale_by_grad_output`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..options import OP_ARG_COUNT, CEOptions
from . import _bridge, _ops

# Backward results after the logits' gradient: target and weight, then the options
# (and the operator's want_grad flag), all without a gradient.
_NO_GRAD_OPTIONS = (None,) * (2 + OP_ARG_COUNT)


def check_not_spent(ctx, what: str) -> None:
    """A second backward after an in-place scale: a clear error, not autograd's version one."""
    if getattr(ctx, "spent", False):
        raise RuntimeError(
            f"{what} on CUDA scales its saved gradient in place in backward, so a second backward through "
            "the same loss (retain_graph=True) is not supported; compute the loss again"
        )


def remember_ignored_rows(ctx, target: Tensor, ignore_index: int, reduction: str) -> None:
    """For reduction='none' with class indices: the target, so that the backward gives ignored
    rows an exact 0 gradient whatever their grad_output (NaN, inf), as torch does."""
    hard = not target.is_floating_point()
    ctx.ignored_rows = (target, ignore_index) if (reduction == "none" and hard) else None


def _zero_ignored(ctx, grad_loss: Tensor) -> Tensor:
    rows = getattr(ctx, "ignored_rows", None)
    if rows is None or grad_loss.dim() == 0:
        return grad_loss
    target, ignore_index = rows
    return torch.where(target == ignore_index, torch.zeros((), dtype=grad_loss.dtype, device=grad_loss.device),
                       grad_loss)


def scale_by_grad_output(ctx, grad: Tensor, grad_loss: Tensor, class_dim: int, *, eager: bool = False,
                         in_place: bool = False) -> Tensor:
    """The saved d loss / d logits times grad_output (a scalar, or one value per row).

    CUDA (contiguous), and `in_place` (the in-place path, whose gradient lives in the
    logits' memory): scaled in place and handed on; on CUDA the scale kernel decides on
    the device (grad_output == 1 reads, writes and allocates nothing of size N x C, no
    host sync, CUDA-graph safe) and the buffer is then spent (check_not_spent). CPU:
    the saved buffer itself for a scalar 1, else a scaled copy, so a retained graph
    (gradcheck) can run backward again. `eager`: called from an autograd.Function in
    eager mode, where the in-place scale runs directly (no custom-op dispatch). Ignored rows
    (remember_ignored_rows) take grad_output 0."""
    grad_loss = _zero_ignored(ctx, grad_loss)
    if in_place or (_bridge.device_kind(grad) == "cuda" and grad.is_contiguous()):
        if eager and not in_place:
            _ops.scale_compute(grad, grad_loss, class_dim)
        else:
            _ops.scale_grad_(grad, grad_loss, class_dim)  # bumps the version: a second backward raises
        ctx.spent = not in_place  # in place, the version counter guards a second backward
        return grad
    if grad_loss.dim() == 0 and not torch.compiler.is_compiling() and grad_loss.item() == 1.0:
        return grad
    return _ops.scaled_copy(grad, grad_loss, class_dim)


def _refuse_double_backward() -> None:
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: the saved gradient has no derivative we provide.
        raise RuntimeError("gpu_softmax.torch.cross_entropy does not support double backward (create_graph=True)")


# ----------------------------------------------------------------------------------
# the registered operator (torch.compile, torch.func)


def _op_setup_context(ctx, inputs, output):
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.class_dim = _ops.class_dim(inputs[0].dim())
    opts = CEOptions.from_op_args(tuple(inputs[3:3 + OP_ARG_COUNT]))
    remember_ignored_rows(ctx, inputs[1], opts.ignore_index, opts.reduction)


def _op_backward(ctx, grad_loss, _grad_grad):
    _refuse_double_backward()
    check_not_spent(ctx, "gpu_softmax.torch.cross_entropy")
    (grad,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or grad_loss is None:
        return (None,) + _NO_GRAD_OPTIONS + (None,)
    return (scale_by_grad_output(ctx, grad, grad_loss, ctx.class_dim),) + _NO_GRAD_OPTIONS + (None,)


_ops.ce_op.register_autograd(_op_backward, setup_context=_op_setup_context)


# ----------------------------------------------------------------------------------
# eager mode


class CrossEntropy(torch.autograd.Function):
    """The eager path (with or without a gradient): the forward and backward of the
    ``gpu_softmax::cross_entropy`` operator without the custom-op dispatcher's per-call
    cost. ``a`` is the checked arguments record."""

    @staticmethod
    def forward(ctx, logits, target, weight, a, want_grad):
        ctx.set_materialize_grads(False)
        loss, grad = _ops.ce_compute(logits, target, weight, a, want_grad)
        if want_grad:
            ctx.save_for_backward(grad)
            ctx.class_dim = _ops.class_dim(logits.dim())
            remember_ignored_rows(ctx, target, a.ignore_index, a.reduction)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():
            raise RuntimeError("gpu_softmax.torch.cross_entropy does not support double backward (create_graph=True)")
        check_not_spent(ctx, "gpu_softmax.torch.cross_entropy")
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        return scale_by_grad_output(ctx, grad, grad_loss, ctx.class_dim, eager=True), None, None, None, None


def _inplace_forward(ctx, logits, target, weight, a):
    ctx.set_materialize_grads(False)
    loss = _ops.ce_inplace_op(logits, target, weight, *a.opts.op_args())
    ctx.save_for_backward(logits)
    ctx.class_dim = _ops.class_dim(logits.dim())
    remember_ignored_rows(ctx, target, a.ignore_index, a.reduction)
    return loss


def _inplace_backward(ctx, grad_loss):
    (grad,) = ctx.saved_tensors  # raises if anything modified the logits since (e.g. a 2nd backward)
    if grad_loss is None:
        return None, None, None, None
    return scale_by_grad_output(ctx, grad, grad_loss, ctx.class_dim, in_place=True), None, None, None


class CrossEntropyInplace(torch.autograd.Function):
    """inplace_backward=True on a tensor that is not a view.

    The gradient overwrites the logits through a mutating custom op (its version
    counter moves on, so any other use of the old values that autograd saved raises
    "modified by an inplace operation" at backward time) and the logits are marked
    dirty, so their history now ends in this node. The backward scales the gradient in
    place."""

    @staticmethod
    def forward(ctx, logits, target, weight, a):
        loss = _inplace_forward(ctx, logits, target, weight, a)
        ctx.mark_dirty(logits)
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
        return _inplace_backward(ctx, grad_loss)


class CrossEntropyInplaceView(torch.autograd.Function):
    """inplace_backward=True on a view (e.g. ``logits.view(-1, V)``).

    Autograd cannot mark a view dirty in a Function with two outputs, so this variant
    relies on the version counter alone (shared by the view and its base): any saved
    use of the old values raises at backward time."""

    @staticmethod
    def forward(ctx, logits, target, weight, a):
        return _inplace_forward(ctx, logits, target, weight, a)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        return _inplace_backward(ctx, grad_loss)


# ----------------------------------------------------------------------------------
# softmax family: formulas of the registered operators


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.dim = inputs[1]


def _save_input(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.dim = inputs[1]


def _softmax_bwd(ctx, grad):
    (y,) = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True (double backward, as torch supports): the same formula in torch
        # ops, differentiable in grad and (through the saved output's own node) in x.
        return y * (grad - (grad * y).sum(ctx.dim, keepdim=True)), None
    return _ops.softmax_backward_op(grad, y, ctx.dim), None


def _log_softmax_bwd(ctx, grad):
    (y,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiable torch ops (see _softmax_bwd)
        return grad - torch.exp(y) * grad.sum(ctx.dim, keepdim=True), None
    return _ops.log_softmax_backward_op(grad, y, ctx.dim), None


def _logsumexp_bwd(ctx, grad):
    # d lse / d x = softmax(x): one forward pass of our softmax kernel, times grad.
    (x,) = ctx.saved_tensors
    return _ops.softmax_op(x, ctx.dim) * grad.unsqueeze(ctx.dim).to(x.dtype), None


_ops.softmax_op.register_autograd(_softmax_bwd, setup_context=_save_output)
_ops.log_softmax_op.register_autograd(_log_softmax_bwd, setup_context=_save_output)
_ops.logsumexp_op.register_autograd(_logsumexp_bwd, setup_context=_save_input)
