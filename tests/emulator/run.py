"""Run one suite of emulated-kernel checks against the NumPy reference.

    python tests/emulator/run.py softmax|cross_entropy SUITE [--seed N] [--build-dir DIR]

Prints `OK <family> <suite> <n> checks` and exits 0 when every check passes.
Started as a subprocess by tests/test_kernels_emulated.py (it fakes `cupy`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/, for the GPU tests' input helpers

import harness  # noqa: E402  (installs the fake cupy when set up)
from ce_cases import draw_options, options_alone  # noqa: E402
from launch_record import record_launches  # noqa: E402
from huge_max_cases import make_suite as huge_max_suite  # noqa: E402
from lse_cases import make_suite as lse_rows_suite  # noqa: E402
from runner_cli import parse_runner_args, run_suite  # noqa: E402


def softmax_suites(cp, SM, rng, emu):
    from gpu_softmax import _checks, reference
    from gpu_softmax.testing import assert_close

    import test_softmax_gpu as T  # the GPU tests' input helpers (float64 backward data)

    def fargs(x, axis=-1, out=None):
        a = _checks.check_softmax(x, axis, out)
        return dataclasses.replace(a, kind="cupy")

    def bargs(gy, y, axis=-1):
        return dataclasses.replace(_checks.check_backward(gy, y, axis), kind="cupy")

    def rand(shape, dt):
        return T._rand(rng, shape, dt)

    def check(x_np, axis=-1, what="", out_view=None, special=False):
        dt = x_np.dtype
        x = cp.asarray(x_np)
        for name in ("softmax", "log_softmax"):
            out = out_view if out_view is not None else cp.full(x.shape, np.nan, dt)
            got = getattr(SM, name)(fargs(x, axis, out))
            assert got is out
            assert_close(cp.asnumpy(got), getattr(reference, name)(x_np, axis=axis), dt, f"{name} {what}")
        lse = SM.logsumexp(fargs(x, axis))
        ref = reference.logsumexp(x_np, axis=axis)
        assert lse.dtype == ref.dtype and lse.shape == ref.shape
        assert_close(cp.asnumpy(lse), ref, ref.dtype, f"logsumexp {what}")
        if special:
            return 3
        for name, (gy, y) in T._backward_inputs(rng, x_np.shape, dt, axis=axis).items():
            got = getattr(SM, name)(bargs(cp.asarray(gy), cp.asarray(y), axis))
            assert_close(cp.asnumpy(got), getattr(reference, name)(gy, y, axis=axis), dt, f"{name} {what}")
        return 5

    def basic():
        n = 0
        for dt in (np.float32, np.float16, np.float64):
            for rows, cols in [(1, 1), (5, 1), (3, 2), (7, 5), (4, 31), (3, 33), (2, 127), (3, 1000), (2, 1025), (2, 3000)]:
                n += check(rand((rows, cols), dt), what=f"{rows}x{cols} {dt.__name__}")
                buf = rand((rows * cols + 1,), dt)  # rows starting one element past alignment
                n += check(buf[1:].reshape(rows, cols), what=f"unaligned {rows}x{cols} {dt.__name__}")
            for shape, axis in [((4, 300, 5), 1), ((7, 3, 2), 0), ((3, 5), -2)]:
                n += check(rand(shape, dt), axis=axis, what=f"{shape} axis {axis}")
        return n

    def special():
        n = 0
        for dt in (np.float32, np.float16, np.float64):
            for cols in (1, 2, 5, 64, 1000, 3000):
                x = rand((8, cols), dt)
                j = cols // 2
                x[1, j] = np.nan
                x[2, j] = np.inf
                x[3, :] = -np.inf
                x[4, ::2] = -np.inf
                x[5, :] = 3.0
                x[6, j] = np.copysign(np.nan, -1)  # a NaN with its sign bit set (the max's key order)
                x[7, :] = np.where(np.arange(cols) % 3 == 0, -0.0, 0.0)  # signed zeros tie at the max
                n += check(x, what=f"special {cols} {dt.__name__}", special=True)
        return n

    def log_backward_rows(cols):
        """float32 log_softmax_backward rows the float form may not take (issue 20: it
        falls back to double there): grad_x cancelling to nearly 0, exp(y) overflowing
        or flushed while the row sum is large, -inf log-probabilities with zero
        gradients, rows whose gradient sums to 0, a sum past 2^126, and NaN / inf."""
        y = np.log(reference.softmax(rand((11, cols), np.float64), axis=-1))
        g = rand((11, cols), np.float64)
        j = cols // 2
        e = np.exp(y[0, j])  # row 0: g_j = e_j * S, so grad_x_j is only its rounding
        g[0, j] = e * (g[0].sum() - g[0, j]) / (1 - e) if cols > 1 else 0.0
        y[1, ::3] = 88.5  # exp overflows float
        y[1, 1::3] = 100.0
        y[2] = -90.0 - 10 * rng.random(cols)  # exp below float's normals, times a large sum
        g[2] *= 1e30
        y[3, ::2] = -np.inf  # masked classes with zero gradient
        g[3, ::2] = 0.0
        g[4] = 0.0  # a zero gradient, some exp overflowing
        y[4, ::4] = 95.0
        g[5] = np.where(np.arange(cols) % 2 == 0, 1.0, -1.0) * (1 if cols % 2 == 0 else 0)  # sums to 0
        g[6, j] = np.nan
        g[7, j] = np.inf
        y[8, j] = np.nan
        y[9, j] = np.inf
        g[10] = 2e38 / cols  # 2 * sum leaves float's range; the products do not
        return g.astype(np.float32), y.astype(np.float32)

    def backward_special():
        base, n = SM.POLICY, 0
        cases = [(cols, None) for cols in (1, 5, 64, 1000, 3000, 40000)]
        cases += [(3000, force) for force in ("stage", "split", "stream")]
        for cols, force in cases:
            SM.POLICY = base.replace(force_regime=force)
            g, y = log_backward_rows(cols)
            for buf_off in (0, 1):  # both alignments
                gb = np.full(g.size + 1, np.nan, np.float32)
                yb = np.full(y.size + 1, np.nan, np.float32)
                gb[buf_off:buf_off + g.size], yb[buf_off:buf_off + y.size] = g.ravel(), y.ravel()
                gv = gb[buf_off:buf_off + g.size].reshape(g.shape)
                yv = yb[buf_off:buf_off + y.size].reshape(y.shape)
                got = SM.log_softmax_backward(bargs(cp.asarray(gv), cp.asarray(yv)))
                assert_close(cp.asnumpy(got), reference.log_softmax_backward(gv, yv), np.float32,
                             f"log_softmax_backward special {cols} {force or 'planned'} offset {buf_off}")
                n += 1
        SM.POLICY = base
        return n

    def large_max(shifts=(3e6, -1e7, 1e9, -2e9)):
        """Rows of large finite logits (Gaussian around `shift`), every forward regime:
        ExpShift's common factor 2^lo grows with |max| (issue 20's fast exp), and its
        fix must stay exact where a short series drifted (1e-5 off by 3e6)."""
        n = 0
        base = SM.POLICY
        for force in (None, "stage", "split", "stream"):
            SM.POLICY = base.replace(force_regime=force, split_min_cols=1, stream_min_chunk=1000)
            for shift in shifts:
                for rows, cols in [(4, 1000), (3, 3 * 8192 + 5)]:
                    x = (rand((rows, cols), np.float64) + shift).astype(np.float32)
                    n += check(x, what=f"{force} max {shift:g} {rows}x{cols}", special=True)
        SM.POLICY = base
        return n

    def layouts():
        n = 0
        for dt in (np.float32, np.float16):
            x_np = rand((5, 700), dt)
            x = cp.asarray(x_np)
            assert SM.softmax(fargs(x, -1, x)) is x  # in place
            assert_close(cp.asnumpy(x), reference.softmax(x_np), dt, "in place")
            x_np = rand((5, 700, 3), dt)
            x = cp.asarray(x_np)
            assert SM.log_softmax(fargs(x, 1, x)) is x
            assert_close(cp.asnumpy(x), reference.log_softmax(x_np, axis=1), dt, "in place axis 1")
            xb = rand((6, 3000), dt)
            ob = cp.full((6, 3000), np.nan, dt)
            o = ob[:, 1::2]
            assert SM.softmax(fargs(cp.asarray(xb)[:, ::2], -1, o)) is o
            assert_close(cp.asnumpy(o), reference.softmax(xb[:, ::2]), dt, "strided out")
            assert np.isnan(cp.asnumpy(ob[:, ::2]).astype(np.float32)).all(), "write outside out"
            buf_np = rand((450,), dt)
            buf = cp.asarray(buf_np)
            SM.softmax(fargs(buf[:400].reshape(4, 100), -1, buf[50:450].reshape(4, 100)))
            assert_close(cp.asnumpy(buf[50:450]).reshape(4, 100), reference.softmax(buf_np[:400].reshape(4, 100)), dt, "overlap")
            n += 4
        for shape, axis in [((0, 5), -1), ((3, 0), -1), ((2, 0, 4), 1)]:
            z = cp.zeros(shape, np.float32)
            assert SM.softmax(fargs(z, axis)).shape == shape
            lse = SM.logsumexp(fargs(z, axis))
            assert_close(cp.asnumpy(lse), reference.logsumexp(np.zeros(shape, np.float32), axis=axis), np.float32, "empty")
            n += 1
        # bfloat16 words through the raw entry
        bits = (rand((7, 1000), np.float32).view(np.uint32) >> 16).astype(np.uint16)
        xf = (bits.astype(np.uint32) << 16).view(np.float32)
        out = cp.full((7, 1000), 0x7FC0, np.uint16)
        SM.forward_raw(cp.asarray(bits), -1, "softmax", out, storage="bfloat16")
        got = (cp.asnumpy(out).astype(np.uint32) << 16).view(np.float32)
        assert_close(got, reference.softmax(xf), "bfloat16", "bf16 softmax")
        return n + 1

    def long_rows():
        n = 0
        base = SM.POLICY
        for force in ("split", "stream"):
            SM.POLICY = base.replace(force_regime=force, split_min_cols=1, stream_min_chunk=1000)
            for dt in (np.float32, np.float16, np.float64):
                for rows, cols in [(1, 5003), (2, 4099), (3, 9000)]:
                    n += check(rand((rows, cols), dt), what=f"{force} {rows}x{cols} {dt.__name__}")
                x = rand((6, 4500), dt)
                x[1, 7] = np.nan
                x[2, 9] = np.inf
                x[3, :] = -np.inf
                n += check(x, what=f"{force} special", special=True)
        # Chunks of several whole stream tiles (512 threads x 16 values): the forward
        # read's shared-memory pipe, one block per row (k = 1) and two, both alignments.
        for min_chunk in (1 << 30, 2 * 8192):
            SM.POLICY = base.replace(force_regime="stream", stream_min_chunk=min_chunk)
            for dt in (np.float32, np.float16):
                for rows, cols in [(4, 3 * 8192 + 37), (3, 4 * 8192)]:
                    n += check(rand((rows, cols), dt), what=f"stream tiles {min_chunk} {rows}x{cols} {dt.__name__}")
                    buf = rand((rows * cols + 1,), dt)
                    n += check(buf[1:].reshape(rows, cols), what=f"stream tiles unaligned {rows}x{cols} {dt.__name__}")
        SM.POLICY = base
        return n

    def bf16_check(bits, what, backward=True):
        """softmax / log_softmax / logsumexp and (with `backward`) both backward passes on bfloat16 words."""
        xf = (bits.astype(np.uint32) << 16).view(np.float32)
        for name in ("softmax", "log_softmax"):
            out = cp.full(bits.shape, 0x7FC0, np.uint16)
            got = SM.forward_raw(cp.asarray(bits), -1, name, out, storage="bfloat16")
            assert got is out
            assert_close((cp.asnumpy(out).astype(np.uint32) << 16).view(np.float32),
                         getattr(reference, name)(xf), "bfloat16", f"bf16 {name} {what}")
        lse = SM.forward_raw(cp.asarray(bits), -1, "logsumexp", storage="bfloat16")
        assert_close(cp.asnumpy(lse), reference.logsumexp(xf), np.float32, f"bf16 logsumexp {what}")
        if not backward or not np.isfinite(xf).all():
            return 3
        y = reference.softmax(xf.astype(np.float64)).astype(np.float32)
        yb = (y.view(np.uint32) >> 16).astype(np.uint16)
        gb = (rand(bits.shape, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        for name, yin in (("softmax_backward", yb), ("log_softmax_backward", None)):
            if yin is None:
                ly = reference.log_softmax(xf.astype(np.float64)).astype(np.float32)
                yin = (ly.view(np.uint32) >> 16).astype(np.uint16)
            got = SM.backward_raw(cp.asarray(gb), cp.asarray(yin), -1, name, storage="bfloat16")
            f = lambda b: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # noqa: E731
            assert_close(f(cp.asnumpy(got)), getattr(reference, name)(f(gb), f(yin)), "bfloat16", f"bf16 {name} {what}")
        return 5

    plans = []
    plan = SM.plan
    forced = []  # a Plan here replaces the planner's choice (the variants suite)

    def recording_plan(*a):
        p = forced[0] if forced else plan(*a)
        plans.append(p)
        return p

    SM.plan = recording_plan

    def regimes():
        """Every regime (row in registers, row staged in shared memory, split, stream)
        at sizes that reach it on the emulated 3-SM GPU: both alignments, a tail,
        NaN / inf rows, float16, bfloat16, float32, float64."""
        n = 0
        base = SM.POLICY
        for force in (None, "stage", "split", "stream"):
            SM.POLICY = base.replace(force_regime=force, split_min_cols=1, stream_min_chunk=1000)
            for dt in (np.float32, np.float16, np.float64):
                for rows, cols in [(5, 1031), (4, 2053), (2, 4103)]:
                    x = rand((rows, cols), dt)
                    n += check(x, what=f"{force} {rows}x{cols} {dt.__name__}")
                    buf = rand((rows * cols + 1,), dt)
                    n += check(buf[1:].reshape(rows, cols), what=f"{force} unaligned {rows}x{cols} {dt.__name__}")
                x_np = rand((3, 2053), dt)  # in place: every element read and written by one thread
                x = cp.asarray(x_np)
                assert SM.log_softmax(fargs(x, -1, x)) is x
                assert_close(cp.asnumpy(x), reference.log_softmax(x_np), dt, f"{force} in place {dt.__name__}")
                n += 1
                x = rand((8, 3001), dt)
                x[1, 7] = np.nan
                x[2, 9] = np.inf
                x[3, :] = -np.inf
                x[4, ::2] = -np.inf
                x[5, :] = 2.0
                x[6, 11] = np.copysign(np.nan, -1)
                x[7, :] = np.where(np.arange(3001) % 3 == 0, -0.0, 0.0)
                n += check(x, what=f"{force} special {dt.__name__}", special=True)
            bits = (rand((5, 2055), np.float32).view(np.uint32) >> 16).astype(np.uint16)
            n += bf16_check(bits, f"{force}")
            flat = (rand((5 * 2055 + 1,), np.float32).view(np.uint32) >> 16).astype(np.uint16)
            n += bf16_check(flat[1:].reshape(5, 2055), f"{force} unaligned")
            # bfloat16 special rows through the paired 16-bit max: NaN either sign, +inf, all -inf, signed zeros
            sb = bits.copy()
            sb[0, 3] = 0xFFC1
            sb[1, 5] = 0x7F80
            sb[2, :] = 0xFF80
            sb[3, :] = np.where(np.arange(2055) % 2 == 0, 0x8000, 0x0000)
            sb[4, 2054] = 0x7FC0
            n += bf16_check(sb, f"{force} special")
        SM.POLICY = base
        # split kernels leave their cached workspace's counters at zero for the next call
        workspaces = SM.device.current().workspaces
        assert workspaces and all(not cnt.any() for _, cnt in workspaces.values())
        # every regime and variant of a regime was reached
        seen = {(p.regime, p.ss > 0, p.k > 1, p.smem > 0) for p in plans}
        for want in [("row", False, False, False), ("row", True, False, True), ("split", False, True, False),
                     ("stream", False, False, True), ("stream", False, True, False)]:
            assert want in seen, (want, seen)
        return n

    def variants():
        """Every compiled entry point, launched with a hand-made plan on an unaligned
        row that uses every slot kind (full, partial, past the end; staged ones for
        the row template), against the reference."""
        n = 0
        threads = 64
        for storage, direction, template, nv in sorted(SM._variants()):
            vec = SM.VEC[storage]
            name = SM.kernel_name(direction, template, nv, storage)
            arrays = 2 if direction == "bwd" else 1
            rows = 3
            if template == "warp":
                cols = 32 * nv * vec - vec + 1  # + its worst misalignment (vec - 1): exactly full
                p = SM.Plan("warp", name, 2, SM.WARP_BLOCK_THREADS, width=32)
            elif template == "row":
                cols = threads * (nv + 2) * vec - vec - 1
                p = SM.Plan("row", name, 2, threads, chunk=cols, ss=3, smem=3 * threads * 16 * arrays)
            elif template == "split":
                chunk = threads * nv * vec - vec
                cols = 2 * chunk - 3
                p = SM.Plan("split", name, 2 * 2, threads, k=2, chunk=chunk, groups=2)
            elif template == "stream":
                cols = threads * nv * vec * 3 + 5
                p = SM.Plan("stream", name, 2, threads, chunk=cols)
            else:  # logsumexp block
                cols = threads * nv * vec * 3 + 5
                p = SM.Plan("stream", name, 2, threads, chunk=cols)
            forced[:] = [p]
            dt = np.uint16 if storage == "bfloat16" else np.dtype(storage)
            if storage == "bfloat16":
                bits = (rand((rows * cols + 1,), np.float32).view(np.uint32) >> 16).astype(np.uint16)
                xf = (bits.astype(np.uint32) << 16).view(np.float32)[1:].reshape(rows, cols)
                x = cp.asarray(bits)[1:].reshape(rows, cols)
                if direction == "lse":
                    got = SM.forward_raw(x, -1, "logsumexp", storage="bfloat16")
                    assert_close(cp.asnumpy(got), reference.logsumexp(xf), np.float32, name)
                elif direction == "fwd":
                    out = cp.full((rows, cols), 0x7FC0, np.uint16)
                    SM.forward_raw(x, -1, "softmax", out, storage="bfloat16")
                    f = (cp.asnumpy(out).astype(np.uint32) << 16).view(np.float32)
                    assert_close(f, reference.softmax(xf), "bfloat16", name)
                else:
                    gb = (rand((rows, cols), np.float32).view(np.uint32) >> 16).astype(np.uint16)
                    y = reference.softmax(xf.astype(np.float64)).astype(np.float32)
                    yb = (y.view(np.uint32) >> 16).astype(np.uint16)
                    got = SM.backward_raw(cp.asarray(gb), cp.asarray(yb), -1, "softmax_backward", storage="bfloat16")
                    f = lambda b: (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)  # noqa: E731
                    assert_close(f(cp.asnumpy(got)), reference.softmax_backward(f(gb), f(yb)), "bfloat16", name)
            else:
                buf = rand((rows * cols + 1,), dt)
                x_np = buf[1:].reshape(rows, cols)
                x = cp.asarray(buf)[1:].reshape(rows, cols)
                if direction == "lse":
                    got = SM.logsumexp(fargs(x))
                    assert_close(cp.asnumpy(got), reference.logsumexp(x_np), reference.logsumexp(x_np).dtype, name)
                elif direction == "fwd":
                    for op in ("softmax", "log_softmax"):
                        out = cp.full((rows, cols), np.nan, dt)
                        getattr(SM, op)(fargs(x, -1, out))
                        assert_close(cp.asnumpy(out), getattr(reference, op)(x_np), dt, f"{op} {name}")
                else:
                    for op, (gy, y) in T._backward_inputs(rng, (rows, cols), dt).items():
                        got = getattr(SM, op)(bargs(cp.asarray(gy), cp.asarray(y)))
                        assert_close(cp.asnumpy(got), getattr(reference, op)(gy, y), dt, f"{op} {name}")
            assert plans[-1] is p
            n += 1
        forced.clear()
        assert {name for name, _, _ in emu.launches} >= set(SM.ENTRY_POINTS)
        return n

    return {"basic": basic, "special": special, "backward_special": backward_special,
            "large_max": large_max, "huge_max": huge_max_suite(SM, check, bf16_check, rng), "layouts": layouts,
            "long_rows": long_rows, "regimes": regimes, "variants": variants,
            "logsumexp_rows": lse_rows_suite(cp, SM, fargs, forced, rng)}


def cross_entropy_suites(cp, CE, rng):
    from gpu_softmax import _checks, reference
    from gpu_softmax._checks import result_dtype
    from gpu_softmax.testing import assert_close, ce_grad_atol, tolerance

    def run(x, t, want_grad=True, return_logsumexp=True, storage=None, **kw):
        go = kw.pop("grad_output", 1.0) if want_grad else None
        a = _checks.check_cross_entropy(x, t, grad_output=go, **kw)
        a = dataclasses.replace(a, kind="cupy")
        if want_grad:
            return CE.cross_entropy_with_grad(a, return_logsumexp, storage=storage)
        return CE.cross_entropy(a, return_logsumexp, storage=storage)

    def check(x_np, t_np, what, **kw):
        dt = x_np.dtype
        kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        loss, grad, lse = run(cp.asarray(x_np), cp.asarray(t_np), validate=False, **kwd)
        wl, wg, wlse = reference.cross_entropy_with_grad(x_np, t_np, return_logsumexp=True, validate=False, **kw)
        rdt = result_dtype(dt)
        lrtol = tolerance(rdt)[0]
        # loss = lse - x_t: a float32 result is off by about rtol * |lse| whatever its size
        lscale = lrtol * (1 + (float(np.nanmax(np.abs(wlse))) if np.isfinite(wlse).any() else 1.0))
        assert_close(cp.asnumpy(loss), wl, rdt, f"loss {what}", atol=lscale)
        assert_close(cp.asnumpy(lse), wlse, rdt, f"lse {what}", atol=lscale)
        # each entry's floor from its own terms (p, q, z-loss, cap), capped at the old
        # floor from the array's largest entry (which lay above most entries of a long row)
        gscale = tolerance(dt)[0] * (float(np.nanmax(np.abs(wg))) if np.isfinite(wg).any() else 1.0)
        gfloor = ce_grad_atol(x_np, t_np, tolerance(dt)[0], at_most=gscale, **kw)
        assert_close(cp.asnumpy(grad), wg, dt, f"grad {what}", atol=gfloor)
        kw_loss = {k: v for k, v in kwd.items() if k != "grad_output"}
        lo = run(cp.asarray(x_np), cp.asarray(t_np), want_grad=False, return_logsumexp=False, validate=False, **kw_loss)
        wlo = reference.cross_entropy(x_np, t_np, validate=False, **{k: v for k, v in kw.items() if k != "grad_output"})
        assert_close(cp.asnumpy(lo), wlo, rdt, f"loss only {what}", atol=lscale)
        xi = cp.asarray(x_np)
        _, gi = run(xi, cp.asarray(t_np), return_logsumexp=False, validate=False, inplace=True, **kwd)
        assert gi is xi
        np.testing.assert_array_equal(cp.asnumpy(gi), cp.asnumpy(grad), err_msg=f"in place {what}")
        return 4

    OPTS = [*options_alone(),
            {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2, "logit_softcap": 4.0},
            {"weight": "w", "label_smoothing": 0.05, "reduction": "none", "grad_output": "rows"}]

    def options_for(o, rows, cols, dt):
        return draw_options(o, rows, cols, dt, rng, result_dtype(dt))

    def hard():
        n = 0
        for dt in (np.float32, np.float16, np.float64):
            for cols, rows in [(2, 5), (33, 4), (600, 2), (20000, 2), (40000, 2)]:
                for o in OPTS:
                    kw = options_for(o, rows, cols, dt)
                    x = (rng.standard_normal((rows, cols)) * 3).astype(dt)
                    t = rng.integers(0, cols, rows)
                    t[rng.random(rows) < 0.2] = kw.get("ignore_index", -100)
                    n += check(x, t, f"{dt.__name__} {rows}x{cols} {o}", **kw)
        return n

    def soft():
        n = 0
        for dt in (np.float32, np.float16, np.float64):
            for cols, rows in [(2, 3), (33, 2), (3000, 2), (40000, 1)]:
                x = (rng.standard_normal((rows, cols)) * 3).astype(dt)
                tt = rng.random((rows, cols))
                tt = (tt / tt.sum(-1, keepdims=True)).astype(dt)
                for o in ({}, {"label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none"},
                          {"weight": "w", "logit_softcap": 5.0}):
                    n += check(x, tt, f"soft {dt.__name__} {rows}x{cols} {o}", **options_for(o, rows, cols, dt))
        return n

    def special():
        n = 0
        for cols in (5, 400, 20000, 40000):
            x = rng.standard_normal((5, cols)).astype(np.float32)
            x[0, 1] = np.nan
            x[1, 2] = np.inf
            x[2, :] = -np.inf
            x[3, 0] = -np.inf
            t = np.array([0, 1, 2, 3, -100])
            for o in ({"reduction": "none"}, {"reduction": "none", "label_smoothing": 0.1},
                      {"reduction": "none", "logit_softcap": 3.0}):
                n += check(x, t, f"special {cols} {o}", **o)
            # out-of-range targets with validate=False: NaN rows, no bad access
            x = rng.standard_normal((6, cols)).astype(np.float32)
            t = np.array([0, cols, -5, 1, -100, 2**40])
            loss, grad = run(cp.asarray(x), cp.asarray(t), return_logsumexp=False, validate=False, reduction="none")
            loss, grad = cp.asnumpy(loss), cp.asnumpy(grad)
            assert np.isnan(loss[[1, 2, 5]]).all() and np.isfinite(loss[[0, 3]]).all() and loss[4] == 0.0, loss
            assert np.isnan(grad[[1, 2, 5]]).all() and np.isfinite(grad[[0, 3, 4]]).all()
            try:
                run(cp.asarray(x), cp.asarray(t), want_grad=False, return_logsumexp=False)
            except ValueError as exc:
                assert "outside" in str(exc)
            else:
                raise AssertionError("validate=True let an out-of-range target through")
            n += 2
        # A dominating target: the loss is log(1 + tiny) and must keep its relative
        # accuracy (no absolute floor here).
        for cols in (7, 3000, 40000):
            x = (rng.standard_normal((3, cols)) - 20.0).astype(np.float32)
            x[:, 1] = rng.uniform(-1.0, 1.0, 3)
            t = np.ones(3, dtype=np.int64)
            loss = run(cp.asarray(x), cp.asarray(t), want_grad=False, return_logsumexp=False, reduction="none")
            want = reference.cross_entropy(x, t, reduction="none")
            assert_close(cp.asnumpy(loss), want, "float32", f"dominant target {cols}")
            n += 1
        x = rng.standard_normal((3, 50)).astype(np.float32)
        loss, grad = run(cp.asarray(x), cp.asarray(np.full(3, -100)), return_logsumexp=False)
        assert np.isnan(float(loss)) and float(np.abs(cp.asnumpy(grad)).max()) == 0.0
        return n + 1

    def layouts():
        n = 0
        for dt in (np.float32, np.float16):
            buf = rng.standard_normal(7 * 1001 + 1).astype(dt)
            n += check(buf[1:].reshape(7, 1001), rng.integers(0, 1001, 7), f"unaligned {dt.__name__}")
            x3 = rng.standard_normal((3, 300, 5)).astype(dt)
            n += check(x3, rng.integers(0, 300, (3, 5)).astype(np.int32), f"axis 1 {dt.__name__}", axis=1)
        bits = (rng.standard_normal((4, 3000)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        xf = (bits.astype(np.uint32) << 16).view(np.float32)
        t = rng.integers(0, 3000, 4)
        a = dataclasses.replace(_checks.check_cross_entropy(xf, t), kind="cupy", logits=cp.asarray(bits))
        loss, grad = CE.cross_entropy_with_grad(a, False, storage="bfloat16")
        wl, wg = reference.cross_entropy_with_grad(xf, t)
        g = (cp.asnumpy(grad).astype(np.uint32) << 16).view(np.float32)
        assert_close(g, wg, "bfloat16", "bf16 grad",
                     atol=ce_grad_atol(xf, t, 8e-3, dtype="bfloat16", at_most=8e-3 * np.abs(wg).max()))
        assert_close(cp.asnumpy(loss), wl, "float32", "bf16 loss", atol=1e-5)
        n += 1
        # The loss in the logits' own storage (what the torch bridge asks for): the
        # finish kernel sums and converts; past FINISH_MAX_ROWS CuPy sums first.
        x16 = (rng.standard_normal((9, 700)) * 3).astype(np.float16)
        t9 = rng.integers(0, 700, 9)
        t9[2] = -100
        for max_rows in (CE.FINISH_MAX_ROWS, 4):
            CE.FINISH_MAX_ROWS, saved = max_rows, CE.FINISH_MAX_ROWS
            try:
                for red in ("mean", "sum", "none"):
                    want = reference.cross_entropy(x16.astype(np.float32), t9, reduction=red)
                    a = dataclasses.replace(_checks.check_cross_entropy(x16, t9, reduction=red), kind="cupy",
                                            logits=cp.asarray(x16))
                    got = CE.cross_entropy(a, loss_storage="float16")
                    assert got.dtype == np.float16 and got.shape == want.shape, (got.dtype, got.shape)
                    assert_close(cp.asnumpy(got).astype(np.float32), want, "float16", f"f16 loss {red}")
                    a = dataclasses.replace(_checks.check_cross_entropy(xf, t, reduction=red), kind="cupy",
                                            logits=cp.asarray(bits))
                    got, _ = CE.cross_entropy_with_grad(a, storage="bfloat16", loss_storage="bfloat16")
                    want = reference.cross_entropy(xf, t, reduction=red)
                    assert got.dtype == np.uint16 and got.shape == want.shape
                    gotf = (cp.asnumpy(got).astype(np.uint32) << 16).view(np.float32)
                    assert_close(gotf, want, "bfloat16", f"bf16 loss {red}")
                    n += 2
            finally:
                CE.FINISH_MAX_ROWS = saved
        return n

    def overflow():
        """Label smoothing at huge magnitudes (issue #15 item 1), every regime, hard and soft.

        The smoothing term must come from non-negative pieces sum w ((m - x) + l):
        forming lse * W - sum w x overflows (1e36 * C) or cancels (offset rows)."""
        n = 0
        failures = []
        to_bf16 = lambda a: (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731
        from_bf16 = lambda b: (b.astype(np.uint32) << 16).view(np.float32)  # noqa: E731

        def one(x, t, storage, what, **kw):
            try:
                return one_checked(x, t, storage, what, **kw)
            except AssertionError as exc:  # keep going: report every regime that fails
                failures.append(str(exc)[:300])
                return 0

        def one_checked(x, t, storage, what, **kw):
            # strict relative bounds: no absolute floor scaled by |lse| here
            xs = cp.asarray(to_bf16(x)) if storage == "bfloat16" else cp.asarray(x)
            xr = from_bf16(to_bf16(x)) if storage == "bfloat16" else x
            a = dataclasses.replace(_checks.check_cross_entropy(xr, t, reduction="none", validate=False, **kw),
                                    kind="cupy", logits=xs, target=cp.asarray(t),
                                    weight=cp.asarray(kw["weight"]) if kw.get("weight") is not None else None)
            loss, grad = CE.cross_entropy_with_grad(a, False, storage=storage)
            lo = CE.cross_entropy(a, False, storage=storage)
            wl, wg = reference.cross_entropy_with_grad(xr, t, reduction="none", validate=False, **kw)
            rdt = result_dtype(xr.dtype)
            rtol = {"float16": 1e-5, "bfloat16": 1e-5}.get(storage, 2e-6 if rdt == np.float32 else 1e-12)
            for got, label in ((loss, "loss"), (lo, "loss only")):
                assert_close(cp.asnumpy(got), wl, rdt, f"{label} {what}", rtol=rtol, atol=0.0)
            g = from_bf16(cp.asnumpy(grad)) if storage == "bfloat16" else cp.asnumpy(grad)
            gdt = storage or xr.dtype
            assert_close(g, wg, gdt, f"grad {what}",
                         atol=ce_grad_atol(xr, t, tolerance(gdt)[0], dtype=gdt, reduction="none",
                                           at_most=tolerance(gdt)[0] * float(np.abs(wg).max()), **kw))
            return 2

        # cols per regime: warp, block, stream (the held regimes' limits in _cuda/cross_entropy.py)
        regimes = {np.float32: (5, 300, 4099, 40000), np.float64: (5, 200, 4099, 40000),
                   np.float16: (300, 4099, 40000)}
        for storage, dt, big in (("float32", np.float32, 1e36), ("float64", np.float64, 1e305),
                                 ("bfloat16", np.float32, 1e36), ("float16", np.float16, 6e4)):
            for cols in regimes[dt if storage != "bfloat16" else np.float16]:
                rows = 3
                t = rng.integers(0, cols, rows)
                w = rng.uniform(0.1, 2, cols).astype(dt)
                x = np.full((rows, cols), big, dt)
                for kw in ({"label_smoothing": 0.1}, {"label_smoothing": 0.3, "weight": w}):
                    n += one(x, t, "bfloat16" if storage == "bfloat16" else None,
                             f"all {big} {storage} {cols} hard {kw.keys()}", **kw)
                tt = rng.random((rows, cols))
                tt = (tt / tt.sum(-1, keepdims=True)).astype(dt)
                n += one(x, tt, "bfloat16" if storage == "bfloat16" else None,
                         f"all {big} {storage} {cols} soft", label_smoothing=0.1)
            if storage == "float32":
                # three huge logits and a zero: D = 1e38 fits, lse * W does not
                x = np.zeros((2, 4), dt)
                x[:, :3] = 1e38
                n += one(x, np.array([0, 3]), None, "1e38 x3", label_smoothing=0.1)
                # rows offset by 1e4..1e5: lse * W - sum w x cancels to ~1e-5 relative
                for cols in regimes[dt]:
                    x = (rng.uniform(1e4, 1e5, (3, 1)) + rng.standard_normal((3, cols)) * 3).astype(dt)
                    n += one(x, rng.integers(0, cols, 3), None, f"offset {cols}", label_smoothing=0.1)
                    tt = rng.random((3, cols)).astype(dt)
                    tt /= tt.sum(-1, keepdims=True)
                    n += one(x, tt, None, f"offset soft {cols}", label_smoothing=0.1)
        if failures:
            raise AssertionError(f"{len(failures)} overflow case(s) failed:\n" + "\n".join(failures))
        return n

    def split():
        # Rows split over k co-resident blocks (chunks capped so short rows reach
        # the regime): both alignments, tails, every option, invalid and ignored
        # targets, 16-bit storage, in place; soft labels must keep streaming.
        n = 0
        seen, launch_fn = record_launches(CE)
        base = CE.POLICY
        CE.POLICY = base.replace(ce_split_max_chunk=512)
        desc = CE.device.current().desc
        try:
            for dt in (np.float32, np.float16, np.float64):
                for cols, rows in [(1025, 3), (1031, 5)]:
                    for o in OPTS:
                        kw = options_for(o, rows, cols, dt)
                        x = (rng.standard_normal((rows, cols)) * 3).astype(dt)
                        t = rng.integers(0, cols, rows)
                        t[rng.random(rows) < 0.2] = kw.get("ignore_index", -100)
                        t[0] = cols - 1  # a target in the last block's tail
                        n += check(x, t, f"split {dt.__name__} {rows}x{cols} {o}", **kw)
                buf = (rng.standard_normal(5 * 1100 + 3) * 3).astype(dt)
                for off in (1, 3):  # rows starting past a 16-byte boundary
                    x = buf[off:off + 5 * 1100].reshape(5, 1100)
                    n += check(x, rng.integers(0, 1100, 5), f"split unaligned+{off} {dt.__name__}",
                               label_smoothing=0.1, z_loss=1e-3)
            # Several row groups in flight (6 resident blocks, k = 2): rows 0..2 start
            # together, then each group takes its next row (the rounds' parity buffers).
            harness.use_device(harness.emulated_device(max_blocks_per_sm=2))
            try:
                for dt in (np.float32, np.float16):
                    x = (rng.standard_normal((7, 900)) * 3).astype(dt)
                    t = rng.integers(0, 900, 7)
                    t[3] = -100
                    n += check(x, t, f"split groups {dt.__name__}", label_smoothing=0.1)
            finally:
                harness.use_device(desc)
            x = rng.standard_normal((6, 1300)).astype(np.float32)
            x[0, 700] = np.nan
            x[1, 3] = np.inf
            x[2, :] = -np.inf
            x[3, 1200] = -np.inf
            t = np.array([0, 1, 2, 3, -100, 1299])
            for o in ({"reduction": "none"}, {"reduction": "none", "label_smoothing": 0.1}):
                n += check(x, t, f"split special {o}", **o)
            t = np.array([0, 1300, -5, 1, -100, 2**40])
            loss, grad = run(cp.asarray(x), cp.asarray(t), return_logsumexp=False, validate=False, reduction="none")
            loss, grad = cp.asnumpy(loss), cp.asnumpy(grad)
            assert np.isnan(loss[[1, 2, 5]]).all() and loss[4] == 0.0, loss
            assert np.isnan(grad[[1, 2, 5]]).all() and (grad[4] == 0).all()
            n += 1
            bits = (rng.standard_normal((3, 1500)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
            xf = (bits.astype(np.uint32) << 16).view(np.float32)
            t = rng.integers(0, 1500, 3)
            a = dataclasses.replace(_checks.check_cross_entropy(xf, t, label_smoothing=0.1), kind="cupy",
                                    logits=cp.asarray(bits))
            loss, grad = CE.cross_entropy_with_grad(a, False, storage="bfloat16")
            wl, wg = reference.cross_entropy_with_grad(xf, t, label_smoothing=0.1)
            g = (cp.asnumpy(grad).astype(np.uint32) << 16).view(np.float32)
            assert_close(g, wg, "bfloat16", "split bf16 grad",
                         atol=ce_grad_atol(xf, t, 8e-3, dtype="bfloat16", label_smoothing=0.1,
                                           at_most=8e-3 * np.abs(wg).max()))
            assert_close(cp.asnumpy(loss), wl, "float32", "split bf16 loss", atol=1e-5)
            n += 1
            tt = rng.random((2, 1500))
            n += check(rng.standard_normal((2, 1500)).astype(np.float32),
                       (tt / tt.sum(-1, keepdims=True)).astype(np.float32), "soft stays stream")
        finally:
            CE.POLICY = base
            CE._launch = launch_fn
            harness.use_device(desc)
        # the split kernels leave their cached workspace's counters at zero
        workspaces = CE.device.current().workspaces
        assert workspaces and all(not cnt.any() for _, cnt in workspaces.values())
        assert {CE.split_name(s) for s in ("float32", "float16", "float64", "bfloat16")} <= seen, seen
        assert CE.stream_name("float32", True) in seen and CE.stream_name("float32", False) not in seen, seen
        return n

    def scale():
        # The backward's in-place scaling: a scalar 1 leaves the buffer untouched
        # (decided on the device), any other scalar or per-row grad_output scales
        # (rows of a class-axis-1 layout too), at both alignments.
        n = 0
        for dt in (np.float32, np.float16, np.float64, "bfloat16"):
            acc = np.float64 if dt == np.float64 else np.float32
            rtol = 1e-6 if dt in (np.float32, np.float64) else 1e-2
            for shape, cols, inner in (((5, 37), 37, 1), ((3, 11, 4), 11, 4), ((1, 1), 1, 1), ((2, 1000), 1000, 1)):
                size = int(np.prod(shape))
                vals = (rng.standard_normal(size + 1) * 100).astype(np.float32)
                if dt == "bfloat16":
                    words = (vals.view(np.uint32) >> 16).astype(np.uint16)
                    store, values = words, (words.astype(np.uint32) << 16).view(np.float32)
                else:
                    store = values = vals.astype(dt)
                for off in (0, 1):
                    for go in (np.ones((), acc), np.full((), 2.5, acc), np.full((), np.nan, acc),
                               rng.standard_normal((shape[0],) + shape[2:]).astype(acc)):
                        g = cp.asarray(np.array(store[off:off + size], copy=True).reshape(shape))
                        before = np.array(g, copy=True)
                        CE.scale_grad(g, cp.asarray(go), cols, inner, storage="bfloat16" if dt == "bfloat16" else None)
                        got = np.asarray(g)
                        if go.ndim == 0 and go == 1:
                            assert got.tobytes() == before.tobytes(), "grad_output 1 changed the gradient"
                        else:
                            want = values[off:off + size].astype(np.float64).reshape(shape) * (
                                np.expand_dims(go, 1) if go.ndim else go)
                            gotf = (got.astype(np.uint32) << 16).view(np.float32) if dt == "bfloat16" else got
                            np.testing.assert_allclose(gotf.astype(np.float64), want, rtol=rtol, equal_nan=True,
                                                       err_msg=f"scale {dt} {shape} {go}")
                        n += 1
        return n

    def variants():
        """Every fused entry point of the kernel table, launched with a hand-made plan
        (as the softmax variants suite does) on unaligned rows that fill the variant's
        registers, against the reference; with the other suites, every CE entry point."""
        n = 0
        plan = CE.plan
        launched, launch_fn = record_launches(CE)
        forced, wanted = [], set()
        CE.plan = lambda *a: forced[0]
        threads = 128
        try:
            for storage, v in CE.VARIANTS.items():
                vec = CE.VEC[storage]
                cases = [(CE.warp_name(nv, storage), "warp", 32 * nv * vec - (vec - 1), nv) for nv in v["warp"]]
                cases += [(CE.block_name(nv, storage), "row", threads * nv * vec - (vec - 1), nv) for nv, _ in v["block"]]
                cases += [(CE.stream_name(storage, soft), "stream", 3001, soft) for soft in (False, True)]
                nv = v["split"][0]
                chunk = (threads * nv * vec - (vec - 1)) // vec * vec
                cases.append((CE.split_name(storage), "split", 2 * chunk - 3, chunk))
                if storage in CE.kernels.CE_LEAN_STORAGES:  # the fast path: default options only
                    cases.append((CE.split_lean_name(storage), "split", 2 * chunk - 3, chunk))
                for name, regime, cols, extra in cases:
                    # the fast-path kernels take no option: their cases run with the defaults
                    opts = {} if "_lean_" in name else {"label_smoothing": 0.1}
                    wanted.add(name)
                    if regime == "warp":
                        p = CE.Plan("warp", name, 2, CE.WARP_BLOCK_THREADS, width=32)
                    elif regime == "split":
                        p = CE.Plan("split", name, 4, threads, k=2, chunk=extra, groups=2)
                    else:
                        p = CE.Plan(regime, name, 2, threads)
                    forced[:] = [p]
                    dt = np.float32 if storage == "bfloat16" else np.dtype(storage).type
                    rows = 3
                    buf = (rng.standard_normal(rows * cols + 1) * 3).astype(dt)
                    if storage == "bfloat16":
                        bits = (buf.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
                        xf = (bits.astype(np.uint32) << 16).view(np.float32)[1:].reshape(rows, cols)
                        t = rng.integers(0, cols, rows)
                        if regime == "stream" and extra:
                            tt = rng.random((rows, cols))
                            t = (tt / tt.sum(-1, keepdims=True)).astype(np.float32)
                        a = dataclasses.replace(_checks.check_cross_entropy(xf, t, **opts), kind="cupy",
                                                logits=cp.asarray(bits)[1:].reshape(rows, cols), target=cp.asarray(t))
                        loss, grad = CE.cross_entropy_with_grad(a, False, storage="bfloat16")
                        wl, wg = reference.cross_entropy_with_grad(xf, t, **opts)
                        g = (cp.asnumpy(grad).astype(np.uint32) << 16).view(np.float32)
                        assert_close(g, wg, "bfloat16", f"{name} grad", atol=8e-3 * np.abs(wg).max())
                        assert_close(cp.asnumpy(loss), wl, "float32", f"{name} loss", atol=1e-5)
                        n += 1
                    else:
                        x = buf[1:].reshape(rows, cols)
                        if regime == "stream" and extra:
                            tt = rng.random((rows, cols))
                            t = (tt / tt.sum(-1, keepdims=True)).astype(dt)
                        else:
                            t = rng.integers(0, cols, rows)
                            t[0] = cols - 1
                        n += check(x, t, f"variant {name}", **(dict(opts, z_loss=1e-3) if opts else {}))
        finally:
            CE.plan, CE._launch = plan, launch_fn
        fused = {n for n in CE.ENTRY_POINTS if n.split("_")[2].rstrip("0123456789") in ("warp", "block", "stream", "split")}
        assert wanted == fused and wanted <= launched, (sorted(fused - wanted), sorted(wanted - launched))
        return n

    return {"hard": hard, "soft": soft, "special": special, "layouts": layouts, "overflow": overflow, "split": split,
            "scale": scale, "variants": variants}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("family", choices=["softmax", "cross_entropy"])
    args, rng = parse_runner_args(ap, argv)

    def make_suites(cp, mod, rng, emu):
        return softmax_suites(cp, mod, rng, emu) if args.family == "softmax" else cross_entropy_suites(cp, mod, rng)

    return run_suite(args, rng, args.family, make_suites, label=args.family)


if __name__ == "__main__":
    sys.exit(main())
