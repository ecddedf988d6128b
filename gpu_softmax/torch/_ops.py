"""The ``gpu_softmax::*`` custom operators and the compute behind them.

Every operator is declared with :func:`gs_op`, which registers it together with its
fake (meta) implementation, built from a declared result rule (``Like``, ``Reduced``,
``CELoss``, ...) rather than written per operator: torch.compile traces through them
without graph breaks. The cross-entropy operators take the options as
``CEOptions.op_args()`` (a custom op's schema holds no objects).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .. import _checks, reference
from .._checks import CrossEntropyArgs
from ..options import CEOptions
from . import _bridge

_NS = "gpu_softmax"


# ----------------------------------------------------------------------------------
# result rules: what a fake implementation returns, declared once per kind of result


class Like:
    """A contiguous tensor of the argument `name`'s shape and dtype."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, b: dict) -> Tensor:
        return torch.empty_like(b[self.name], memory_format=torch.contiguous_format)


class Reduced:
    """The argument `name` with its `dim` removed (logsumexp)."""

    def __init__(self, name: str, dim: str = "dim") -> None:
        self.name, self.dim = name, dim

    def __call__(self, b: dict) -> Tensor:
        x = b[self.name]
        d = b[self.dim] % x.dim()
        return x.new_empty(tuple(x.shape[:d]) + tuple(x.shape[d + 1:]))


def class_dim(ndim: int) -> int:
    """torch's class dim: 1 for inputs of 2+ dims, 0 for a (C,) input."""
    return 0 if ndim == 1 else 1


def loss_shape(logits: Tensor, reduction: str) -> tuple[int, ...]:
    if reduction != "none":
        return ()
    cdim = class_dim(logits.dim())
    return tuple(logits.shape[:cdim]) + tuple(logits.shape[cdim + 1:])


def CELoss(b: dict) -> Tensor:  # noqa: N802 (a rule, named like the others)
    return b["logits"].new_empty(loss_shape(b["logits"], b["reduction"]))


def CEGrad(b: dict) -> Tensor:  # noqa: N802
    """The gradient over the logits when want_grad, else an empty placeholder."""
    logits = b["logits"]
    return logits.new_empty(logits.shape) if b["want_grad"] else logits.new_empty(0)


# The options' part of an operator schema, from CEOptions' fields (one declaration).
_SCHEMA_TYPE = {"int": "SymInt", "float": "float", "str": "str", "float | None": "float?", "bool": "bool"}
OPTIONS_SCHEMA = ", ".join(f"{_SCHEMA_TYPE[f.type]} {f.name}" for f in dataclasses.fields(CEOptions))


def gs_op(name: str, *, result: Any, mutates_args: tuple[str, ...] = (), schema: str | None = None) -> Callable:
    """Register the decorated function as ``gpu_softmax::name`` with its fake.

    `result`: a rule (a callable of the bound arguments), a tuple of rules for several
    results, or None for an operator that only mutates. `schema`: for a function that
    takes the options as ``*args`` (then the rules see the schema's argument names)."""

    def register(fn: Callable) -> Any:
        op = torch.library.custom_op(f"{_NS}::{name}", mutates_args=mutates_args, schema=schema)(fn)
        if schema is None:
            signature = inspect.signature(fn)
            bind = lambda *args, **kwargs: signature.bind(*args, **kwargs).arguments  # noqa: E731
        else:
            names = [arg.split()[-1] for arg in schema[schema.index("(") + 1 : schema.index(")")].split(",")]
            bind = lambda *args, **kwargs: {**dict(zip(names, args)), **kwargs}  # noqa: E731

        def fake(*args, **kwargs):
            bound = bind(*args, **kwargs)
            if result is None:
                return None
            if isinstance(result, tuple):
                return tuple(rule(bound) for rule in result)
            return result(bound)

        op.register_fake(fake)
        return op

    return register


# ----------------------------------------------------------------------------------
# cross entropy: checks (cached by description) and compute

_CE_CHECKED: dict[tuple, CrossEntropyArgs] = {}


def ce_args(logits: Tensor, target: Tensor, weight: Tensor | None, opts: CEOptions,
            inplace: Any = False) -> CrossEntropyArgs:
    """The shared checks on the tensors' descriptions; a repeat of an accepted call is one dict lookup.

    The public function and the operator both ask (the operator must check under
    torch.compile, where the public function does not): the second ask is a hit."""
    strides = logits.stride()  # in-place on logits whose elements share memory is refused
    key = (logits.shape, strides, logits.dtype, target.shape, target.dtype,
           None if weight is None else (weight.shape, weight.dtype), opts.op_args(), type(inplace), inplace)
    a = _CE_CHECKED.get(key)
    if a is None:
        a = _checks.check_cross_entropy(
            _bridge.describe(logits), _bridge.describe(target), axis=class_dim(logits.ndim),
            weight=_bridge.describe(weight), inplace=inplace, logits_strides=tuple(strides), options=opts,
            inplace_name="inplace_backward",
        )
        if len(_CE_CHECKED) >= 256:
            _CE_CHECKED.clear()
        _CE_CHECKED[key] = a
    return a


