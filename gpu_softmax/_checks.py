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
