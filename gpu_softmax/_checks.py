"""Argument checks shared by every backend.

Each public function (NumPy reference, CUDA launchers, the torch bridge, the CLI)
runs its arguments through exactly one function here, before any computation, and
gets back a small record of what it needs: the array module, the class/row axis
normalised, the row count and row length. One mistake has one error text, whichever
backend the caller ends up on.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .options import CEOptions

# The array-kind and dtype checks live in _arrays; re-exported here, the one module the backends import.
from ._arrays import (  # noqa: E402,F401
    FLOAT_DTYPES,
    ArrayDesc,
    array_kind,
    common_kind,
    dtype_name,
    require_float,
    require_native,
    result_dtype,
    standin,
)


def normalize_axis(axis: Any, ndim: int, name: str = "x") -> int:
    if ndim == 0:
        raise ValueError(f"{name} is 0-dimensional: softmax needs at least one axis")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {name} with {ndim} dimension(s)")
    return axis % ndim


@dataclass(frozen=True)
class RowLayout:
    """Where the reduced axis sits: `outer` rows before it, `cols` along it, `inner` after.

    A last-axis reduction has inner == 1; the kernels see `outer * inner` rows of
    `cols` elements each, with stride `inner` between a row's elements.
    """

    shape: tuple[int, ...]
    axis: int
    outer: int
    cols: int
    inner: int

    @property
    def rows(self) -> int:
        return self.outer * self.inner

    @property
    def reduced_shape(self) -> tuple[int, ...]:
        return self.shape[: self.axis] + self.shape[self.axis + 1 :]


@functools.lru_cache(maxsize=512)
def row_layout(shape: tuple[int, ...], axis: int) -> RowLayout:
    """The layout of `shape` reduced along `axis` (remembered: a repeat costs one lookup)."""
    return RowLayout(
        shape=tuple(shape),
        axis=axis,
        outer=math.prod(shape[:axis]),
        cols=shape[axis],
        inner=math.prod(shape[axis + 1 :]),
    )


# ----------------------------------------------------------------------------------
# softmax family


@dataclass(frozen=True)
class SoftmaxArgs:
    kind: str
    x: Any
    layout: RowLayout
    out: Any = None


def check_softmax(x: Any, axis: Any, out: Any = None, *, name: str = "x") -> SoftmaxArgs:
    """softmax / log_softmax / logsumexp (logsumexp passes out=None)."""
    kind = array_kind(x, name) if out is None else common_kind({name: x, "out": out})
    require_float(x, name)
    ax = normalize_axis(axis, x.ndim, name)
    if out is not None:
        if out.dtype != x.dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {x.dtype} (the dtype of {name})")
        if out.shape != x.shape:
            raise ValueError(f"out has shape {out.shape}, expected {x.shape} (the shape of {name})")
        if kind == "numpy" and not out.flags.writeable:
            raise ValueError("out is read-only: pass a writable array (or leave out unset)")
        if hasattr(out, "strides") and may_self_overlap(out.shape, out.strides, out.itemsize):
            raise ValueError(
                f"out's elements share memory (or may: shape {tuple(out.shape)}, strides {tuple(out.strides)}; "
                "e.g. from broadcast_to() or as_strided()): each would be written more than once. "
                "Pass an array of its own (e.g. numpy.empty_like(x)) or leave out unset"
            )
    return SoftmaxArgs(kind=kind, x=x, layout=row_layout(x.shape, ax), out=out)


@dataclass(frozen=True)
class BackwardArgs:
    kind: str
    grad_y: Any
    y: Any
    layout: RowLayout


def check_backward(grad_y: Any, y: Any, axis: Any) -> BackwardArgs:
    kind = common_kind({"grad_y": grad_y, "y": y})
    require_float(grad_y, "grad_y")
    require_float(y, "y")
    if grad_y.dtype != y.dtype:
        raise TypeError(f"grad_y has dtype {grad_y.dtype} but y has dtype {y.dtype}; they must match")
    if grad_y.shape != y.shape:
        raise ValueError(f"grad_y has shape {grad_y.shape} but y has shape {y.shape}; they must match")
    ax = normalize_axis(axis, y.ndim, "y")
    return BackwardArgs(kind=kind, grad_y=grad_y, y=y, layout=row_layout(y.shape, ax))


# ----------------------------------------------------------------------------------
# cross entropy


@dataclass(frozen=True)
class CrossEntropyArgs:
    kind: str
    logits: Any
    target: Any
    soft: bool  # float target of logits' shape (class probabilities)
    layout: RowLayout  # class axis of logits
    weight: Any
    opts: CEOptions
    grad_output: Any = 1.0
    inplace: bool = False

    # Read-through views of the options, so kernels and references read one name each.
    ignore_index = property(lambda self: self.opts.ignore_index)
    label_smoothing = property(lambda self: self.opts.label_smoothing)
    reduction = property(lambda self: self.opts.reduction)
    validate = property(lambda self: self.opts.validate)
    z_loss = property(lambda self: self.opts.z_loss)
    logit_softcap = property(lambda self: self.opts.logit_softcap)

    def with_options(self, **changes: Any) -> "CrossEntropyArgs":
        return replace(self, opts=self.opts.replace(**changes))

    @property
    def loss_shape(self) -> tuple[int, ...]:
        """Shape of the reduction='none' loss: logits' shape without the class axis."""
        return self.layout.reduced_shape

    @property
    def loss_dtype(self) -> np.dtype:
        return result_dtype(self.logits.dtype)


