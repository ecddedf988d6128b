"""PyTorch drop-in for gpu_softmax: ``cross_entropy``, ``CrossEntropyLoss``, ``softmax``,
``log_softmax`` and ``logsumexp`` on torch tensors, with autograd.

On CUDA tensors every op runs our CUDA kernels (``gpu_softmax._cuda``); on CPU tensors
the same ops compute through the NumPy reference (``gpu_softmax.reference``), so the
whole module is testable without a GPU. Results follow ``torch.nn.functional``:
shapes, dtypes, options and gradients.

How it works:

- **Operators.** Each op is a ``torch.library.custom_op`` (namespace ``gpu_softmax``)
  with a fake (meta) implementation and an autograd formula registered with
  ``register_autograd``, so ``torch.compile`` traces through it without graph breaks
  and a training step can be captured in a CUDA graph.
- **Fused cross entropy.** The forward runs the fused loss+gradient kernel once
  (``cross_entropy_with_grad`` with ``grad_output=1``) and saves the gradient; the
  backward only scales it by ``grad_output`` (no second pass over the logits).
  When the logits do not need a gradient, only the loss is computed.
- **Zero copy, streams.** CUDA tensors go to CuPy through DLPack (no host round trip);
  launches run on PyTorch's current stream of the tensor's device
  (``cupy.cuda.Device`` + ``cupy.cuda.ExternalStream``, or ``Stream.from_external`` on
  CuPy >= 14, where ExternalStream is deprecated), and every buffer the
  launchers allocate comes from PyTorch's caching allocator on that stream (so CUDA
  graph capture puts them in the graph's private pool). Results come back through
  DLPack.
- **bfloat16.** CuPy has no bfloat16 type: bf16 tensors are handed to the kernels as
  16-bit words (``tensor.view(torch.int16)`` then DLPack, read as ``uint16``) and the
  kernels convert, accumulating in float32. bf16 soft targets and weights are
  converted to float32 (small, or the same size as the logits for soft targets). On
  the CPU, bf16 goes through float32 NumPy and back.
- **No host sync.** On CUDA, hard targets are not range-checked on the host
  (``validate=False``): an out-of-range target gives a NaN loss, never a bad access.
  (PyTorch raises a device-side assert there.) On CPU the reference validates and
  raises ``ValueError``. The mean's divisor is computed on the device.
- **CUDA graphs.** Run a step before capturing (as PyTorch requires anyway): the
  first call on a device compiles the kernels and caches occupancy queries.
- **inplace_backward=True** writes the gradient over the logits through a mutating
  custom op (the version counter moves on, so autograd raises "modified by an
  inplace operation" if anything saved the old values), inside an
  ``autograd.Function`` that marks the logits dirty (not possible for views, where
  the version counter alone guards) and scales the gradient in place in backward.
  A leaf that requires grad (or a view of one) is refused with a message. Using the overwritten tensor
  afterwards in a differentiable way raises in eager mode (not detected under
  ``torch.compile``).
- **Argument checks** are those of :mod:`gpu_softmax._checks` (same error texts as the
  NumPy/CuPy API), run on lightweight NumPy stand-ins that carry only the tensors'
  shapes and dtypes (bfloat16 is described as float16). Only checks that are about
  torch itself (a non-tensor argument, tensors on different devices, gradients we do
  not provide) live here.

Differences from ``torch.nn.functional.cross_entropy`` (documented, not fought):
ignored rows get an exact 0 gradient (torch gives NaN when an ignored row's logits
hold NaN); no gradient flows to soft targets or to ``weight`` (asking for one raises);
no double backward; the deprecated ``size_average``/``reduce`` arguments are absent.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _checks, reference

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "softmax",
    "log_softmax",
    "logsumexp",
    "vocab_parallel_cross_entropy",
]

_NS = "gpu_softmax"


# ----------------------------------------------------------------------------------
# argument checks: torch-specific ones here, everything else through _checks


def _require_tensors(**named: Any) -> None:
    """TypeError for a non-tensor; ValueError for tensors on different devices."""
    devices = {}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__name__}")
        devices[name] = t.device
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device ({listing})")


_STANDIN_DTYPE = {
    torch.float16: np.float16,
    torch.bfloat16: np.float16,  # described as float16: the checks only look at dtype/shape
    torch.float32: np.float32,
    torch.float64: np.float64,
}


def _standin(t: Tensor | None) -> np.ndarray | None:
    """A NumPy array with t's shape and (float16 for bf16) dtype that owns one element.

    `_checks` only reads dtype, shape, ndim and flags; a zero-strided view carries
    those without allocating the tensor's size.
    """
    if t is None:
        return None
    dt = _STANDIN_DTYPE.get(t.dtype)
    if dt is None:
        try:
            dt = torch.empty((), dtype=t.dtype).numpy().dtype  # ints, bool, complex, ...
        except (TypeError, RuntimeError):
            dt = np.dtype(object)  # no NumPy equivalent: the checks' type error fires
    shape = tuple(int(s) for s in t.shape)
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype=dt), shape, (0,) * len(shape))


def _class_dim(ndim: int) -> int:
    """torch's class dim: 1 for inputs of 2+ dims, 0 for a (C,) input."""
    return 0 if ndim == 1 else 1