def _ce_cpu(logits: Tensor, target: Tensor, weight: Tensor | None, a: CrossEntropyArgs, want_grad: bool,
            inplace: bool) -> tuple[Tensor, Tensor | None]:
    bf16 = logits.dtype == torch.bfloat16
    rec = CrossEntropyArgs(
        kind="numpy", logits=_bridge.to_numpy(logits), target=_bridge.to_numpy(target), soft=a.soft,
        layout=a.layout, weight=_bridge.to_numpy(weight), opts=a.opts,
        inplace=inplace and not bf16,  # bf16: computed in float32, copied back below
    )
    if not want_grad:
        return _bridge.from_numpy(reference.cross_entropy_checked(rec, hint=_bridge.CPU_TARGETS_HINT),
                                  logits.dtype), None
    loss, grad = reference.cross_entropy_with_grad_checked(rec, hint=_bridge.CPU_TARGETS_HINT)
    loss = _bridge.from_numpy(loss, logits.dtype)
    if inplace:
        if bf16:
            logits.detach().copy_(torch.from_numpy(np.asarray(grad)))
        return loss, None
    return loss, _bridge.from_numpy(grad, logits.dtype)


def _ce_cuda(logits: Tensor, target: Tensor, weight: Tensor | None, a: CrossEntropyArgs, want_grad: bool,
             inplace: bool) -> tuple[Tensor, Tensor | None]:
    from .._cuda import cross_entropy as launch

    with _bridge.cupy_on(logits.device):
        rec = CrossEntropyArgs(
            kind="cupy", logits=_bridge.to_cupy(logits), target=_bridge.to_cupy(_bridge.acc_float(target)),
            soft=a.soft, layout=a.layout, weight=_bridge.to_cupy(_bridge.acc_float(weight)),
            opts=a.opts.unvalidated(), inplace=inplace,  # no host sync: a bad target gives NaN
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


def ce_compute(logits: Tensor, target: Tensor, weight: Tensor | None, a: CrossEntropyArgs, want_grad: bool,
               inplace: bool = False) -> tuple[Tensor, Tensor | None]:
    """(loss in logits' dtype, d loss / d logits or None); one pass over the logits."""
    kind = _bridge.device_kind(logits)
    if kind == "cpu":
        return _ce_cpu(logits, target, weight, a, want_grad, inplace)
    if kind != "cuda":
        raise _bridge.unsupported(logits)
    return _ce_cuda(logits, target, weight, a, want_grad, inplace)


@gs_op("cross_entropy", result=(CELoss, CEGrad),
       schema=f"(Tensor logits, Tensor target, Tensor? weight, {OPTIONS_SCHEMA}, bool want_grad) -> (Tensor, Tensor)")
def ce_op(logits: Tensor, target: Tensor, weight: Tensor | None, *op_args: Any) -> tuple[Tensor, Tensor]:
    """(loss, grad) with grad = d loss / d logits (empty when want_grad is False); ``op_args`` is
    ``CEOptions.op_args()`` then want_grad."""
    *options, want_grad = op_args
    opts = CEOptions.from_op_args(tuple(options))
    loss, grad = ce_compute(logits, target, weight, ce_args(logits, target, weight, opts), want_grad)
    return loss, (grad if grad is not None else logits.new_empty(0))


@gs_op("cross_entropy_inplace_", result=CELoss, mutates_args=("logits",),
       schema=f"(Tensor(a!) logits, Tensor target, Tensor? weight, {OPTIONS_SCHEMA}) -> Tensor")
def ce_inplace_op(logits: Tensor, target: Tensor, weight: Tensor | None, *op_args: Any) -> Tensor:
    """The loss; d loss / d logits overwrites logits. ``op_args``: ``CEOptions.op_args()``."""
    opts = CEOptions.from_op_args(op_args)
    a = ce_args(logits, target, weight, opts, True)
    return ce_compute(logits, target, weight, a, want_grad=True, inplace=True)[0]


# ----------------------------------------------------------------------------------
# the saved gradient times grad_output (the backward of every cross-entropy bridge)


def scale_compute(grad: Tensor, grad_output: Tensor, class_dim: int) -> None:
    """grad *= grad_output in place, grad_output (a scalar, or one value per row)
    broadcast over the class dim, taken in the kernels' accumulation dtype.

    CUDA: the scale kernel reads the scalar on the device and returns at once when it
    is 1 (no N x C traffic, no host sync, capturable in a CUDA graph). CPU: the same
    decision on the host, so both leave the buffer untouched for grad_output == 1."""
    acc = _bridge.acc_dtype(grad)
    g = grad_output if grad_output.dtype == acc and not grad_output.requires_grad else \
        grad_output.detach().to(acc)
    kind = _bridge.device_kind(grad)
    if kind == "cpu" or not grad.is_contiguous():
        if g.dim() == 0 and kind == "cpu" and g.item() == 1.0:
            return
        grad.mul_(g.unsqueeze(class_dim) if g.dim() else g)
        return
    if kind != "cuda":
        raise _bridge.unsupported(grad)
    from .._cuda import cross_entropy as launch

    cols = int(grad.shape[class_dim]) if grad.dim() else 1
    inner = math.prod(grad.shape[class_dim + 1:]) if grad.dim() else 1
    with _bridge.cupy_on(grad.device):
        launch.scale_grad(_bridge.to_cupy(grad), _bridge.to_cupy(g.contiguous()), cols, inner,
                          storage=_bridge.storage(grad))


@gs_op("scale_grad_", result=None, mutates_args=("grad",))
def scale_grad_(grad: Tensor, grad_output: Tensor, class_dim: int) -> None:
    """In place: grad *= grad_output (see scale_compute)."""
    scale_compute(grad, grad_output, class_dim)


@gs_op("scale_grad", result=Like("grad"))
def scaled_copy(grad: Tensor, grad_output: Tensor, class_dim: int) -> Tensor:
    """grad * grad_output, grad_output broadcast over the class dim (reduction='none'); grad untouched."""
    g = grad_output.unsqueeze(class_dim) if grad_output.dim() else grad_output
    return (grad * g).to(grad.dtype)


# ----------------------------------------------------------------------------------
# softmax family


def _softmax_compute(x: Tensor, dim: int, op: str) -> Tensor:
    a = _checks.check_softmax(_bridge.describe(x), dim, name="input")
    out_dtype = x.dtype  # logsumexp: torch returns the input dtype
    if _bridge.device_kind(x) == "cpu":
        rec = _checks.SoftmaxArgs(kind="numpy", x=_bridge.to_numpy(x), layout=a.layout)
        return _bridge.from_numpy(getattr(reference, f"{op}_checked")(rec), out_dtype)
    if _bridge.device_kind(x) != "cuda":
        raise _bridge.unsupported(x)
    from .._cuda import softmax as launch

    with _bridge.cupy_on(x.device):
        cx = _bridge.to_cupy(x)
        if x.dtype == torch.bfloat16:
            y = launch.forward_raw(cx, a.layout.axis, op, storage="bfloat16")
        else:
            y = getattr(launch, op)(_checks.SoftmaxArgs(kind="cupy", x=cx, layout=a.layout))
        return _bridge.from_cupy(y, out_dtype)


def _backward_compute(grad_y: Tensor, y: Tensor, dim: int, op: str) -> Tensor:
    grad_y = grad_y.to(y.dtype)
    a = _checks.check_backward(_bridge.describe(grad_y), _bridge.describe(y), dim)
    if _bridge.device_kind(y) == "cpu":
        rec = _checks.BackwardArgs(kind="numpy", grad_y=_bridge.to_numpy(grad_y), y=_bridge.to_numpy(y),
                                   layout=a.layout)
        return _bridge.from_numpy(getattr(reference, f"{op}_checked")(rec), y.dtype)
    if _bridge.device_kind(y) != "cuda":
        raise _bridge.unsupported(y)
    from .._cuda import softmax as launch

    with _bridge.cupy_on(y.device):
        gy, cy = _bridge.to_cupy(grad_y.contiguous()), _bridge.to_cupy(y)
        if y.dtype == torch.bfloat16:
            gx = launch.backward_raw(gy, cy, a.layout.axis, op, storage="bfloat16")
        else:
            gx = getattr(launch, op)(_checks.BackwardArgs(kind="cupy", grad_y=gy, y=cy, layout=a.layout))
        return _bridge.from_cupy(gx, y.dtype)


@gs_op("softmax", result=Like("x"))
def softmax_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "softmax")


@gs_op("log_softmax", result=Like("x"))
def log_softmax_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "log_softmax")


@gs_op("logsumexp", result=Reduced("x"))
def logsumexp_op(x: Tensor, dim: int) -> Tensor:
    return _softmax_compute(x, dim, "logsumexp")


@gs_op("softmax_backward", result=Like("y"))
def softmax_backward_op(grad_y: Tensor, y: Tensor, dim: int) -> Tensor:
    return _backward_compute(grad_y, y, dim, "softmax_backward")


@gs_op("log_softmax_backward", result=Like("y"))
def log_softmax_backward_op(grad_y: Tensor, y: Tensor, dim: int) -> Tensor:
    return _backward_compute(grad_y, y, dim, "log_softmax_backward")
