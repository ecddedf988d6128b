"""`gpu-softmax check`: our CUDA results against the NumPy reference, on this machine.

Each case draws fresh random inputs, poisons the output buffer with 0xFF bytes (NaN
in every float format) where the op takes `out=` (and CuPy's memory pool, which the
other outputs come from, where it does not), runs the kernel, and compares with
the reference at the tolerances of gpu_softmax.testing (`compare`, which the
benchmark's own check reuses). Without a GPU the CUDA cases are reported as skipped
(with the reason) and the kernels are compile-checked with NVRTC instead, when NVRTC
is present (`--quick`: for one architecture).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import gpu_softmax as gs
from gpu_softmax import reference
from gpu_softmax._checks import result_dtype
from gpu_softmax.testing import (assert_close, backward_atol, ce_grad_atol, max_relative_error, poison_pool, poisoned,
                                 tolerance)

OPS = ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
       "cross_entropy", "cross_entropy_with_grad")
DTYPES = ("float32", "float16", "float64")
COLS = (1, 2, 31, 33, 1000, 1025, 4096, 32000, 50257, 131072, 262144)
QUICK_COLS = (1, 33, 1025, 50257, 262144)
ROWS = (1, 3, 64)
QUICK_ROWS = (3,)
CE_KW = dict(label_smoothing=0.1, reduction="sum")


@dataclass
class Result:
    case: str
    status: str  # "pass", "FAIL", "skip"
    detail: str = ""


def cases(quick: bool) -> list[tuple[str, str, int, int]]:
    out = []
    for op in OPS:
        for dtype in DTYPES:
            for cols in QUICK_COLS if quick else COLS:
                for rows in QUICK_ROWS if quick else ROWS:
                    if rows * cols > (1 << 22) or (op.startswith("cross_entropy") and cols < 2):
                        continue
                    out.append((op, dtype, rows, cols))
    return out


def _stat_dtype(dtype: str) -> str:
    """Per-row statistics (logsumexp, losses) come back in the accumulation dtype, except
    bfloat16 ones, which only the torch bridge computes: in the input's dtype, as torch does."""
    return "bfloat16" if dtype == "bfloat16" else result_dtype(dtype).name


def compare(op: str, dtype: str, args_np: tuple, got, ce_kw: dict | None = None) -> float:
    """Raise AssertionError unless `got` is the reference's result for `args_np`.

    `got` is NumPy: the op's output, or (loss, grad) for cross_entropy_with_grad.
    Tolerances are those of gpu_softmax.testing; the absolute floors are the size
    of the terms each result is a difference of: rtol * (1 + |logsumexp|) for a loss
    (lse - x_t), `ce_grad_atol` (rtol times each entry's own p and q) for a gradient
    entry p * sum(q) - q, `backward_atol` for the softmax backward ops. Returns the
    max relative error.
    """
    rtol = tolerance(dtype)[0]
    if op.startswith("cross_entropy"):
        x, t = args_np
        kw = dict(ce_kw or {}, validate=False)
        stat_rtol = tolerance(_stat_dtype(dtype))[0]
        lse = reference.logsumexp(x.astype(np.float64))
        loss_atol = stat_rtol * float(np.sum(1.0 + np.abs(lse)))
        if kw.get("reduction") == "none":
            loss_atol = stat_rtol * (1.0 + np.abs(lse))
        if op == "cross_entropy":
            want = reference.cross_entropy(x, t, **kw)
            assert_close(got, want, _stat_dtype(dtype), what=op, atol=loss_atol)
            return max_relative_error(got, want)
        want_loss, want = reference.cross_entropy_with_grad(x, t, **kw)
        loss, grad = got
        assert_close(loss, want_loss, _stat_dtype(dtype), what="loss", atol=loss_atol)
        grad_kw = {k: v for k, v in kw.items() if k != "validate"}
        old_floor = rtol * float(np.abs(want).max(initial=0.0))  # kept as a cap: nothing loosens
        assert_close(grad, want, dtype, what="grad", atol=ce_grad_atol(x, t, rtol, at_most=old_floor, **grad_kw))
        return max(max_relative_error(loss, want_loss), max_relative_error(grad, want))
    want = getattr(reference, op)(*args_np)
    if op.endswith("_backward"):
        assert_close(got, want, dtype, what=op, atol=backward_atol(op, *args_np, rtol=rtol))
    else:
        assert_close(got, want, _stat_dtype(dtype) if op == "logsumexp" else dtype, what=op)
    return max_relative_error(got, want)


def _inputs(op: str, dtype: str, rows: int, cols: int, rng) -> tuple:
    x = (rng.standard_normal((rows, cols)) * 4).astype(dtype)
    if op.endswith("_backward"):
        gy = rng.standard_normal((rows, cols)).astype(dtype)
        fwd = reference.softmax if op == "softmax_backward" else reference.log_softmax
        return gy, fwd(x)
    if op.startswith("cross_entropy"):
        t = rng.integers(0, cols, size=rows)
        t[rng.random(rows) < 0.1] = -100
        return x, t
    return (x,)


