"""Rows whose finite max is past |max| = 2**30 (issue 20): the `huge_max` suite of run.py.

There ExpShift's common factor 2**lo (lo = max * log2(e) minus its float rounding, up to half an
ulp of it) leaves float's range, so softmax takes exp(x - max) itself for such a row or thread
(cuda_src/common.cuh, with_exp_form / DirectExp). The rows: values a few float steps below the
max (the only ones whose exponentials do not underflow) among ordinary ones, on both sides of
2**30 and of either sign; rows of ordinary maxima in the same launch (warps holding several rows
take both forms); and long rows whose running max crosses 2**30 between a thread's tiles, upward
(ordinary tiles, then a wide one) and downward (a wide negative max, then an ordinary one), which
the stream regime's running sum rescales through the true sum (stream_sum_rebase).
"""

from __future__ import annotations

import numpy as np

WIDE = 2.0**30
MAXIMA = (WIDE, -WIDE, 1.5e9, -3.0e9, 1e20, -1e30, 3e38)


def steps_below(m: float, count: int) -> np.ndarray:
    """m and the `count - 1` float32 values just below it."""
    out = [np.float32(m)]
    for _ in range(count - 1):
        out.append(np.nextafter(out[-1], np.float32(-np.inf)))
    return np.array(out, np.float32)


def near_max_row(rng, cols: int, m: float) -> np.ndarray:
    """Values 0-3 float steps below m and, one in five, values far below it; max exactly m."""
    row = rng.choice(steps_below(m, 4), size=cols)
    far = rng.random(cols) < 0.2
    row[far] = (rng.standard_normal(far.sum()) * 10 if m > 0 else m * (1 + rng.random(far.sum()))).astype(np.float32)
    row[rng.integers(cols)] = np.float32(m)
    return row


def crossing_row(rng, cols: int, up: bool) -> np.ndarray:
    """A row whose first half has an ordinary max and whose second half a wide one (up: 2**30
    and 64 below it, after 64-192 below), or the reverse below 0 (-2**30 and less, then 64 and
    128 above -2**30)."""
    if up:
        first, last = steps_below(WIDE, 4)[1:], steps_below(WIDE, 2)
    else:
        above = np.nextafter(np.float32(-WIDE), np.float32(0))
        first, last = steps_below(-WIDE, 3), np.array([above, np.nextafter(above, np.float32(0))], np.float32)
    cut = max(cols // 2, 1)
    row = np.concatenate([rng.choice(first, size=cut), rng.choice(last, size=cols - cut)]).astype(np.float32)
    row[-1] = last.max()
    return row


def huge_rows(rng, rows: int, cols: int) -> np.ndarray:
    """`rows` rows cycling through the near-max rows, an ordinary row and both crossings."""
    kinds = [("near", m) for m in MAXIMA] + [("plain", 0.0), ("up", 0.0), ("down", 0.0)]
    out = []
    for i in range(rows):
        kind, m = kinds[(i + rng.integers(len(kinds))) % len(kinds)]
        if kind == "near":
            out.append(near_max_row(rng, cols, m))
        elif kind == "plain":
            out.append((rng.standard_normal(cols) * 3).astype(np.float32))
        else:
            out.append(crossing_row(rng, cols, kind == "up"))
    return np.stack(out)


def bf16_words(x32: np.ndarray) -> np.ndarray:
    """float32 values truncated to bfloat16 words (exact for the steps of a bfloat16 max)."""
    return (np.ascontiguousarray(x32, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def make_suite(SM, check, bf16_check, rng):
    """The suite: every forward regime, float32 and bfloat16, short and long rows."""

    def suite() -> int:
        n = 0
        base = SM.POLICY
        for force in (None, "stage", "split", "stream"):
            SM.POLICY = base.replace(force_regime=force, split_min_cols=1, stream_min_chunk=1000)
            for rows, cols in [(16, 40), (10, 1000), (5, 3 * 8192 + 5)]:
                x = huge_rows(rng, rows, cols)
                for m in MAXIMA:  # every kind at least once
                    x[rng.integers(rows)] = near_max_row(rng, cols, m)
                n += check(x, what=f"{force} huge max {rows}x{cols}", special=True)
                n += check(np.ascontiguousarray(x[::-1]), what=f"{force} huge max reversed {rows}x{cols}",
                           special=True)
                # bfloat16's steps below a wide max are 2**23 and more apart: only the max survives.
                # Forward only: the backward passes read y, not x, and have suites of their own.
                n += bf16_check(bf16_words(huge_rows(rng, rows, cols)), f"{force} huge max {rows}x{cols}",
                                backward=False)
        SM.POLICY = base
        return n

    return suite
