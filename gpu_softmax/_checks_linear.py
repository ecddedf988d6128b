"""Argument checks of the fused linear + cross entropy, shared by every backend (the
cross-entropy part is `_checks.check_cross_entropy`, run on a stand-in of the logits
this op never builds)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._arrays import FLOAT_DTYPES, common_kind, dtype_name, require_float, require_native, standin
from ._checks import CrossEntropyArgs, _is_scalar, check_cross_entropy
from .options import CEOptions

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


def require_hidden(hidden: Any, name: str) -> None:
    """A float `hidden` of at least one dimension: (..., H)."""
    require_float(hidden, name)
    if hidden.ndim == 0:
        raise ValueError(f"{name} is 0-dimensional: it must be (..., H), features along the last dimension")


def check_features(hidden: Any, weight: Any, hidden_name: str, weight_name: str) -> None:
    """`hidden` (..., H) and a linear `weight` (..., H) agree in H and in dtype."""
    features = int(weight.shape[-1])
    if hidden.shape[-1] != features:
        raise ValueError(
            f"{hidden_name} has {hidden.shape[-1]} features (shape {tuple(hidden.shape)}) but {weight_name} has "
            f"{features} (shape {tuple(weight.shape)}); {hidden_name} must be (..., H) and {weight_name} (V, H)"
        )
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{weight_name} has dtype {weight.dtype} but {hidden_name} has dtype {hidden.dtype}; "
                        "they must match")


def require_bias(bias: Any, hidden: Any, bias_name: str, hidden_name: str) -> None:
    """A float linear bias of hidden's dtype (its shape is the caller's to check)."""
    require_float(bias, bias_name)
    if bias.dtype != hidden.dtype:
        raise TypeError(f"{bias_name} has dtype {bias.dtype} but {hidden_name} has dtype {hidden.dtype}; "
                        "they must match")


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
    require_hidden(hidden, H)
    require_float(weight, W)
    if weight.ndim < 2:
        raise ValueError(f"{W} must be 2-dimensional (V, H), as torch.nn.Linear's (or (V, d_1, ..., d_K, H) for a "
                         f"K-dimensional loss), got shape {weight.shape}")
    classes, features = int(weight.shape[0]), int(weight.shape[-1])
    out = tuple(int(d) for d in weight.shape[1:-1])
    check_features(hidden, weight, H, W)
    if classes == 0:
        raise ValueError(f"{W} has 0 rows: cross entropy needs at least one class")
    if bias is not None:
        require_bias(bias, hidden, B, H)
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