def check_cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: Any = -1,
    weight: Any = None,
    grad_output: Any = None,
    inplace: Any = False,
    logits_strides: tuple[int, ...] | None = None,
    options: CEOptions | None = None,
    inplace_name: str = "inplace",
    **option_values: Any,
) -> CrossEntropyArgs:
    """Checks for cross_entropy (grad_output=None) and cross_entropy_with_grad.

    ``inplace_name``: the caller's name of the in-place switch (the torch bridge's is
    ``inplace_backward``), for its type error.

    ``logits_strides``: the real logits' strides in elements when ``logits`` is a
    bridge's stand-in (which has none); used by the in-place overlap check.

    The range check of hard targets against [0, C) is not done here: it needs the
    target values (a device reduction on the GPU); each backend calls
    `raise_bad_targets` with its own count when `validate` is true.
    """
    named = {"logits": logits, "target": target, "weight": weight}
    if grad_output is not None and not _is_scalar(grad_output):
        named["grad_output"] = grad_output
    kind = common_kind(named)
    require_float(logits, "logits")
    ax = normalize_axis(axis, logits.ndim, "logits")
    layout = row_layout(logits.shape, ax)
    if layout.cols == 0:
        raise ValueError("logits has an empty class axis: cross entropy needs at least one class")

    require_native(target.dtype, "target")
    tdt = np.dtype(target.dtype)
    if tdt.kind in "iu":
        soft = False
        if target.shape != layout.reduced_shape:
            raise ValueError(
                f"target has shape {target.shape}; class indices must have logits' shape "
                f"without the class axis, {layout.reduced_shape}"
            )
    elif tdt in FLOAT_DTYPES:
        soft = True
        if target.shape != logits.shape:
            # The usual cause: class ids stored as floats, e.g. labels loaded as float64.
            looks_like = ("its shape is that of class indices" if target.shape == layout.reduced_shape
                          else "class indices must be integers")
            raise ValueError(
                f"target has shape {target.shape}: a float target is read as class "
                f"probabilities, and class probabilities must have logits' shape, {logits.shape}; "
                f"{looks_like}: pass them as integers, target.astype(np.int64) (torch: target.long())"
            )
    else:
        raise TypeError(
            "target must hold integer class indices or float class probabilities, got dtype "
            f"{dtype_name(target.dtype)}"
        )

    if weight is not None:
        require_float(weight, "weight")
        if weight.shape != (layout.cols,):
            raise ValueError(f"weight has shape {weight.shape}, expected ({layout.cols},): one weight per class")

    if options is None:
        options = CEOptions.from_keywords(option_values, "cross_entropy")
    elif option_values:
        raise TypeError(f"pass the options either as options= or by name, not both: {sorted(option_values)}")
    reduction = options.reduction
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"{inplace_name} must be True or False, got {inplace!r}")

    if grad_output is not None:
        if not _is_scalar(grad_output):
            require_native(grad_output.dtype, "grad_output")
            if np.dtype(grad_output.dtype).kind != "f":
                raise TypeError(
                    f"grad_output must be a float scalar or array, got dtype {dtype_name(grad_output.dtype)}"
                )
            if grad_output.ndim != 0:
                if reduction != "none":
                    raise ValueError(
                        f"grad_output must be a scalar for reduction={reduction!r}, got shape {grad_output.shape}"
                    )
                if grad_output.shape != layout.reduced_shape:
                    raise ValueError(
                        f"grad_output has shape {grad_output.shape}, expected the loss shape {layout.reduced_shape}"
                    )
    if inplace and kind == "numpy" and not logits.flags.writeable:
        raise ValueError("inplace=True needs writable logits")
    if inplace:
        if logits_strides is None:
            require_no_self_overlap(logits.shape, logits.strides, logits.itemsize, _INPLACE)
        else:
            require_no_self_overlap(logits.shape, logits_strides, 1, _INPLACE)

    return CrossEntropyArgs(
        kind=kind,
        logits=logits,
        target=target,
        soft=soft,
        layout=layout,
        weight=weight,
        opts=options,
        grad_output=1.0 if grad_output is None else grad_output,
        inplace=bool(inplace),
    )


