"""Tolerances and comparison helpers shared by the tests and `gpu-softmax check`.

One place states how close a kernel's output must be to the float64 reference.
CuPy compiles with -ftz=true, so results that the reference gives as denormals
come back as zero: every comparison carries an absolute floor next to the
relative bound.
"""

from __future__ import annotations

import numpy as np

# dtype name -> (max relative error against float64, absolute floor)
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-12, 1e-300),
    "float32": (1e-5, 1e-30),
    # float16 outputs are rounded once to float16 (eps 9.8e-4); the bound leaves
    # room for that rounding plus float32 accumulation; the floor covers
    # float16's subnormal range (6.1e-5), which -ftz flushes.
    "float16": (2e-3, 6.2e-5),
    # bfloat16 (torch bridge): 8 mantissa bits, eps 7.8e-3.
    "bfloat16": (8e-3, 1e-30),
}


def tolerance(dtype) -> tuple[float, float]:
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return TOLERANCES[name]


def _as_pair(actual, expected, what: str):
    """Both as float64, the same shape, and where each is NaN (which must agree)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {e.shape}")
    a_nan, e_nan = np.isnan(a), np.isnan(e)
    # Matching NaNs and equal infinities count as exact.
    with np.errstate(invalid="ignore"):
        same = (a == e) | (a_nan & e_nan)
    return a, e, a_nan != e_nan, same


def max_relative_error(actual, expected) -> float:
    """max |actual - expected| / max(|expected|, tiny); inf when NaNs sit in different places."""
    a, e, nan_mismatch, same = _as_pair(actual, expected, "max_relative_error")
    if nan_mismatch.any():
        return float("inf")
    with np.errstate(all="ignore"):
        rel = np.abs(a - e) / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
    rel = np.where(same, 0.0, rel)
    return float(rel.max()) if rel.size else 0.0


def assert_close(actual, expected, dtype, what: str = "result", rtol: float | None = None, atol: float | None = None) -> None:
    """Elementwise |a - e| <= atol + rtol * |e|, NaN only where expected is NaN."""
    r, f = tolerance(dtype)
    rtol = r if rtol is None else rtol
    atol = f if atol is None else atol
    a, e, nan_mismatch, same = _as_pair(actual, expected, what)
    if nan_mismatch.any():
        idx = tuple(np.argwhere(nan_mismatch)[0])
        raise AssertionError(f"{what}: NaN mismatch at {idx}: got {a[idx]}, expected {e[idx]}")
    with np.errstate(all="ignore"):
        ok = same | (np.abs(a - e) <= atol + rtol * np.abs(e))
    if not ok.all():
        idx = tuple(np.argwhere(~ok)[0])
        n = int((~ok).sum())
        raise AssertionError(
            f"{what}: {n} of {ok.size} elements off (rtol={rtol}, atol={atol}); first at {idx}: "
            f"got {a[idx]!r}, expected {e[idx]!r}; max rel err {max_relative_error(a, e):.3e}"
        )


def backward_atol(op: str, grad_y, y, rtol: float, axis: int = -1, acc_rtol: float | None = None) -> np.ndarray:
    """Per-element absolute floor for a softmax_backward / log_softmax_backward result.

    Both gradients are differences that cancel, y * (g - S) with S = sum(g * y), and
    g - exp(y) * S with S = sum(g), so their error is relative to the terms that
    cancel, not to the (possibly tiny) difference. Two sources, element by element:

    - the row sum S, added in another order in the accumulation dtype (`acc_rtol`,
      default `rtol`), moves by acc_rtol * sum_j |g_j y_j| (softmax) or
      acc_rtol * sum_j |g_j| (log_softmax);
    - y itself, rounded to the stored dtype (`rtol`, the dtype's tolerance): a
      relative error rtol in y_i (softmax: y_i * rtol * sum_j |g_j y_j| through S,
      the rest is rtol * |result|, which the comparison's own rtol covers), or an
      absolute error up to rtol * max_j |y_j| in a log-probability (which also
      bounds |logsumexp|, the forward's own error), which exp turns into that
      relative error of exp(y_i) * S.

    The row length enters through the row sums; `rtol` from the dtype's epsilon.
    Returned as an array of x's shape, for assert_close(..., atol=...).
    """
    acc = rtol if acc_rtol is None else acc_rtol
    g = np.asarray(grad_y, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if op == "softmax_backward":
            scale = np.abs(yy) * (acc + rtol) * np.sum(np.abs(g * yy), axis=axis, keepdims=True)
        elif op == "log_softmax_backward":
            big = np.max(np.abs(np.where(np.isfinite(yy), yy, 0.0)), axis=axis, keepdims=True)
            scale = np.exp(yy) * (acc * np.sum(np.abs(g), axis=axis, keepdims=True)
                                  + rtol * big * np.abs(np.sum(g, axis=axis, keepdims=True)))
        else:
            raise ValueError(f"backward_atol: {op!r} is not a backward op")
    return np.where(np.isfinite(scale), scale, 0.0)
