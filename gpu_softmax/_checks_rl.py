"""Argument checks of the token log-prob family, shared by every backend.

Built from the helpers of :mod:`gpu_softmax._checks` (array kinds, dtypes, the class
axis, row layouts), so a mistake made here reads as it does for cross entropy. Each
public function runs its arguments through one function here before anything is
computed and gets back a small record: the array module, the row layout, the checked
options.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _checks
from ._checks import RowLayout
from ._checks_linear import check_features, require_bias, require_hidden
from .rl_options import TokenLogprobOptions


@dataclass(frozen=True)
class TokenLogprobArgs:
    kind: str
    logits: Any
    tokens: Any
    layout: RowLayout  # class axis of logits
    opts: TokenLogprobOptions
    grad_logp: Any = None  # backward only
    grad_entropy: Any = None  # backward only; None: entropy not differentiated

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of logp and entropy: logits' shape without the class axis."""
        return self.layout.reduced_shape

    @property
    def out_dtype(self) -> np.dtype:
        return _checks.result_dtype(self.logits.dtype)


def resolve_options(options: TokenLogprobOptions | None, option_values: dict[str, Any]) -> TokenLogprobOptions:
    """The options object, from options= or from the keywords (never both)."""
    if options is None:
        return TokenLogprobOptions.checked(**option_values)
    if option_values:
        raise TypeError(f"pass the options either as options= or by name, not both: {sorted(option_values)}")
    if not isinstance(options, TokenLogprobOptions):
        raise TypeError(f"options must be a TokenLogprobOptions, got {type(options).__name__}")
    return options


def _check_tokens(tokens: Any, layout: RowLayout) -> None:
    _checks.require_native(tokens.dtype, "tokens")
    if np.dtype(tokens.dtype).kind not in "iu":
        raise TypeError(f"tokens must hold integer class indices, got dtype {_checks.dtype_name(tokens.dtype)}")
    if tuple(tokens.shape) != layout.reduced_shape:
        raise ValueError(
            f"tokens has shape {tuple(tokens.shape)}; it must have logits' shape without the class axis, "
            f"{layout.reduced_shape}"
        )


def _check_grad(grad: Any, name: str, shape: tuple[int, ...]) -> None:
    _checks.require_float(grad, name)
    if tuple(grad.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(grad.shape)}, expected the output shape {shape}")


def check_token_logprobs(
    logits: Any,
    tokens: Any,
    *,
    axis: Any = -1,
    grad_logp: Any = None,
    grad_entropy: Any = None,
    backward: bool = False,
    options: TokenLogprobOptions | None = None,
    **option_values: Any,
) -> TokenLogprobArgs:
    """Checks for token_logprobs (backward=False) and token_logprobs_backward.

    The range check of the tokens against [0, C) needs their values: each backend
    runs it (``raise_bad_tokens``) when ``validate`` is on.
    """
    opts = resolve_options(options, option_values)
    kind = _checks.common_kind({"logits": logits, "tokens": tokens, "grad_logp": grad_logp,
                                "grad_entropy": grad_entropy})
    _checks.require_float(logits, "logits")
    layout = _checks.row_layout(tuple(logits.shape), _checks.normalize_axis(axis, logits.ndim, "logits"))
    if layout.cols == 0:
        raise ValueError("logits has an empty class axis: token log-probabilities need at least one class")
    _check_tokens(tokens, layout)
    if backward:
        if grad_logp is None:
            raise TypeError("token_logprobs_backward needs grad_logp (the gradient with respect to logp)")
        _check_grad(grad_logp, "grad_logp", layout.reduced_shape)
        if grad_entropy is not None:
            _check_grad(grad_entropy, "grad_entropy", layout.reduced_shape)
    return TokenLogprobArgs(kind=kind, logits=logits, tokens=tokens, layout=layout, opts=opts,
                            grad_logp=grad_logp, grad_entropy=grad_entropy)


def raise_bad_tokens(n_bad: int, classes: int, ignore_index: int, example: int | None = None) -> None:
    """The one error text for tokens outside [0, C) (validate=True)."""
    if n_bad:
        ex = f" (e.g. {example})" if example is not None else ""
        raise ValueError(
            f"{n_bad} token value(s){ex} outside [0, {classes}) and not equal to ignore_index={ignore_index}; "
            "pass validate=False to skip this check (such rows then get a NaN log-probability)"
        )


def check_chunk_size(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return int(chunk_size)


@dataclass(frozen=True)
class LinearTokenLogprobArgs:
    """hidden (..., H) @ weight (V, H).T (+ bias (V,)), then token log-probs of tokens (...).

    ``logits`` of the inner record is a one-element stand-in of the (rows, V) logits,
    which this op never builds in full."""

    kind: str
    rows: int
    features: int
    classes: int
    chunk_size: int | None
    inner: TokenLogprobArgs


def check_linear_token_logprobs(hidden: Any, weight: Any, tokens: Any, bias: Any = None, *,
                                chunk_size: Any = None, options: TokenLogprobOptions | None = None,
                                **option_values: Any) -> LinearTokenLogprobArgs:
    kind = _checks.common_kind({"hidden": hidden, "linear_weight": weight, "tokens": tokens, "linear_bias": bias})
    require_hidden(hidden, "hidden")
    _checks.require_float(weight, "linear_weight")
    if weight.ndim != 2:
        raise ValueError(f"linear_weight must be 2-dimensional (V, H), as torch.nn.Linear's, got shape {weight.shape}")
    classes, features = int(weight.shape[0]), int(weight.shape[1])
    check_features(hidden, weight, "hidden", "linear_weight")
    if bias is not None:
        require_bias(bias, hidden, "linear_bias", "hidden")
        if tuple(bias.shape) != (classes,):
            raise ValueError(f"linear_bias has shape {tuple(bias.shape)}, expected ({classes},): one per row of "
                             "linear_weight")
    standin = np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype=hidden.dtype), tuple(hidden.shape[:-1]) + (classes,), (0,) * hidden.ndim)
    inner = check_token_logprobs(standin, _checks.standin(tokens), axis=-1, options=options, **option_values)
    return LinearTokenLogprobArgs(kind=kind, rows=math.prod(hidden.shape[:-1]), features=features, classes=classes,
                                  chunk_size=check_chunk_size(chunk_size), inner=inner)


__all__ = ["TokenLogprobArgs", "LinearTokenLogprobArgs", "check_token_logprobs", "check_linear_token_logprobs",
           "check_chunk_size", "raise_bad_tokens", "resolve_options"]