def may_self_overlap(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int = 1) -> bool:
    """Whether two elements of an array with these strides may share memory.

    Strides and itemsize in one unit (bytes for NumPy/CuPy, elements with itemsize 1
    for torch). Sufficient test for no overlap: sorted by |stride|, each stride steps
    past everything the smaller ones reach. It can flag an exotic interleaved layout
    that does not overlap; it never misses one that does."""
    if any(int(n) == 0 for n in shape):
        return False
    reach = 0  # the largest byte offset the dimensions seen so far reach
    for st, n in sorted((abs(int(st)), int(n)) for n, st in zip(shape, strides) if int(n) > 1):
        if st < reach + itemsize:
            return True
        reach += st * (n - 1)
    return False


_INPLACE = "inplace=True (inplace_backward=True in gpu_softmax.torch)"


def require_no_self_overlap(shape, strides, itemsize: int, what: str) -> None:
    """The one error for writing a gradient over logits whose elements share memory."""
    if may_self_overlap(shape, strides, itemsize):
        raise ValueError(
            f"{what} needs logits whose elements do not share memory, but these overlap (or may: "
            f"shape {tuple(shape)}, strides {tuple(strides)}; e.g. from expand() or as_strided()); "
            "the gradient written over them would be wrong. Pass a .copy()/.contiguous() of them or turn "
            "the in-place option off"
        )