def _ce_args(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: Any, reduction: Any,
             label_smoothing: Any, z_loss: Any, logit_softcap: Any, inplace: Any = False) -> _checks.CrossEntropyArgs:
    return _checks.check_cross_entropy(
        _standin(logits), _standin(target), axis=_class_dim(logits.ndim), weight=_standin(weight),
        ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
        z_loss=z_loss, logit_softcap=logit_softcap, inplace=inplace,
    )


def _softmax_args(x: Tensor, dim: Any) -> _checks.SoftmaxArgs:
    return _checks.check_softmax(_standin(x), dim, name="input")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


# ----------------------------------------------------------------------------------
# CPU: NumPy views of tensors, the reference, and back


def _to_numpy(t: Tensor | None) -> np.ndarray | None:
    """Zero-copy NumPy view of a CPU tensor; bfloat16 (no NumPy dtype) as a float32 copy."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A contiguous tensor of `dtype` from a reference result (which never aliases an input)."""
    a = np.asarray(a)
    if not a.flags.c_contiguous or not a.flags.writeable:
        a = a.copy(order="C")
    return torch.from_numpy(a).to(dtype)


# ----------------------------------------------------------------------------------
# CUDA: DLPack both ways, PyTorch's stream and allocator


_allocator = None


def _torch_allocator():
    """A CuPy allocator drawing from PyTorch's caching allocator on its current stream."""
    global _allocator
    if _allocator is None:
        import cupy

        def malloc(size: int, device_id: int) -> int:
            if size == 0:
                return 0
            return torch.cuda.caching_allocator_alloc(size, device_id, torch.cuda.current_stream(device_id))

        def free(ptr: int, device_id: int) -> None:
            if ptr:
                torch.cuda.caching_allocator_delete(ptr)

        _allocator = cupy.cuda.memory.PythonFunctionAllocator(malloc, free)
    return _allocator


