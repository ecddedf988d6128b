"""Emulated checks of the vocabulary-parallel kernels (gs_vp_stats_*, gs_vp_finish_*).

    python tests/emulator/run_vocab_parallel.py SUITE [--seed N] [--build-dir DIR]

Runs the real kernel sources on the CPU (tests/emulator/harness.py): the logits are
split into uneven shards, every shard's statistics come from gs_vp_stats_*, the
records are stacked in rank order (what the all-gather does), and every shard's
loss and gradient come from gs_vp_finish_*; the concatenated gradient and the loss
are compared with gpu_softmax.reference on the full logits. Prints
`OK vocab_parallel <suite> <n> checks` and exits 0 when every check passes.
Started as a subprocess by tests/test_vocab_parallel.py (it fakes `cupy`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ce_cases import mark_special_rows, options_alone, sharded_problems  # noqa: E402
from runner_cli import runner_main  # noqa: E402


def suites(cp, CE, rng):
    from gpu_softmax import _checks, reference
    from gpu_softmax import vocab_parallel as vp
    from gpu_softmax._checks import result_dtype
    from gpu_softmax.testing import assert_close, tolerance

    # The fake CuPy arrays are NumPy subclasses, which _checks reports as NumPy (as
    # tests/emulator/run.py does for the fused kernels, mark the arguments "cupy").
    checked = vp.check_args
    vp.check_args = lambda *a, **k: dataclasses.replace(checked(*a, **k), kind="cupy")

    def check(x_np, t_np, widths, what, storage=None, x_dev=None, **kw):
        dt = x_np.dtype
        kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        x = cp.asarray(x_np) if x_dev is None else x_dev
        loss, grad = vp.cross_entropy_sharded(x, cp.asarray(t_np), widths, validate=False, storage=storage, **kwd)
        wl, wg = reference.cross_entropy_with_grad(x_np.astype(np.float32) if storage else x_np, t_np,
                                                   validate=False, **kw)
        wlse = reference.logsumexp(x_np.astype(np.float64), axis=-1)
        rdt = result_dtype(np.float32 if storage else dt)
        lrtol = tolerance(rdt)[0]
        fin = np.isfinite(wlse)
        lscale = lrtol * (1 + (float(np.abs(wlse[fin]).max()) if fin.any() else 1.0))
        assert_close(cp.asnumpy(loss), wl, rdt, f"loss {what}", atol=lscale * max(1, np.size(wl) ** 0.5))
        gdt = storage or dt
        gscale = tolerance(gdt)[0] * (float(np.nanmax(np.abs(wg))) if np.isfinite(wg).any() else 1.0)
        g = cp.asnumpy(grad)
        if storage == "bfloat16":
            g = (g.astype(np.uint32) << 16).view(np.float32)
        assert_close(g, wg, gdt, f"grad {what}", atol=gscale)
        if dt != np.float32 or storage:
            return 1
        # loss only: no gradient written
        lo, go = vp.cross_entropy_sharded(x, cp.asarray(t_np), widths, validate=False, storage=storage,
                                          want_grad=False, **kwd)
        assert go is None
        np.testing.assert_array_equal(cp.asnumpy(lo), cp.asnumpy(loss), err_msg=f"loss only {what}")
        return 2

    OPTS = [*options_alone(softcap=False),
            {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2},
            {"weight": "w", "label_smoothing": 0.05, "reduction": "none", "grad_output": "rows"}]

    def hard():
        n = 0
        # every option in float32 on short shards; a few on long shards (several tiles) and in float16/float64
        shards = [([3, 2], 9), ([40, 0, 17, 5], 4), ([1500, 2600], 2), ([4500, 1, 700], 1)]
        for dt, widths, rows, o, kw, x, t in sharded_problems(rng, OPTS, shards, result_dtype,
                                                              max_vocab_off_float32=5000):
            n += check(x, t, widths, f"{dt.__name__} {rows}x{widths} {o}", **kw)
        return n

    def special():
        n = 0
        widths = [300, 500, 211]
        V = sum(widths)
        x = mark_special_rows(rng.standard_normal((8, V)).astype(np.float32), widths)
        t = np.array([0, 1, 2, 5, 900, 301, 299, -100])
        n += check(x, t, widths, "special none", reduction="none")
        n += check(x, t, widths, "special sum", reduction="sum")
        # out-of-range targets with validate=False: NaN rows, no bad access
        x = rng.standard_normal((6, V)).astype(np.float32)
        t = np.array([0, V, -5, 1, -100, 2**40])
        loss, grad = vp.cross_entropy_sharded(cp.asarray(x), cp.asarray(t), widths, validate=False,
                                              reduction="none")
        loss, grad = cp.asnumpy(loss), cp.asnumpy(grad)
        assert np.isnan(loss[[1, 2, 5]]).all() and np.isfinite(loss[[0, 3]]).all() and loss[4] == 0.0, loss
        assert np.isnan(grad[[1, 2, 5]]).all() and np.isfinite(grad[[0, 3, 4]]).all()
        assert (grad[4] == 0).all()
        try:
            vp.cross_entropy_sharded(cp.asarray(x), cp.asarray(t), widths)
        except ValueError as exc:
            assert "outside" in str(exc)
        else:
            raise AssertionError("validate=True let an out-of-range target through")
        # all ignored: NaN mean, zero gradient
        loss, grad = vp.cross_entropy_sharded(cp.asarray(x), cp.asarray(np.full(6, -100)), widths)
        assert np.isnan(float(loss)) and float(np.abs(cp.asnumpy(grad)).max()) == 0.0
        # no rows
        loss, grad = vp.cross_entropy_sharded(cp.zeros((0, V), np.float32), cp.zeros(0, np.int64), widths,
                                              reduction="sum")
        assert float(loss) == 0.0 and grad.shape == (0, V)
        return n + 3

    def layouts():
        n = 0
        for dt in (np.float32, np.float16):
            # shards whose rows start off the 16-byte grid (contiguous, odd widths)
            widths = [1001, 999]
            V = sum(widths)
            rows = 5
            x_np = rng.standard_normal((rows, V)).astype(dt)
            t = rng.integers(0, V, rows)
            recs, grads = [], []
            start = 0
            for w in widths:
                buf = cp.asarray(np.concatenate([np.zeros(1, dt), x_np[:, start:start + w].reshape(-1)]))
                shard = buf[1:].reshape(rows, w)
                recs.append(vp.partial_stats(shard, cp.asarray(t), start, V, label_smoothing=0.1, validate=False))
                start += w
            stacked = cp.concatenate([r[None] for r in recs])
            start = 0
            for w in widths:
                buf = cp.asarray(np.concatenate([np.zeros(1, dt), x_np[:, start:start + w].reshape(-1)]))
                shard = buf[1:].reshape(rows, w)
                loss, g = vp.finish(shard, cp.asarray(t), start, V, stacked, label_smoothing=0.1, validate=False,
                                    inplace=True)
                assert g is shard
                grads.append(cp.asnumpy(g))
                start += w
            wl, wg = reference.cross_entropy_with_grad(x_np, t, label_smoothing=0.1)
            assert_close(np.concatenate(grads, axis=-1), wg, dt, f"unaligned in place {dt.__name__}",
                         atol=tolerance(dt)[0] * np.abs(wg).max())
            assert_close(cp.asnumpy(loss), wl, "float32", f"unaligned loss {dt.__name__}", atol=1e-5 * 10)
            n += 2
            # leading dims: (2, 3, V) logits, (2, 3) targets
            x3 = rng.standard_normal((2, 3, 700)).astype(dt)
            n += check(x3, rng.integers(0, 700, (2, 3)).astype(np.int32), [350, 250, 100], f"3d {dt.__name__}",
                       reduction="none")
        bits = (rng.standard_normal((4, 3000)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        xf = (bits.astype(np.uint32) << 16).view(np.float32)
        n += check(xf, rng.integers(0, 3000, 4), [1200, 1800], "bf16", storage="bfloat16",
                   x_dev=cp.asarray(bits), label_smoothing=0.1)
        return n

    def overflow():
        """Label smoothing at huge magnitudes (issue #15 item 1): the records must carry
        non-negative pieces (sum w (m - x) per shard), not sum w x."""
        n = 0
        failures = []
        for dt, big, storage in ((np.float32, 1e36, None), (np.float64, 1e305, None), (np.float32, 1e36, "bfloat16"),
                                 (np.float16, 6e4, None), (np.float32, None, None)):
            for widths in ([3, 5], [700, 0, 1300]):
                V, rows = sum(widths), 3
                if big is None:  # rows offset by 1e4..1e5
                    x = (rng.uniform(1e4, 1e5, (rows, 1)) + rng.standard_normal((rows, V)) * 3).astype(dt)
                else:
                    x = np.full((rows, V), big, dt)
                t = rng.integers(0, V, rows)
                w = rng.uniform(0.1, 2, V).astype(dt)
                for kw in ({"label_smoothing": 0.1}, {"label_smoothing": 0.3, "weight": w}):
                    what = f"{np.dtype(dt).name} {storage} {big} {widths} {sorted(kw)}"
                    xs = x
                    if storage == "bfloat16":
                        xs = (x.view(np.uint32) >> 16).astype(np.uint16)
                    kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
                    loss, _ = vp.cross_entropy_sharded(cp.asarray(xs), cp.asarray(t), widths, validate=False,
                                                       storage=storage, reduction="none", **kwd)
                    xr = (xs.astype(np.uint32) << 16).view(np.float32) if storage else x
                    wl = reference.cross_entropy(xr, t, reduction="none", **kw)
                    rtol = 1e-12 if dt == np.float64 else 2e-6
                    try:
                        assert_close(cp.asnumpy(loss), wl, result_dtype(dt), what, rtol=rtol, atol=0.0)
                        n += 1
                    except AssertionError as exc:
                        failures.append(str(exc)[:300])
        if failures:
            raise AssertionError(f"{len(failures)} overflow case(s) failed:\n" + "\n".join(failures))
        return n

    def fused(x_np, t_np, kw):
        """The single-device fused kernels (gs_ce_*) on the same inputs, emulated too."""
        kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        go = kwd.pop("grad_output", 1.0)
        a = _checks.check_cross_entropy(cp.asarray(x_np), cp.asarray(t_np), grad_output=go, validate=False, **kwd)
        loss, grad = CE.cross_entropy_with_grad(dataclasses.replace(a, kind="cupy"), False)
        return cp.asnumpy(loss), cp.asnumpy(grad)

    SOFTCAP_OPTS = [{"logit_softcap": 3.0}, {"logit_softcap": 3.0, "z_loss": 1e-2},
                    {"logit_softcap": 2.5, "label_smoothing": 0.2, "reduction": "sum"},
                    {"logit_softcap": 6.0, "weight": "w", "ignore_index": 2},
                    {"logit_softcap": 2.0, "weight": "w", "label_smoothing": 0.1, "z_loss": 1e-2,
                     "reduction": "none", "grad_output": "rows"}]

    def softcap():
        """logit_softcap vocab-parallel (with z-loss, smoothing, weights): 1, 2 and 3 uneven shards
        against the reference and against the emulated single-device kernels."""
        n = 0
        shards = [([57], 5), ([23, 41], 6), ([30, 1, 12], 7), ([1500, 2600], 2)]
        # the logits (scale 3) pass the cap, not so far that its derivative 1 - tanh^2 is all float32
        # rounding (the fused kernels compute it the same way)
        for dt, widths, rows, o, kw, x, t in sharded_problems(rng, SOFTCAP_OPTS, shards, result_dtype,
                                                              max_vocab_off_float32=1000):
            what = f"softcap {dt.__name__} {rows}x{widths} {o}"
            n += check(x, t, widths, what, **kw)
            kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
            loss, grad = vp.cross_entropy_sharded(cp.asarray(x), cp.asarray(t), widths, validate=False, **kwd)
            fl, fg = fused(x, t, kw)
            rdt = result_dtype(dt)
            assert_close(cp.asnumpy(loss), fl, rdt, f"loss vs fused {what}",
                         atol=tolerance(rdt)[0] * (1 + float(np.abs(fl).max())) * max(1, rows ** 0.5))
            assert_close(cp.asnumpy(grad), fg, dt, f"grad vs fused {what}",
                         atol=tolerance(dt)[0] * max(float(np.nanmax(np.abs(fg))), 1e-30))
            n += 2
        return n

    return {"hard": hard, "special": special, "layouts": layouts, "overflow": overflow, "softcap": softcap}


def check_both_passes_ran(kernels):
    assert any(k.startswith("gs_vp_stats_") for k in kernels) and any(k.startswith("gs_vp_finish_") for k in kernels)


def main(argv=None) -> int:
    return runner_main(argv, "cross_entropy", "vocab_parallel", suites, check_kernels=check_both_passes_ran)


if __name__ == "__main__":
    sys.exit(main())