def _run_case(cp, op, dtype, rows, cols, rng) -> Result:
    name = f"{op} {dtype} {rows}x{cols}"
    args_np = _inputs(op, dtype, rows, cols, rng)
    args = tuple(cp.asarray(a) for a in args_np)
    try:
        if op in ("softmax", "log_softmax"):
            out = poisoned(cp, args[0].shape, args[0].dtype)
            got = getattr(gs, op)(args[0], out=out)
        else:
            poison_pool(cp, args[0].nbytes)  # the outputs come from the pool: unwritten elements read NaN
            got = getattr(gs, op)(*args, **(CE_KW if op.startswith("cross_entropy") else {}))
        got_np = tuple(cp.asnumpy(g) for g in got) if isinstance(got, tuple) else cp.asnumpy(got)
        err = compare(op, dtype, args_np, got_np, CE_KW)
        return Result(name, "pass", f"max rel err {err:.2e}")
    except NotImplementedError as exc:
        return Result(name, "skip", str(exc).split(";")[0])
    except AssertionError as exc:
        return Result(name, "FAIL", f"{name}: {str(exc)[:300]}")
    except Exception as exc:
        return Result(name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")


def _compile_results(archs: tuple[int, ...], progress: Callable[[str], None]) -> list[Result]:
    from gpu_softmax._cuda import compile_check as cc
    from gpu_softmax._cuda import loader

    out = []
    try:
        for arch in archs:
            for fam in ["<header>"] + loader.families():
                progress(f"compiling {fam if fam != '<header>' else 'common.cuh'} for sm_{arch} with NVRTC")
                rep = cc.check_family(fam, arch)
                probs = cc.problems(rep)
                out.append(Result(f"compile {rep.family} sm_{rep.arch} ({len(rep.entries)} entry points)",
                                  "FAIL" if probs else "pass", "; ".join(probs) or f"{rep.seconds:.1f} s, 0 spills"))
    except cc.NvrtcUnavailable as exc:
        return [Result("NVRTC compile of cuda_src", "skip", str(exc))]
    except (RuntimeError, FileNotFoundError) as exc:
        out.append(Result("NVRTC compile of cuda_src", "FAIL", str(exc)[:500]))
    return out


def _reference_results(rng) -> list[Result]:
    """What the CPU can check by itself: the reference's own identities."""
    out = []
    for dtype in DTYPES:
        x = (rng.standard_normal((8, 1025)) * 10).astype(dtype)
        y = reference.softmax(x).astype(np.float64)
        ls = reference.log_softmax(x).astype(np.float64)
        lse = reference.logsumexp(x).astype(np.float64)
        try:
            assert_close(y.sum(-1), np.ones(8), dtype, what="softmax rows sum to 1", rtol=1025 * 1e-3 if dtype == "float16" else None)
            assert_close(ls, x.astype(np.float64) - lse[:, None], dtype, what="log_softmax = x - logsumexp", atol=1e-2 if dtype == "float16" else 1e-5)
            out.append(Result(f"reference identities {dtype}", "pass"))
        except AssertionError as exc:
            out.append(Result(f"reference identities {dtype}", "FAIL", str(exc)[:300]))
    return out


def run(quick: bool = False, progress: Callable[[str], None] | None = None) -> list[Result]:
    """Every check; `progress(msg)` hears about each step (NVRTC compiles, op groups)."""
    from gpu_softmax._cuda import compile_check as cc
    from gpu_softmax._cuda.info import gpu_status

    say = progress or (lambda msg: None)
    rng = np.random.default_rng()
    results = _reference_results(rng)
    ok, reason = gpu_status()
    if not ok:
        # The full check compiles for every supported architecture; --quick for the newest only.
        results += _compile_results(cc.ARCHS[-1:] if quick else cc.ARCHS, say)
        results.append(Result("CUDA kernels against the reference", "skip", f"no GPU: {reason}"))
        return results
    import cupy as cp

    todo = cases(quick)
    for i, (op, dtype, rows, cols) in enumerate(todo):
        if i == 0 or todo[i - 1][:2] != (op, dtype):
            say(f"{op} {dtype} ({sum(c[:2] == (op, dtype) for c in todo)} shapes; case {i + 1} of {len(todo)})")
        results.append(_run_case(cp, op, dtype, rows, cols, rng))
    return results


def format_table(results: list[Result]) -> str:
    w = max(len(r.case) for r in results) if results else 10
    lines = [f"{'case':<{w}}  status  detail"]
    for r in results:
        lines.append(f"{r.case:<{w}}  {r.status:<6}  {r.detail}")
    return "\n".join(lines)
