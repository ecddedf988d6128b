"""`gpu-softmax check`: our CUDA results against the NumPy reference, on this machine.

Each case draws fresh random inputs, poisons the output buffer with NaN where the op
takes `out=`, runs the kernel, and compares with the reference at the tolerances of
gpu_softmax.testing. Without a GPU the CUDA cases are reported as skipped (with the
reason) and the kernels are compile-checked with NVRTC instead, when NVRTC is present.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import gpu_softmax as gs
from gpu_softmax import reference
from gpu_softmax._checks import result_dtype
from gpu_softmax.testing import assert_close, max_relative_error, tolerance

DTYPES = ("float32", "float16", "float64")
COLS = (1, 2, 31, 33, 1000, 1025, 4096, 32000, 50257, 131072, 262144)
QUICK_COLS = (1, 33, 1025, 50257, 262144)
ROWS = (1, 3, 64)


@dataclass
class Result:
    case: str
    status: str  # "pass", "FAIL", "skip"
    detail: str = ""


def _cases(quick: bool):
    cols_list = QUICK_COLS if quick else COLS
    for op in ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
               "cross_entropy", "cross_entropy_with_grad"):
        for dtype in DTYPES:
            for cols in cols_list:
                for rows in ROWS:
                    if rows * cols > (1 << 22):
                        continue
                    if op.startswith("cross_entropy") and cols < 2:
                        continue
                    yield op, dtype, rows, cols


def _run_case(cp, op, dtype, rows, cols, rng) -> Result:
    name = f"{op} {dtype} {rows}x{cols}"
    x_np = (rng.standard_normal((rows, cols)) * 4).astype(dtype)
    x = cp.asarray(x_np)
    try:
        if op in ("softmax", "log_softmax"):
            out = cp.full_like(x, cp.nan)
            got = getattr(gs, op)(x, out=out)
            want = getattr(reference, op)(x_np)
        elif op == "logsumexp":
            got, want = gs.logsumexp(x), reference.logsumexp(x_np)
        elif op.endswith("_backward"):
            gy_np = rng.standard_normal((rows, cols)).astype(dtype)
            fwd = reference.softmax if op == "softmax_backward" else reference.log_softmax
            y_np = fwd(x_np)
            got = getattr(gs, op)(cp.asarray(gy_np), cp.asarray(y_np))
            want = getattr(reference, op)(gy_np, y_np)
        else:
            t_np = rng.integers(0, cols, size=rows)
            t_np[rng.random(rows) < 0.1] = -100
            kw = dict(label_smoothing=0.1, reduction="sum")
            # A row's loss is lse - x_t and a gradient entry p - q: float32 results
            # carry an absolute error of rtol times |lse| (the loss) or times the
            # largest entry (the gradient), however small the difference itself.
            rtol = tolerance(result_dtype(dtype))[0]
            loss_atol = rtol * float(np.sum(1.0 + np.abs(reference.logsumexp(x_np))))
            if op == "cross_entropy":
                got = gs.cross_entropy(x, cp.asarray(t_np), **kw)
                want = reference.cross_entropy(x_np, t_np, **kw)
                atol = loss_atol
            else:
                loss, got = gs.cross_entropy_with_grad(x, cp.asarray(t_np), **kw)
                want_loss, want = reference.cross_entropy_with_grad(x_np, t_np, **kw)
                assert_close(cp.asnumpy(loss), want_loss, result_dtype(dtype), what="loss", atol=loss_atol)
                atol = tolerance(dtype)[0] * float(np.abs(want).max())
        got_np = cp.asnumpy(got)
        # Per-row statistics come back in the accumulation dtype, not the input's.
        cmp_dtype = result_dtype(dtype) if op in ("logsumexp", "cross_entropy") else dtype
        assert_close(got_np, want, cmp_dtype, what=name, atol=atol if op.startswith("cross_entropy") else None)
        return Result(name, "pass", f"max rel err {max_relative_error(got_np, want):.2e}")
    except NotImplementedError as exc:
        return Result(name, "skip", str(exc).split(";")[0])
    except AssertionError as exc:
        return Result(name, "FAIL", str(exc)[:300])
    except Exception as exc:
        return Result(name, "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")


def _compile_results() -> list[Result]:
    from gpu_softmax._cuda import compile_check as cc

    try:
        reports = cc.run_all()
    except cc.NvrtcUnavailable as exc:
        return [Result("NVRTC compile of cuda_src", "skip", str(exc))]
    except (RuntimeError, FileNotFoundError) as exc:
        return [Result("NVRTC compile of cuda_src", "FAIL", str(exc)[:500])]
    out = []
    for rep in reports:
        probs = cc.problems(rep)
        out.append(Result(f"compile {rep.family} sm_{rep.arch} ({len(rep.entries)} entry points)",
                          "FAIL" if probs else "pass", "; ".join(probs) or f"{rep.seconds:.1f} s, 0 spills"))
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


def run(quick: bool = False) -> list[Result]:
    from gpu_softmax._cuda.info import gpu_status

    rng = np.random.default_rng()
    results = _reference_results(rng)
    ok, reason = gpu_status()
    if not ok:
        results += _compile_results()
        results.append(Result("CUDA kernels against the reference", "skip", f"no GPU: {reason}"))
        return results
    import cupy as cp

    for op, dtype, rows, cols in _cases(quick):
        results.append(_run_case(cp, op, dtype, rows, cols, rng))
    return results


def format_table(results: list[Result]) -> str:
    w = max(len(r.case) for r in results) if results else 10
    lines = [f"{'case':<{w}}  status  detail"]
    for r in results:
        lines.append(f"{r.case:<{w}}  {r.status:<6}  {r.detail}")
    return "\n".join(lines)
