"""Emulated checks of issue 23's kernel causes (hostile inputs, round three).

    python tests/emulator/run_hostile.py SUITE [--seed N] [--build-dir DIR]

Runs the real cross-entropy kernels on the CPU (tests/emulator/harness.py) in every
regime a cause touches (warp, block, split, stream) and compares them with
gpu_softmax.reference. Prints `OK hostile <suite> <n> checks` and exits 0 when every
check passes. Started as a subprocess by tests/test_hostile_round3.py (it fakes `cupy`).

Suites:
  alias    inplace=True with weight / soft target / per-row grad_output viewing the logits
  options  float32-accumulated option scalars: refused outside float32's range, right inside it
  weights  tiny (normal) class weights, zero total target weight with smoothing (NaN, as torch)
  infzero  an infinite weight or probability at the row's max (+inf, as torch)
  vocab_parallel  the vocabulary-parallel kernels: option scalars, inplace aliasing, zero target weight
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from launch_record import record_launches  # noqa: E402
from runner_cli import runner_main  # noqa: E402

# (rows, cols, soft) shapes that land in each regime of the fused kernel; "split"
# is reached with the split chunk capped (as tests/emulator/run.py's split suite).
REGIME_SHAPES = {"warp": (40, 10), "block": (6, 3000), "split": (3, 1025), "stream": (5, 700)}


def suites(cp, CE, rng):
    from gpu_softmax import _checks, reference
    from gpu_softmax._checks import result_dtype
    from gpu_softmax.testing import assert_close, tolerance

    seen, _ = record_launches(CE)
    base_policy = CE.POLICY

    def shapes():
        """(regime, (rows, cols)) of every regime, with the planner set to reach it."""
        for regime, shape in REGIME_SHAPES.items():
            CE.POLICY = base_policy.replace(ce_split_max_chunk=512) if regime == "split" else base_policy
            yield regime, shape

    def problems(dtypes):
        """(regime, rows, cols, dt, logits, class indices) for every regime and dtype; logits of scale 2 in dt."""
        for regime, (rows, cols) in shapes():
            for dt in dtypes:
                x = (rng.standard_normal((rows, cols)) * 2).astype(dt)
                yield regime, rows, cols, dt, x, rng.integers(0, cols, rows)

    def run(x, t, want_grad=True, **kw):
        go = kw.pop("grad_output", 1.0) if want_grad else None
        a = _checks.check_cross_entropy(x, t, grad_output=go, **kw)
        a = dataclasses.replace(a, kind="cupy")
        if want_grad:
            return CE.cross_entropy_with_grad(a)
        return CE.cross_entropy(a)

    def compare(got_loss, got_grad, x_np, t_np, what, **kw):
        """Against the reference on copies (which computes from the values at the call)."""
        kw_np = {k: (cp.asnumpy(v).copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        wl, wg = reference.cross_entropy_with_grad(x_np.copy(), np.asarray(t_np).copy(), validate=False, **kw_np)
        rdt = result_dtype(x_np.dtype)
        scale = tolerance(rdt)[0] * (1 + float(np.nanmax(np.abs(wl))) if np.isfinite(wl).any() else 1.0)
        assert_close(cp.asnumpy(got_loss), wl, rdt, f"loss {what}", atol=scale)
        if got_grad is not None:
            gscale = tolerance(x_np.dtype)[0] * (float(np.nanmax(np.abs(wg))) if np.isfinite(wg).any() else 1.0)
            assert_close(cp.asnumpy(got_grad), wg, x_np.dtype, f"grad {what}", atol=gscale)

    def regime_of(names):
        for r in ("warp", "block", "split", "stream"):
            if any(f"_ce_{r}" in n for n in names):
                return r
        return None

    def alias():
        n = 0
        for regime, rows, cols, dt, x0, t in problems((np.float32, np.float64)):
            if regime != "stream":
                # weight = the first row of the logits (overwritten by its gradient)
                ref = np.abs(x0) + 0.5
                x = cp.asarray(ref)
                seen.clear()
                loss, grad = run(x, cp.asarray(t), inplace=True, weight=x[0], reduction="none", validate=False)
                assert regime_of(seen) == regime, (regime, seen)
                compare(loss, grad, ref, t, f"weight=logits[0] {regime} {dt.__name__}", weight=ref[0].copy(),
                        reduction="none")
                n += 1
                # per-row grad_output = the logits' last `rows` elements (a contiguous view)
                x = cp.asarray(x0)
                loss, grad = run(x, cp.asarray(t), inplace=True, grad_output=x.reshape(-1)[-rows:],
                                 reduction="none", validate=False)
                compare(loss, grad, x0, t, f"grad_output=logits.flat[-rows:] {regime} {dt.__name__}",
                        grad_output=x0.reshape(-1)[-rows:].copy(), reduction="none")
                n += 1
            # soft target = the logits shifted by one row (target = b[:-1], logits = b[1:])
            p = rng.random((rows + 1, cols)).astype(dt)
            p /= p.sum(axis=1, keepdims=True)
            buf = cp.asarray(p)
            seen.clear()
            loss, grad = run(buf[1:], buf[:-1], inplace=True, reduction="none")
            assert regime_of(seen) == "stream", seen
            compare(loss, grad, p[1:], p[:-1], f"soft target=logits shifted, {regime} {dt.__name__}",
                    reduction="none")
            n += 1
        return n

    def hard_or_soft(regime, rows, cols):
        """Class indices, or (for the stream regime, which hard rows reach only past a
        device's co-resident capacity) class probabilities."""
        if regime != "stream":
            return rng.integers(0, cols, rows)
        p = rng.random((rows, cols))
        return p / p.sum(axis=1, keepdims=True)

    def refused(fn, *words):
        try:
            fn()
        except ValueError as e:
            msg = str(e)
            assert all(w in msg for w in words), msg
            return 1
        raise AssertionError(f"no ValueError naming {words}")

    def options():
        n = 0
        for regime, (rows, cols) in shapes():
            for dt in (np.float32, np.float16):
                x = (rng.standard_normal((rows, cols)) * 2).astype(dt)
                t = hard_or_soft(regime, rows, cols)
                cx, ct = cp.asarray(x), cp.asarray(t)
                # refused: values float32 arithmetic cannot carry (flushed, rounded to 0, or overflowing)
                for kw, name in [({"logit_softcap": 1e-50}, "logit_softcap"),
                                 ({"logit_softcap": 1e39}, "logit_softcap"),
                                 ({"z_loss": 1e39}, "z_loss"), ({"z_loss": 2e38}, "z_loss"),
                                 ({"z_loss": 1e-40}, "z_loss"),
                                 ({"label_smoothing": 1e-50}, "label_smoothing"),
                                 ({"label_smoothing": 1e-37 * cols / 20}, "label_smoothing")]:
                    n += refused(lambda: run(cx, ct, **kw), name, "float32")
                    n += refused(lambda: run(cx, ct, want_grad=False, **kw), name, "float32")
                # accepted at the edges of the range, computed right
                seen.clear()
                for kw in [{"logit_softcap": 2e-38}, {"logit_softcap": 3e38}, {"z_loss": 2e-38},
                           {"z_loss": 1e30, "reduction": "sum"}, {"label_smoothing": 2e-38 * cols}]:
                    loss, grad = run(cx, ct, validate=False, **kw)
                    compare(loss, grad, x, t, f"{kw} {regime} {dt.__name__}", **kw)
                    n += 1
                assert regime_of(seen) == regime, (regime, seen)
                # label_smoothing just inside the range with a -inf logit: +inf, as torch
                xi = x.astype(np.float32).copy()
                xi[0, (int(t[0]) + 1) % cols if t.ndim == 1 else 0] = -np.inf
                xi = xi.astype(dt)
                loss = run(cp.asarray(xi), ct, want_grad=False, label_smoothing=4e-38 * cols, reduction="none")
                assert np.isposinf(cp.asnumpy(loss)[0]), cp.asnumpy(loss)[:2]
                n += 1
            # float64 accumulation carries every double: tiny and huge values work there
            x = rng.standard_normal((rows, cols))
            t = hard_or_soft(regime, rows, cols)
            for kw in [{"logit_softcap": 1e-50}, {"z_loss": 1e39, "reduction": "sum"}, {"label_smoothing": 1e-50}]:
                loss, grad = run(cp.asarray(x), cp.asarray(t), validate=False, **kw)
                compare(loss, grad, x, t, f"{kw} {regime} float64", **kw)
                n += 1
        return n

    def weights():
        n = 0
        for regime, rows, cols, dt, x, t in problems((np.float32, np.float16)):
            t[0] = -100
            cx, ct = cp.asarray(x), cp.asarray(t)
            for scale in (1e-37, 1.2e-38, 1e-40):  # the last: float32 subnormals
                # with one row counted, the total target weight is tiny (below 1 / FLT_MAX for 1e-40)
                w = (rng.uniform(1, 1.5, cols) * scale).astype(np.float32)
                tt = t.copy()
                tt[2:] = -100
                # (a sum or per-row loss of 1e-40 weights is itself subnormal: float32 keeps few digits)
                for red in ("mean",) if scale < np.finfo(np.float32).tiny else ("mean", "sum", "none"):
                    loss, grad = run(cx, cp.asarray(tt), weight=cp.asarray(w), reduction=red, validate=False)
                    compare(loss, grad, x, tt, f"weight~{scale} {red} {regime} {dt.__name__}", weight=w,
                            reduction=red)
                    if red == "mean":
                        assert np.isfinite(cp.asnumpy(loss)).all(), loss
                    n += 1
            # zero total target weight (every target's class weighs 0) with smoothing: NaN, as torch
            w = np.ones(cols, dtype=np.float32)
            w[t[1:]] = 0.0
            for ls in (0.0, 0.1):
                loss, grad = run(cx, ct, weight=cp.asarray(w), label_smoothing=ls, validate=False)
                assert np.isnan(cp.asnumpy(loss)), (ls, loss)
                compare(loss, grad, x, t, f"zero target weight ls={ls} {regime}", weight=w, label_smoothing=ls)
                n += 1
        return n

    def infzero():
        n = 0
        for regime, rows, cols, dt, x, t in problems((np.float32, np.float64)):
            am = np.argmax(x, axis=1)
            w = np.ones(cols, dtype=dt)
            w[am[0]] = np.inf  # an infinite weight at row 0's max
            loss = run(cp.asarray(x), cp.asarray(t), want_grad=False, weight=cp.asarray(w), label_smoothing=0.1,
                       reduction="none")
            want = reference.cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="none")
            assert np.isposinf(want[0]), want[0]
            np.testing.assert_array_equal(np.isposinf(cp.asnumpy(loss)), np.isposinf(want),
                                          err_msg=f"inf weight {regime} {dt.__name__}")
            n += 1
            # an infinite probability at the row's max (soft target)
            p = rng.random((rows, cols)).astype(dt)
            p[0, am[0]] = np.inf
            loss = run(cp.asarray(x), cp.asarray(p), want_grad=False, reduction="none")
            want = reference.cross_entropy(x, p, reduction="none")
            assert np.isposinf(want[0]), want[0]
            assert np.isposinf(cp.asnumpy(loss)[0]), cp.asnumpy(loss)[:2]
            n += 1
        return n

    def vocab_parallel():
        """The vocabulary-parallel kernels (gs_vp_stats_*, gs_vp_finish_*): option scalars
        refused as in the fused ones; inplace finish with a weight / grad_output viewing
        the shard it overwrites; zero total target weight NaN."""
        from gpu_softmax import vocab_parallel as vp

        checked = vp.check_args
        vp.check_args = lambda *a, **k: dataclasses.replace(checked(*a, **k), kind="cupy")
        n = 0
        widths = [7, 13]
        V = sum(widths)
        x = (rng.standard_normal((6, V)) * 2).astype(np.float32)
        t = rng.integers(0, V, 6)
        cx, ct = cp.asarray(x), cp.asarray(t)
        for kw, name in [({"logit_softcap": 1e-50}, "logit_softcap"), ({"z_loss": 1e39}, "z_loss"),
                         ({"label_smoothing": 1e-50}, "label_smoothing")]:
            n += refused(lambda: vp.cross_entropy_sharded(cx, ct, widths, validate=False, **kw), name, "float32")
        for kw in [{"logit_softcap": 2e-38}, {"label_smoothing": 2e-38 * V}, {"z_loss": 2e-38}]:
            loss, grad = vp.cross_entropy_sharded(cx, ct, widths, validate=False, **kw)
            compare(loss, grad, x, t, f"vp {kw}", **kw)
            n += 1
        # inplace finish: the weight and the per-row grad_output are views of the shard it overwrites
        for dt in (np.float32, np.float64):
            xs = (np.abs(rng.standard_normal((6, V))) + 0.5).astype(dt)
            shards = [cp.asarray(xs[:, :widths[0]].copy()), cp.asarray(xs[:, widths[0]:].copy())]
            w_np = shards[1].reshape(-1)[:V].copy()  # the weight lives in rank 1's shard
            go_np = shards[1].reshape(-1)[-6:].copy()
            starts = (0, widths[0])
            recs = cp.asarray(np.stack([cp.asnumpy(vp.partial_stats(sh, ct, s0, V, weight=cp.asarray(w_np),
                                                                     label_smoothing=0.1, validate=False))
                                        for sh, s0 in zip(shards, starts)]))
            grads = []
            for sh, s0 in zip(shards, starts):
                w = shards[1].reshape(-1)[:V] if s0 else cp.asarray(w_np)
                go = shards[1].reshape(-1)[-6:] if s0 else cp.asarray(go_np)
                loss, g = vp.finish(sh, ct, s0, V, recs, weight=w, grad_output=go, inplace=True,
                                    label_smoothing=0.1, reduction="none", validate=False)
                grads.append(cp.asnumpy(g))
            compare(loss, np.concatenate(grads, axis=1), xs, t, f"vp inplace aliasing {dt.__name__}",
                    weight=w_np, grad_output=go_np, label_smoothing=0.1, reduction="none")
            n += 1
        # zero total target weight: NaN mean, as torch
        w = np.ones(V, dtype=np.float32)
        w[t] = 0.0
        loss, _ = vp.cross_entropy_sharded(cx, ct, widths, weight=cp.asarray(w), label_smoothing=0.1,
                                           validate=False)
        assert np.isnan(cp.asnumpy(loss)), loss
        return n + 1

    return {"alias": alias, "options": options, "weights": weights, "infzero": infzero,
            "vocab_parallel": vocab_parallel}


def main(argv=None) -> int:
    return runner_main(argv, "cross_entropy", "hostile", suites)


if __name__ == "__main__":
    sys.exit(main())
