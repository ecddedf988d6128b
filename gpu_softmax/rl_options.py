"""The token log-prob family's options, checked once and carried as one frozen object.

As :class:`gpu_softmax.options.CEOptions` for cross entropy: a public function builds a
:class:`TokenLogprobOptions` with :meth:`TokenLogprobOptions.checked` (the one place each
option is validated and its error text written) and hands it down to the argument
checks, the NumPy reference, the CUDA launcher and the torch bridges.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .options import check_flag, check_int, check_real, check_softcap


def check_temperature(value: Any) -> float:
    """A positive finite temperature; NaN, 0, negative and inf are refused."""
    # check_real names the option and refuses non-reals and NaN (NaN is in no interval).
    t = check_real(value, "temperature", 0.0, math.inf, closed_high=False)
    if t <= 0.0:
        raise ValueError(f"temperature must be a positive finite number (> 0), got {value!r}")
    return t


def check_top_k(value: Any) -> int | None:
    if value is None:
        return None
    k = check_int(value, "top_k")
    if k < 1:
        raise ValueError(f"top_k must be an integer >= 1 (or None to turn it off), got {value!r}")
    return k


def check_top_p(value: Any) -> float | None:
    if value is None:
        return None
    p = check_real(value, "top_p", 0.0, 1.0)
    if p <= 0.0:
        raise ValueError(f"top_p must be in (0, 1] (or None to turn it off), got {value!r}")
    return p


@dataclass(frozen=True)
class TokenLogprobOptions:
    """Options of ``token_logprobs`` (semantics: docs/rl.md).

    ``validate``: check tokens lie in [0, C) or equal ``ignore_index``.
    Build one with :meth:`checked`; the constructor itself checks nothing.
    """

    temperature: float = 1.0
    logit_softcap: float | None = None
    ignore_index: int = -100
    top_k: int | None = None
    top_p: float | None = None
    return_entropy: bool = False
    validate: bool = True

    @classmethod
    def checked(
        cls,
        *,
        temperature: Any = 1.0,
        logit_softcap: Any = None,
        ignore_index: Any = -100,
        top_k: Any = None,
        top_p: Any = None,
        return_entropy: Any = False,
        validate: Any = True,
    ) -> TokenLogprobOptions:
        """The options, each checked (TypeError/ValueError naming the option)."""
        return cls(
            temperature=check_temperature(temperature),
            logit_softcap=check_softcap(logit_softcap),
            ignore_index=check_int(ignore_index, "ignore_index"),
            top_k=check_top_k(top_k),
            top_p=check_top_p(top_p),
            return_entropy=check_flag(return_entropy, "return_entropy"),
            validate=check_flag(validate, "validate"),
        )

    def replace(self, **changes: Any) -> TokenLogprobOptions:
        return dataclasses.replace(self, **changes)

    @property
    def masked(self) -> bool:
        """Whether a sampler mask applies (top_p = 1 keeps every class: no mask)."""
        return self.top_k is not None or (self.top_p is not None and self.top_p < 1.0)

    def op_args(self) -> tuple:
        """The options as positional scalars (torch custom ops take no objects)."""
        return dataclasses.astuple(self)

    @classmethod
    def from_op_args(cls, args: tuple) -> TokenLogprobOptions:
        return cls(*args)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(TokenLogprobOptions))

__all__ = ["TokenLogprobOptions", "OPTION_NAMES", "check_temperature", "check_top_k", "check_top_p"]