@contextlib.contextmanager
def _cupy_on(device: torch.device):
    """CuPy on `device`, launching on PyTorch's current stream there, allocating through torch."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with torch.cuda.device(index), cupy.cuda.Device(index):
        # CuPy >= 14 takes torch's stream through the CUDA stream protocol (and
        # deprecates ExternalStream); older CuPy wraps the raw pointer.
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None and hasattr(stream, "__cuda_stream__"):
            cp_stream = from_external(stream)
        else:
            cp_stream = cupy.cuda.ExternalStream(stream.cuda_stream, index)
        with cp_stream, cupy.cuda.using_allocator(_torch_allocator().malloc):
            yield


def _to_cupy(t: Tensor | None):
    """Zero-copy CuPy view of a CUDA tensor; bfloat16 as uint16 words. Call inside _cupy_on."""
    if t is None:
        return None
    import cupy

    t = t.detach()
    if t.dtype == torch.bfloat16:
        return cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
    return cupy.from_dlpack(t)


def _from_cupy(a, dtype: torch.dtype) -> Tensor:
    """Torch tensor over a launcher's CuPy result (zero copy), contiguous, of `dtype`.

    uint16 results are bfloat16 words. Call inside _cupy_on (same stream: no sync).
    """
    import cupy

    if a.dtype == np.uint16:
        t = torch.from_dlpack(a.view(cupy.int16)).view(torch.bfloat16)
    else:
        t = torch.from_dlpack(a)
    return t.to(dtype).contiguous()


def _storage(t: Tensor) -> str | None:
    return "bfloat16" if t.dtype == torch.bfloat16 else None


def _acc_float(t: Tensor | None) -> Tensor | None:
    """bf16 weights/soft targets as float32 (CuPy cannot hold bf16 there)."""
    return t.float() if t is not None and t.dtype == torch.bfloat16 else t


def _device_kind(t: Tensor) -> str:
    """'cpu' (the NumPy reference) or 'cuda' (our kernels); one place to dispatch on."""
    return t.device.type


def _unsupported(t: Tensor):
    return NotImplementedError(f"gpu_softmax.torch runs on CPU and CUDA tensors, got device {t.device}")


# ----------------------------------------------------------------------------------
# operators: cross entropy


def _ce_compute(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
                label_smoothing: float, z_loss: float, logit_softcap: float | None, want_grad: bool,
                inplace: bool) -> tuple[Tensor, Tensor | None]:
    """(loss in logits' dtype, gradient of the loss w.r.t. logits or None); one pass."""
    a = _ce_args(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap, inplace)
    if _device_kind(logits) == "cpu":
        bf16 = logits.dtype == torch.bfloat16
        rec = dataclasses.replace(
            a, logits=_to_numpy(logits), target=_to_numpy(target), weight=_to_numpy(weight),
            inplace=inplace and not bf16,  # bf16: computed in float32, copied back below
        )
        try:
            reference.hard_target_check(rec)
        except ValueError as exc:
            # The NumPy API's text offers validate=False, a switch this bridge does not have.
            raise ValueError(
                str(exc).split("; pass validate=False")[0] + "; gpu_softmax.torch checks targets on CPU "
                "tensors (on CUDA tensors it does not, to avoid a host sync, and such rows get a NaN loss)"
            ) from None
        rec = dataclasses.replace(rec, validate=False)  # checked just above
        if not want_grad:
            return _from_numpy(reference.cross_entropy_checked(rec), logits.dtype), None
        loss, grad = reference.cross_entropy_with_grad_checked(rec)
        loss = _from_numpy(loss, logits.dtype)
        if inplace:
            if bf16:
                logits.detach().copy_(torch.from_numpy(np.asarray(grad)))
            return loss, None
        return loss, _from_numpy(grad, logits.dtype)
    if _device_kind(logits) != "cuda":
        raise _unsupported(logits)
    from ._cuda import cross_entropy as launch

    with _cupy_on(logits.device):
        rec = dataclasses.replace(
            a, kind="cupy", logits=_to_cupy(logits), target=_to_cupy(_acc_float(target)),
            weight=_to_cupy(_acc_float(weight)), validate=False, inplace=inplace,
        )
        if not want_grad:
            return _from_cupy(launch.cross_entropy(rec, storage=_storage(logits)), logits.dtype), None
        loss, grad = launch.cross_entropy_with_grad(rec, storage=_storage(logits))
        loss = _from_cupy(loss, logits.dtype)
        if inplace:
            return loss, None  # the launcher wrote the gradient into the logits' memory
        return loss, _from_cupy(grad, logits.dtype)


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


@torch.library.custom_op(f"{_NS}::scale_grad", mutates_args=())
def _scale_grad_op(grad: Tensor, grad_output: Tensor, class_dim: int) -> Tensor:
    """grad * grad_output, grad_output broadcast over the class dim (reduction='none')."""
    g = grad_output.unsqueeze(class_dim) if grad_output.dim() else grad_output
    return (grad * g).to(grad.dtype)


@_scale_grad_op.register_fake
def _(grad, grad_output, class_dim):
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _ce_setup_context(ctx, inputs, output):
    logits = inputs[0]
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)
    ctx.class_dim = _class_dim(logits.dim())