def _is_scalar(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def hard_targets_int64(xp, target, classes: int, ignore_index: int):
    """Flat int64 class indices, for either backend.

    Unsigned targets beyond int64's range would wrap around (2**64 - 100 would read
    as -100, an ignored row); they are mapped to an out-of-range index that is not
    ignore_index instead, so validation and the NaN rule still see them.
    """
    t = target.reshape(-1)
    if np.dtype(t.dtype).kind == "u" and np.dtype(t.dtype).itemsize == 8:
        sentinel = classes if classes != ignore_index else classes + 1
        t = xp.where(t > np.uint64(np.iinfo(np.int64).max), np.uint64(sentinel), t)
    return xp.ascontiguousarray(t, dtype=np.int64)


VALIDATE_HINT = "pass validate=False to skip this check (such rows then get a NaN loss)"


def raise_bad_targets(n_bad: int, classes: int, ignore_index: int, example: int | None = None, *,
                      hint: str = VALIDATE_HINT) -> None:
    """The one error for hard targets outside [0, C) (validate=True); every backend only counts.

    `hint`: how the caller's user gets past the check (the torch bridge has no
    ``validate`` switch, so it says what it does instead)."""
    if n_bad:
        ex = f" (e.g. {example})" if example is not None else ""
        raise ValueError(
            f"{n_bad} target value(s){ex} outside [0, {classes}) and not equal to "
            f"ignore_index={ignore_index}; {hint}"
        )


def count_bad_targets(xp, target: Any, classes: int, ignore_index: int) -> tuple[int, int | None]:
    """(how many hard targets lie outside [0, classes) and differ from ignore_index, the first
    of them): the count of a backend that has the targets at hand (NumPy, or CuPy with a sync)."""
    t = hard_targets_int64(xp, target, classes, ignore_index)
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    n_bad = int(bad.sum())
    if not n_bad:
        return 0, None
    return n_bad, int(target.reshape(-1)[int(xp.flatnonzero(bad)[0])])


def validate_targets(xp, target: Any, classes: int, ignore_index: int, *, hint: str = VALIDATE_HINT) -> None:
    """count_bad_targets, then raise_bad_targets."""
    n_bad, example = count_bad_targets(xp, target, classes, ignore_index)
    raise_bad_targets(n_bad, classes, ignore_index, example, hint=hint)


# ----------------------------------------------------------------------------------
# fused linear + cross entropy


GRAD_WEIGHT_ACCS = ("float32", "weight")
_LCE_NAMES = {"hidden": "hidden", "weight": "weight", "bias": "bias", "class_weight": "class_weight"}


@dataclass(frozen=True)
class LinearCrossEntropyArgs:
    """hidden (..., H) @ weight (V, H).T (+ bias (V,)) then cross entropy against target: class
    indices (...) or probabilities (..., V) (`ce.soft`). `ce`: the options and class weights
    (`ce.weight`), checked against a stand-in of the logits this op never builds; backends
    replace it per chunk. `grad_weight_acc`: grad_weight/grad_bias summed in "float32" (float64
    for float64) or the "weight"'s dtype. `skip_ignored`: rows that cannot contribute are left
    out of every product (one count: a host read on a GPU)."""

    kind: str
    hidden: Any
    weight: Any
    target: Any
    bias: Any
    rows: int  # N: hidden's rows (the product of its leading dimensions)
    features: int  # H
    classes: int  # V
    ce: CrossEntropyArgs
    chunk_size: int | None
    grad_weight_acc: str = "float32"
    skip_ignored: bool = True
    out_features: tuple[int, ...] = ()  # torch's K-dimensional loss: weight (V, *out_features, H)

    @property
    def positions(self) -> int:
        """Loss terms per row of hidden: the product of out_features (1 for the usual head)."""
        return math.prod(self.out_features)

    @property
    def weight_rows(self) -> int:
        """Rows of the weight as a (V * positions, H) matrix: the logits' columns per row."""
        return self.classes * self.positions

    @property
    def loss_shape(self) -> tuple[int, ...]:
        """Shape of the reduction='none' loss: hidden's leading shape, then out_features."""
        return tuple(self.hidden.shape[:-1]) + self.out_features


def check_linear_cross_entropy(
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any = None,
    *,
    chunk_size: Any = None,
    grad_output: Any = None,
    class_weight: Any = None,
    grad_weight_acc: Any = "float32",
    skip_ignored: Any = True,
    options: CEOptions | None = None,
    names: dict[str, str] | None = None,
    **option_values: Any,
) -> LinearCrossEntropyArgs:
    """Checks for linear_cross_entropy_with_grad (and the torch bridge, on stand-ins).

    `weight` is the linear layer's (V, H) weight, `class_weight` the (V,) class weights.
    The options come checked (`options`) or by name (checked here, as check_cross_entropy).
    `names`: the caller's names of hidden/weight/bias/class_weight in the messages (the torch
    bridge's are input/linear_weight/linear_bias/weight)."""
    n = {**_LCE_NAMES, **(names or {})}
    H, W, B, CW = n["hidden"], n["weight"], n["bias"], n["class_weight"]  # noqa: N806
    named = {H: hidden, W: weight, "target": target, B: bias, CW: class_weight}
    if grad_output is not None and not _is_scalar(grad_output):
        named["grad_output"] = grad_output
    kind = common_kind(named)
    require_float(hidden, H)
    require_float(weight, W)
    if hidden.ndim == 0:
        raise ValueError(f"{H} is 0-dimensional: it must be (..., H), features along the last dimension")
    if weight.ndim < 2:
        raise ValueError(f"{W} must be 2-dimensional (V, H), as torch.nn.Linear's (or (V, d_1, ..., d_K, H) for a "
                         f"K-dimensional loss), got shape {weight.shape}")
    classes, features = int(weight.shape[0]), int(weight.shape[-1])
    out = tuple(int(d) for d in weight.shape[1:-1])
    if hidden.shape[-1] != features:
        raise ValueError(
            f"{H} has {hidden.shape[-1]} features (shape {hidden.shape}) but {W} has {features} "
            f"(shape {weight.shape}); {H} must be (..., H) and {W} (V, H)"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{W} has dtype {weight.dtype} but {H} has dtype {hidden.dtype}; they must match")
    if classes == 0:
        raise ValueError(f"{W} has 0 rows: cross entropy needs at least one class")
    if bias is not None:
        require_float(bias, B)
        if bias.dtype != hidden.dtype:
            raise TypeError(f"{B} has dtype {bias.dtype} but {H} has dtype {hidden.dtype}; they must match")
        if tuple(bias.shape) != (classes,) + out:
            raise ValueError(f"{B} has shape {bias.shape}, expected {(classes,) + out}: one per row of {W}")
    require_native(target.dtype, "target")
    lead = tuple(hidden.shape[:-1])
    tkind = np.dtype(target.dtype).kind
    if tkind in "iu":
        if target.shape != lead + out:
            raise ValueError(
                f"target has shape {target.shape}; class indices must have {H}'s shape without the "
                f"feature dimension (then {W}'s out_features), {lead + out}"
            )
    elif np.dtype(target.dtype) in FLOAT_DTYPES:
        if target.shape != lead + (classes,) + out:
            raise ValueError(
                f"target has shape {target.shape}; class probabilities must have shape {lead + (classes,) + out} "
                f"({H}'s leading shape, then one per class)"
            )
    else:
        raise TypeError(
            "target must hold integer class indices or float class probabilities, got dtype "
            f"{dtype_name(target.dtype)}"
        )
    if class_weight is not None:
        require_float(class_weight, CW)
        if class_weight.shape != (classes,):
            raise ValueError(
                f"{CW} has shape {class_weight.shape}, expected ({classes},): one weight per class"
            )
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, numbers.Integral):
            raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if not isinstance(grad_weight_acc, str) or grad_weight_acc not in GRAD_WEIGHT_ACCS:
        raise ValueError(f"grad_weight_acc must be one of {GRAD_WEIGHT_ACCS}, got {grad_weight_acc!r}")
    if not isinstance(skip_ignored, (bool, np.bool_)):
        raise TypeError(f"skip_ignored must be True or False, got {skip_ignored!r}")
    logits = standin(hidden, lead + (classes,) + out)
    go = grad_output if grad_output is None or _is_scalar(grad_output) else standin(grad_output)
    ce = check_cross_entropy(logits, standin(target), axis=len(lead), weight=None if class_weight is None else
                             standin(class_weight), grad_output=go, options=options, **option_values)
    if go is not None and not _is_scalar(go):
        ce = replace(ce, grad_output=grad_output)
    return LinearCrossEntropyArgs(
        kind=kind, hidden=hidden, weight=weight, target=target, bias=bias, rows=math.prod(lead),
        features=features, classes=classes, ce=replace(ce, kind=kind, target=target, weight=class_weight),
        chunk_size=None if chunk_size is None else int(chunk_size), grad_weight_acc=grad_weight_acc,
        skip_ignored=bool(skip_ignored), out_features=out,
    )
