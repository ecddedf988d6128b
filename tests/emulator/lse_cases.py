"""The logsumexp rows that decide between the float pass and the double pass (issue 20).

float32 / float16 / bfloat16 rows are summed in float and read again in double only when the
result is too close to 0 for the float pass's error bound (cuda_src/softmax.cu, lse_limit), so
these rows sit on both sides of that limit: near 0 (where m + log(sum) cancels), just inside and
just outside it, with one dominant element (sum = 1 + tiny) at 0 and away from it, tied maxima,
a row of equal values, maxima far from 0 and rows the float pass cannot take at all (|max| past
2**20), mixed with NaN / +inf / all -inf rows in one warp. Every regime: warp rows (one lane and
32 lanes a row), one block a row, and k blocks a row (a planned split and a hand-made one).
"""

from __future__ import annotations

import numpy as np

# Results the rows aim at: inside the double pass's range (|lse| < about 2.25 for these rows),
# then just outside it, where the float result must already be within tolerance.
TARGETS = (1e-3, -1.5, 2.0, 3.0, -3.0, 6.0)


def _shift_to(z: np.ndarray, target: float) -> np.ndarray:
    """z moved so that its logsumexp (float64) is `target`."""
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum())) + target


def lse_rows(rng, cols: int, dt) -> np.ndarray:
    """One matrix whose rows cover the cases above, stored in `dt` (the reference reads the
    stored values, so rounding the targets away is harmless)."""
    big = 6.0e4 if dt == np.float16 else 1.0e6  # float16 tops out at 65504
    rows = []
    rows.append(rng.standard_normal(cols) * 3 + 20)  # far from 0: the float pass
    for t in TARGETS:
        rows.append(_shift_to(rng.standard_normal(cols) * 2, t))
    dom = rng.standard_normal(cols) * 0.5 - 30  # one dominant element: sum = 1 + tiny
    for top in (0.0, 5.0, -0.25):
        r = dom.copy()
        r[cols // 3] = top
        rows.append(r)
    if cols > 1:
        r = dom.copy()
        r[cols // 3] = r[cols - 1] = -np.log(2.0)  # two maxima: the count at the max is 2, lse ~ 0
        rows.append(r)
    rows.append(np.full(cols, -np.log(cols)))  # equal values, lse ~ 0
    rows.append(big + rng.standard_normal(cols))  # large max, still the float pass
    if dt != np.float16:
        rows.append(2.0**21 + rng.standard_normal(cols) * 8)  # past 2**20: the double pass
        rows.append(np.full(cols, -3.0e38))  # hi = max * log2(e) overflows: the double pass
    x = np.stack(rows).astype(np.float32 if dt == "bfloat16" else dt)
    return x


def with_special_rows(x: np.ndarray) -> np.ndarray:
    """x with NaN, +inf and all -inf rows between the others (the same warp in the warp regime)."""
    s = x.copy()
    s[1, 0] = np.nan
    s[3, -1] = np.inf
    s[5, :] = -np.inf
    return s


def bf16_bits(x32: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 words (round to nearest even; no NaN among them)."""
    u = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def make_suite(cp, SM, fargs, forced, rng):
    """The `logsumexp_rows` suite of tests/emulator/run.py."""
    from gpu_softmax import reference
    from gpu_softmax.testing import assert_close

    def one(x_np, dt, what) -> int:
        if dt == "bfloat16":
            bits = bf16_bits(x_np)
            xf = (bits.astype(np.uint32) << 16).view(np.float32)
            got = SM.forward_raw(cp.asarray(bits), -1, "logsumexp", storage="bfloat16")
            assert_close(cp.asnumpy(got), reference.logsumexp(xf), np.float32, f"bf16 logsumexp {what}")
        else:
            got = SM.logsumexp(fargs(cp.asarray(x_np)))
            want = reference.logsumexp(x_np)
            assert_close(cp.asnumpy(got), want, want.dtype, f"logsumexp {what}")
        return 1

    def suite() -> int:
        n = 0
        # float64 keeps its double pass alone, and its 1e-12 tolerance cannot hold near 0
        # (the summation order alone moves m + log(sum) by 1e-16): the other suites cover it.
        for dt in (np.float32, np.float16, "bfloat16"):
            name = dt if isinstance(dt, str) else dt.__name__
            for cols in (1, 5, 100, 1000, 2048, 5000, 2 * 16384 + 5):
                x = lse_rows(rng, cols, dt)
                if cols > 16384:
                    x = x[:2]  # few rows of long ones: the planner splits them over k blocks
                n += one(x, dt, f"{cols} {name}")
                n += one(with_special_rows(x) if len(x) > 5 else x, dt, f"{cols} {name} special")
            # k blocks a row with chunks of a few tiles, and a shorter last chunk
            storage = name
            vec = SM.VEC[storage]
            nv = SM.VARIANTS[(storage, "lse")]["block"][0]
            chunk = 64 * nv * vec * 2
            cols = 3 * chunk - 7
            p = SM.Plan("split", SM.kernel_name("lse", "block", nv, storage), 2 * 3, 64, k=3, chunk=chunk,
                        groups=2)
            forced[:] = [p]
            x = lse_rows(rng, cols, dt)
            n += one(x, dt, f"split {cols} {name}")
            n += one(with_special_rows(x), dt, f"split {cols} {name} special")
            forced.clear()
        return n

    return suite