def _ce_backward(ctx, grad_loss, _grad_grad):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: the saved gradient has no derivative we provide.
        raise RuntimeError("gpu_softmax.torch.cross_entropy does not support double backward (create_graph=True)")
    (grad,) = ctx.saved_tensors
    # The scaling is a custom op without an autograd formula: under torch.compile too,
    # a double backward raises instead of treating the saved gradient as a constant.
    gx = _scale_grad_op(grad, grad_loss, ctx.class_dim) if ctx.needs_input_grad[0] else None
    return gx, None, None, None, None, None, None, None, None


_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


def _scale_inplace(ctx, grad_loss):
    """Backward of the in-place path: the saved gradient (in the logits' memory) times grad_output."""
    (grad,) = ctx.saved_tensors  # raises if anything modified the logits since (e.g. a 2nd backward)
    if grad_loss is None:
        return (None,) * 8
    g = grad_loss.unsqueeze(ctx.class_dim) if grad_loss.dim() else grad_loss
    if torch.compiler.is_compiling():
        return (grad * g,) + (None,) * 7  # functional for the compiled backward graph
    grad.mul_(g)  # in the logits' memory: bumps the version, so a second backward raises
    return (grad,) + (None,) * 7


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
    if _device_kind(x) == "cpu":
        rec = dataclasses.replace(a, x=_to_numpy(x))
        return _from_numpy(getattr(reference, f"{op}_checked")(rec), out_dtype)
    if _device_kind(x) != "cuda":
        raise _unsupported(x)
    from ._cuda import softmax as launch

    with _cupy_on(x.device):
        cx = _to_cupy(x)
        if x.dtype == torch.bfloat16:
            y = launch.forward_raw(cx, a.layout.axis, op, storage="bfloat16")
        else:
            y = getattr(launch, op)(dataclasses.replace(a, kind="cupy", x=cx))
        return _from_cupy(y, out_dtype)


def _backward_compute(grad_y: Tensor, y: Tensor, dim: int, op: str) -> Tensor:
    grad_y = grad_y.to(y.dtype)
    a = _checks.check_backward(_standin(grad_y), _standin(y), dim)
    if _device_kind(y) == "cpu":
        rec = dataclasses.replace(a, grad_y=_to_numpy(grad_y), y=_to_numpy(y))
        return _from_numpy(getattr(reference, f"{op}_checked")(rec), y.dtype)
    if _device_kind(y) != "cuda":
        raise _unsupported(y)
    from ._cuda import softmax as launch

    with _cupy_on(y.device):
        gy, cy = _to_cupy(grad_y.contiguous()), _to_cupy(y)
        if y.dtype == torch.bfloat16:
            gx = launch.backward_raw(gy, cy, a.layout.axis, op, storage="bfloat16")
        else:
            gx = getattr(launch, op)(dataclasses.replace(a, kind="cupy", grad_y=gy, y=cy))
        return _from_cupy(gx, y.dtype)


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
    _require_tensors(input=input)
    if not _compiling():
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
    _require_tensors(input=input)
    if not _compiling():
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
    _require_tensors(input=input)
    if not _compiling():
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
    gradient; the backward multiplies it by ``grad_output``. With
    ``inplace_backward=True`` that gradient overwrites ``input`` (peak memory for a large
    vocabulary halves): ``input`` must be an intermediate result (not a leaf that
    requires grad) that nothing else in the graph needs, or autograd raises "modified by
    an inplace operation" at backward time; ``input`` holds the gradient afterwards.

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
    _require_tensors(input=input, target=target, weight=weight)
    if not _compiling():
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
    loss, _ = _ce_op(input, target, weight, ignore_index, reduction, label_smoothing, z_loss, logit_softcap,
                     want_grad)
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


# Defined in its own module (it needs torch.distributed); re-exported here, last,
# because it uses this module's CUDA helpers.
from .torch_parallel import vocab_parallel_cross_entropy  # noqa: E402,F401
