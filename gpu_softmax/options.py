"""The cross-entropy family's options, checked once and carried as one frozen object.

A public function builds a :class:`CEOptions` from its keywords with
:meth:`CEOptions.checked` (the one place each option is validated and its error
text written) and hands it on: to the argument checks, the NumPy reference, the
CUDA launchers and the torch bridge. Nothing below the public functions takes an
option by name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

REDUCTIONS = ("none", "mean", "sum")
REDUCTION_CODE = {"none": 0, "mean": 1, "sum": 2}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def check_real(value: Any, name: str, low: float, high: float, *, closed_high: bool = True) -> float:
    """A real number in [low, high] (or [low, high)); TypeError/ValueError naming `name` otherwise."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    ok = low <= v <= high if closed_high else low <= v < high
    if not ok:
        hi = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{hi}, got {value!r}")
    return v


def check_int(value: Any, name: str) -> int:
    if _is_bool(value) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_flag(value: Any, name: str) -> bool:
    if not _is_bool(value):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_softcap(value: Any) -> float | None:
    if value is None:
        return None
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise TypeError(f"logit_softcap must be a real number or None, got {value!r}")
    cap = float(value)
    if not 0.0 < cap < math.inf:  # one rule, one message (NaN fails it too)
        raise ValueError(
            f"logit_softcap must be a positive finite number (or None to turn it off), got {value!r}"
        )
    return cap


@dataclass(frozen=True)
class CEOptions:
    """Options of softmax cross-entropy (semantics: ``gpu_softmax.cross_entropy``).

    ``validate``: check hard targets lie in [0, C) or equal ``ignore_index``.
    Build one with :meth:`checked`; the constructor itself checks nothing.
    """

    ignore_index: int = -100
    label_smoothing: float = 0.0
    reduction: str = "mean"
    z_loss: float = 0.0
    logit_softcap: float | None = None
    validate: bool = True

    @classmethod
    def checked(
        cls,
        *,
        ignore_index: Any = -100,
        label_smoothing: Any = 0.0,
        reduction: Any = "mean",
        z_loss: Any = 0.0,
        logit_softcap: Any = None,
        validate: Any = True,
    ) -> CEOptions:
        """The options, each checked (TypeError/ValueError naming the option)."""
        if _is_bool(ignore_index) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
        if not INT64_MIN <= int(ignore_index) <= INT64_MAX:  # targets are compared as int64 everywhere
            raise ValueError(f"ignore_index must be in int64's range [{INT64_MIN}, {INT64_MAX}], got {ignore_index!r}")
        smoothing = check_real(label_smoothing, "label_smoothing", 0.0, 1.0)
        if not isinstance(reduction, str) or reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        return cls(
            ignore_index=int(ignore_index),
            label_smoothing=smoothing,
            reduction=reduction,
            z_loss=check_real(z_loss, "z_loss", 0.0, math.inf, closed_high=False),
            logit_softcap=check_softcap(logit_softcap),
            validate=check_flag(validate, "validate"),
        )

    @classmethod
    def from_keywords(cls, options: dict[str, Any], where: str) -> CEOptions:
        """:meth:`checked` on a function's ``**options``; TypeError naming `where` for an unknown one."""
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(
                f"{where}() got unexpected option(s) {', '.join(unknown)}; the options are {', '.join(OPTION_NAMES)}"
            )
        return cls.checked(**options)

    def replace(self, **changes: Any) -> CEOptions:
        return dataclasses.replace(self, **changes)

    def unvalidated(self) -> CEOptions:
        """These options with validate=False, made once per options object (a launcher
        that must not sync the host asks on every call)."""
        other = self.__dict__.get("_unvalidated")
        if other is None:
            other = self if not self.validate else dataclasses.replace(self, validate=False)
            object.__setattr__(self, "_unvalidated", other)
        return other

    @property
    def reduction_code(self) -> int:
        return REDUCTION_CODE[self.reduction]

    def op_args(self) -> tuple:
        """The options as the positional scalars of a torch custom op (which takes no objects),
        in field order; :meth:`from_op_args` inverts it."""
        return (self.ignore_index, self.label_smoothing, self.reduction, self.z_loss, self.logit_softcap,
                self.validate)

    @classmethod
    def from_op_args(cls, args: tuple) -> CEOptions:
        return cls(*args)


# float32's normal range: what the kernels' float32 arithmetic carries (the GPU build
# flushes subnormals to zero, -ftz=true, and a larger value overflows).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_ranges(classes: int) -> dict[str, tuple[float, float]]:
    """The range of each scalar option (besides 0 / None: off) that float32 kernels compute
    with correctly, for `classes` classes. label_smoothing is used as label_smoothing / C;
    z_loss enters the gradient as 2 * z_loss."""
    return {
        "label_smoothing": (FLOAT32_TINY * classes, 1.0),
        "z_loss": (FLOAT32_TINY, FLOAT32_MAX / 2),
        "logit_softcap": (FLOAT32_TINY, FLOAT32_MAX),
    }


def require_float32_options(opts: CEOptions, classes: int) -> None:
    """ValueError naming the option and its range when float32 kernels cannot carry a value.

    The NumPy reference computes in float64 and takes every value; the kernels accumulate
    float16/bfloat16/float32 logits in float32, where a value below the range would be
    rounded or flushed to 0 (turning the option off) and one above it would overflow."""
    for name, (low, high) in float32_ranges(classes).items():
        value = getattr(opts, name)
        if value is None or value == 0.0 or low <= value <= high:
            continue
        raise ValueError(
            f"{name}={value!r} is outside what the float32 kernels carry: 0 (off) or [{low:.8g}, {high:.8g}] "
            f"for {classes} classes (float16/bfloat16/float32 logits are computed in float32 on the GPU); "
            "pass float64 logits, or use the NumPy reference, for such a value"
        )


DEFAULT = CEOptions()
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CEOptions))
# How many trailing positional slots the options take in a torch custom op's schema
# (so a backward's None count follows the options instead of being counted by hand).
OP_ARG_COUNT = len(DEFAULT.op_args())

__all__ = ["CEOptions", "DEFAULT", "OPTION_NAMES", "OP_ARG_COUNT", "REDUCTIONS", "REDUCTION_CODE", "check_real",
           "check_int", "check_flag", "check_softcap", "FLOAT32_TINY", "FLOAT32_MAX", "float32_ranges",
           "require_float32_options"]
