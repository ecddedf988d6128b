"""Tolerances and comparison helpers shared by the tests and `gpu-softmax check`.

One place states how close a kernel's output must be to the float64 reference.
CuPy compiles with -ftz=true, so results that the reference gives as denormals
come back as zero: every comparison carries an absolute floor next to the
relative bound. Where a result is a difference that cancels, that floor comes
from the terms it is a difference of, element by element (backward_atol,
ce_grad_atol). Also here: the poison for outputs (0xFF bytes, NaN in every float
format), the guard against host synchronisation, and a watchdog for spawned ranks.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np

from gpu_softmax import _checks, reference

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


# ----------------------------------------------------------------------------------
# the cross-entropy gradient's floor

# The smallest step a kernel's stored result can take near zero: float16's subnormal
# spacing (its results are float32 values rounded once; cvt.rn.f16.f32 keeps
# subnormals), and float32's smallest normal where -ftz flushes (float32 storage and
# bfloat16, whose range is float32's). float64 keeps its subnormals.
_STORED_STEP = {
    "float16": float(np.finfo(np.float16).smallest_subnormal),
    "float32": float(np.finfo(np.float32).tiny),
    "bfloat16": float(np.finfo(np.float32).tiny),
    "float64": float(np.finfo(np.float64).smallest_subnormal),
}


def stored_step(dtype) -> float:
    """The smallest step a kernel's result stored in `dtype` takes near zero (see above):
    the absolute part of one rounding that no relative bound covers."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return _STORED_STEP[name]


def _grad_scales(a, divisor: float, n_valid: float):
    """(cross-entropy scale, z-loss scale) of each row's gradient: grad_output, over
    the mean's divisors; as the reference's cross_entropy_with_grad applies them."""
    g = np.asarray(a.grad_output, dtype=np.float64)
    if a.reduction == "none":
        g_rows = np.broadcast_to(g, a.loss_shape).reshape(-1, 1)
        return g_rows, g_rows
    if a.reduction == "sum":
        return g, g
    with np.errstate(all="ignore"):
        return g / divisor, g / n_valid


def ce_grad_atol(logits, target, rtol: float, *, dtype=None, grad_output=1.0, at_most=None, **ce_kw) -> np.ndarray:
    """Per-element absolute floor for a cross_entropy_with_grad gradient (NumPy inputs).

    Entry c of a row is a difference, (p_c * sum(q) - q_c) * s + 2 z lse p_c * s_z,
    times (1 - th_c**2) under a soft cap (th = capped logit / cap). A kernel's error
    in it is relative to the terms it subtracts, not to the (possibly tiny or
    cancelled) difference: rtol * (p_c |sum q| |s| + |q_c| |s| + 2 |z lse| p_c |s_z|)
    * (1 + th_c**2), plus the smallest step of the stored `dtype` (default: the
    logits' own); that step alone for ignored rows, whose gradient is exactly zero.
    Each entry's floor follows its own p_c: a long row's small entries are held to
    their own size, where a floor of rtol * max|grad| lay above almost all of them.

    `at_most`: a floor the comparison had before (a number, or an array that
    broadcasts), which no entry's floor may exceed: replacing it tightens the small
    entries and loosens none. `ce_kw` are the cross-entropy options (weight,
    label_smoothing, reduction, z_loss, logit_softcap, ignore_index, axis). Returned
    in the logits' shape.
    """
    a = _checks.check_cross_entropy(np.asarray(logits), np.asarray(target), grad_output=grad_output,
                                    **dict(ce_kw, validate=False))
    _, _, lse, _, divisor, n_valid, pieces = reference._cross_entropy_rows(a, want_grad=True)
    p, q, qsum, dcap, valid, _ = pieces
    ce_scale, zl_scale = _grad_scales(a, divisor, n_valid)
    with np.errstate(all="ignore"):
        terms = np.abs(ce_scale) * (p * np.abs(qsum) + np.abs(q))
        if a.z_loss:
            terms = terms + np.abs(zl_scale) * (2.0 * abs(a.z_loss)) * np.abs(lse[:, None]) * p
        if dcap is not None:
            terms = terms * (2.0 - dcap)  # 1 + th**2
        floor = rtol * terms
    floor = np.where(np.isfinite(floor) & valid[:, None], floor, 0.0)
    floor = floor + stored_step(a.logits.dtype if dtype is None else dtype)
    if at_most is not None:
        floor = np.fmin(floor, at_most)  # (a NaN old floor, from a NaN row, caps nothing)
    moved = np.moveaxis(a.logits, a.layout.axis, -1).shape
    return np.moveaxis(floor.reshape(moved), -1, a.layout.axis)


# ----------------------------------------------------------------------------------
# poison

POISON_BYTE = 0xFF  # every float format reads all-ones bits as NaN; integers as -1


def poisoned(xp, shape, dtype):
    """A new array of `shape` and `dtype` (NumPy or CuPy, `xp`) with every byte 0xFF:
    NaN in float16, bfloat16 (as uint16 words), float32 and float64 alike. A float32
    NaN fill (0x7FC00000) read as float16 is [0, NaN, 0, NaN, ...]: half of it is no
    poison at all."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return xp.full(nbytes, POISON_BYTE, dtype=np.uint8).view(dtype).reshape(shape)


def poison_pool(cp, nbytes: int, copies: int = 3) -> None:
    """Leave 0xFF-filled blocks of `nbytes` in CuPy's memory pool, so that the next
    allocations of that size start as NaN whatever their dtype."""
    blocks = [cp.full(max(int(nbytes), 1), POISON_BYTE, dtype=cp.uint8) for _ in range(copies)]
    del blocks


# ----------------------------------------------------------------------------------
# host synchronisation


@contextlib.contextmanager
def no_host_sync(cupyx, torch=None):
    """Within: any host synchronisation raises. torch's sync debug mode ("error") sees
    torch's own syncs only; CuPy's guard (`cupyx.allow_synchronize(False)`) sees CuPy's:
    `.get()`, `int(cupy_scalar)`, `asnumpy`. CuPy's guard holds for this thread only,
    and autograd runs a CUDA backward on a thread of its own: with torch, backward runs
    on the calling thread here (multithreaded autograd off), where the guard sees it.
    Pass the modules (cupyx, and torch where torch runs too); all is restored on exit."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            # Deprecated since CuPy 10 with no replacement, and still the only guard CuPy has.
            warnings.filterwarnings("ignore", message=r"cupyx\.allow_synchronize")
            stack.enter_context(cupyx.allow_synchronize(False))
        if torch is not None:
            stack.enter_context(torch.autograd.set_multithreading_enabled(False))
            prev = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            stack.callback(torch.cuda.set_sync_debug_mode, prev)
        yield


# ----------------------------------------------------------------------------------
# spawned ranks


def spawn_with_watchdog(mp, fn, args: tuple, nprocs: int, timeout_s: float) -> None:
    """torch.multiprocessing's spawn (`mp`), joined with a deadline: ranks still running
    after `timeout_s` (a collective that never completes waits forever) are killed, and
    TimeoutError says so. A rank's own exception propagates as with mp.spawn."""
    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
        if time.monotonic() < deadline:
            continue
        alive = [p for p in ctx.processes if p.is_alive()]
        for p in alive:
            p.kill()
        for p in alive:
            p.join(10)
        raise TimeoutError(f"{len(alive)} of {nprocs} spawned ranks still running after {timeout_s:.0f} s "
                           f"(a collective that never completed?): killed")
