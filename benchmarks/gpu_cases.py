#!/usr/bin/env python3
"""GPU cases run by benchmarks/device_check.py outside pytest.

    python benchmarks/gpu_cases.py --regimes   # every kernel regime, small: for racecheck / synccheck
    python benchmarks/gpu_cases.py --huge      # one input past 2**31 elements (float16, 4 GiB)

--regimes: softmax, log_softmax, logsumexp and both backward ops in every regime the
planner picks on its own (warp, block, split, stream rows) and with the split and
stream regimes forced on short rows; cross entropy with hard, ignored and soft targets,
label smoothing, float32 and float16, the gradient and the loss alone. Sizes stay
small: compute-sanitizer's racecheck slows kernels down by orders of magnitude.

--huge: 16385 x 131072 float16 logits (2**31 + 131072 elements): logsumexp, cross
entropy per row, cross entropy with the gradient written in place, and softmax in
place, each checked on rows at both ends of the 2**31 boundary.

Every result is compared with the float64 reference (gpu_softmax.selfcheck.compare);
the last line says how many cases ran and how many mismatched (exit 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_softmax as gs  # noqa: E402
from gpu_softmax.selfcheck import compare  # noqa: E402

SOFTMAX_SHAPES = [(64, 1000), (5, 33), (8, 16000), (2, 262144)]  # the regimes the planner picks on its own
# Regimes forced on short rows (softmax.POLICY.force_regime; a value the planner does not know is a no-op).
FORCED = [("stream", [(3, 1), (5, 777), (4, 70000)]), ("split", [(2, 5000), (7, 16384), (1, 9000)]),
          ("stage", [(4, 3000), (8, 16000)])]
CE_SHAPES = [(64, 1000), (5, 33), (8, 16000), (2, 262144)]
HUGE = (16385, 131072)  # float16: 2**31 + 131072 elements


def regime_cases():
    """(name, thunk) pairs; each thunk returns the number of mismatches (0 or 1)."""
    from gpu_softmax._cuda import softmax as sm_mod

    rng = np.random.default_rng()
    out = []

    def softmax_family(rows, cols, dtype, force):
        def run():
            saved = sm_mod.POLICY
            sm_mod.POLICY = saved.replace(force_regime=force, split_min_cols=1 if force == "split" else
                                          saved.split_min_cols)
            try:
                return _softmax_family(rng, rows, cols, dtype)
            finally:
                sm_mod.POLICY = saved
        return run

    for dtype in ("float32", "float16"):
        for rows, cols in SOFTMAX_SHAPES:
            out.append((f"softmax family {dtype} {rows}x{cols}", softmax_family(rows, cols, dtype, None)))
        for force, shapes in FORCED:
            for rows, cols in shapes:
                out.append((f"softmax family {dtype} {rows}x{cols} forced {force}",
                            softmax_family(rows, cols, dtype, force)))
        for rows, cols in CE_SHAPES:
            for kind in ("hard", "soft"):
                out.append((f"cross entropy {kind} {dtype} {rows}x{cols}",
                            (lambda r=rows, c=cols, d=dtype, k=kind: _cross_entropy(rng, r, c, d, k))))
    return out


def _check(op, dtype, args_np, got, ce_kw=None) -> int:
    import cupy as cp

    got_np = tuple(cp.asnumpy(g) for g in got) if isinstance(got, tuple) else cp.asnumpy(got)
    try:
        compare(op, dtype, args_np, got_np, ce_kw)
        return 0
    except AssertionError as exc:
        print(f"MISMATCH {op} {dtype}: {str(exc)[:300]}", flush=True)
        return 1


def _softmax_family(rng, rows, cols, dtype) -> int:
    import cupy as cp

    x_np = (rng.standard_normal((rows, cols)) * 3).astype(dtype)
    x = cp.asarray(x_np)
    bad = 0
    for op in ("softmax", "log_softmax", "logsumexp"):
        bad += _check(op, dtype, (x_np,), getattr(gs, op)(x))
    gy_np = rng.standard_normal((rows, cols)).astype(dtype)
    for op, fwd in (("softmax_backward", gs.softmax), ("log_softmax_backward", gs.log_softmax)):
        y = fwd(x)
        bad += _check(op, dtype, (gy_np, cp.asnumpy(y)), getattr(gs, op)(cp.asarray(gy_np), y))
    return bad


def _cross_entropy(rng, rows, cols, dtype, kind) -> int:
    import cupy as cp

    from gpu_softmax import reference

    x_np = (rng.standard_normal((rows, cols)) * 3).astype(dtype)
    if kind == "soft":
        t_np = reference.softmax(rng.standard_normal((rows, cols))).astype(dtype)
    else:
        t_np = rng.integers(0, cols, size=rows)
        t_np[::3] = -100
    x, t = cp.asarray(x_np), cp.asarray(t_np)
    kw = {"reduction": "none", "label_smoothing": 0.1}
    bad = _check("cross_entropy", dtype, (x_np, t_np), gs.cross_entropy(x, t, **kw), kw)
    return bad + _check("cross_entropy_with_grad", dtype, (x_np, t_np), gs.cross_entropy_with_grad(x, t, **kw), kw)


def huge_cases():
    """Past 2**31 elements: each op on one 4 GiB float16 input, rows at both ends checked."""
    rows, cols = HUGE
    rng = np.random.default_rng()
    pick = np.array([0, 1, rows // 2, rows - 2, rows - 1])

    def fill():
        import cupy as cp

        x = cp.empty((rows, cols), dtype=cp.float16)
        step = max(1, (1 << 26) // cols)
        for r0 in range(0, rows, step):  # in slices: no 8 GiB float32 temporary
            r1 = min(rows, r0 + step)
            x[r0:r1] = (cp.random.standard_normal((r1 - r0, cols), dtype=cp.float32) * 2).astype(cp.float16)
        return x

    def ce(inplace):
        def run():
            import cupy as cp

            x = fill()
            t = cp.asarray(rng.integers(0, cols, size=rows))
            x_np, t_np = cp.asnumpy(x[cp.asarray(pick)]), cp.asnumpy(t[cp.asarray(pick)])
            kw = {"reduction": "none"}
            if inplace:
                loss, grad = gs.cross_entropy_with_grad(x, t, validate=False, inplace=True, **kw)
                assert grad is x, "inplace=True must return the logits' buffer"
                return _check("cross_entropy_with_grad", "float16", (x_np, t_np), (loss[cp.asarray(pick)], grad[cp.asarray(pick)]), kw)
            return _check("cross_entropy", "float16", (x_np, t_np), gs.cross_entropy(x, t, validate=False, **kw)[cp.asarray(pick)], kw)
        return run

    def lse():
        import cupy as cp

        x = fill()
        return _check("logsumexp", "float16", (cp.asnumpy(x[cp.asarray(pick)]),), gs.logsumexp(x)[cp.asarray(pick)])

    def softmax_in_place():
        import cupy as cp

        x = fill()
        x_np = cp.asnumpy(x[cp.asarray(pick)])
        y = gs.softmax(x, out=x)
        assert y is x
        return _check("softmax", "float16", (x_np,), x[cp.asarray(pick)])

    return [(f"logsumexp float16 {rows}x{cols}", lse), (f"cross_entropy none float16 {rows}x{cols}", ce(False)),
            (f"cross_entropy_with_grad in place float16 {rows}x{cols}", ce(True)),
            (f"softmax in place float16 {rows}x{cols}", softmax_in_place)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--regimes", action="store_true")
    g.add_argument("--huge", action="store_true")
    args = ap.parse_args(argv)
    cases = regime_cases() if args.regimes else huge_cases()
    bad = 0
    for name, run in cases:
        try:
            n = run()
        except Exception as exc:
            print(f"ERROR {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            n = 1
        bad += n
        print(f"{'ok  ' if not n else 'FAIL'} {name}", flush=True)
        import cupy as cp

        cp.get_default_memory_pool().free_all_blocks()
    print(f"gpu cases done: {len(cases)} cases, {bad} mismatched")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
