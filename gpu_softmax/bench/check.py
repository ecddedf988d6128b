"""Accuracy of the timed rows: a sample of rows against the float64 reference, at the tests' tolerances.

The comparison itself is the one shared with `gpu-softmax check` (`selfcheck.compare`);
the check never reads the whole input back to the host.
"""

from __future__ import annotations

import math
from typing import Callable

from gpu_softmax.selfcheck import compare

from .cases import SAMPLE_ROWS
from .inputs import take_rows


def sample_rows(rows: int, rng, n: int = SAMPLE_ROWS) -> list[int]:
    """The first and last rows and random others, sorted, at most n (all rows if fewer)."""
    if rows <= n:
        return list(range(rows))
    picked = {0, rows - 1}
    while len(picked) < n:
        picked.add(int(rng.integers(0, rows)))
    return sorted(picked)


def check_sampled(op: str, dtype: str, fn: Callable, args: tuple, rng) -> tuple[bool, float, str]:
    """(matched, max relative error, what failed): `fn(*args)` (ours, per-row results)
    on sampled rows against the reference at the tests' tolerances."""
    got = fn(*args)
    idx = sample_rows(int(args[0].shape[0]), rng)
    args_np = tuple(take_rows(a, idx) for a in args)
    got_np = tuple(take_rows(g, idx) for g in got) if isinstance(got, tuple) else take_rows(got, idx)
    del got
    try:
        err = compare(op, dtype, args_np, got_np, {"reduction": "none"})
        return True, err, ""
    except AssertionError as exc:
        return False, math.nan, str(exc)[:300]
