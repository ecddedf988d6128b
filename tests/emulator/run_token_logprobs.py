"""Emulated checks of the token log-prob kernels (gs_tlp_*) against gpu_softmax.reference_rl.

    python tests/emulator/run_token_logprobs.py SUITE [--seed N] [--build-dir DIR]

Runs the real kernel sources on the CPU (tests/emulator/harness.py) through the
launcher gpu_softmax._cuda.token_logprobs. Prints `OK token_logprobs <suite> <n> checks`
and exits 0 when every check passes. Started as a subprocess by
tests/test_kernels_emulated.py (it fakes `cupy`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from runner_cli import runner_main  # noqa: E402

OPTIONS = [
    {},
    {"temperature": 0.6},
    {"logit_softcap": 5.0, "temperature": 1.3},
    {"top_k": 3},
    {"top_k": 40, "temperature": 0.7},
    {"top_p": 0.8},
    {"top_k": 20, "top_p": 0.9, "logit_softcap": 4.0},
]


def suites(cp, TL, rng):
    from gpu_softmax import reference_rl
    from gpu_softmax._checks_rl import check_token_logprobs
    from gpu_softmax.testing import assert_close, tolerance

    def cargs(x, t, gl=None, ge=None, backward=False, axis=-1, **opts):
        a = check_token_logprobs(x, t, axis=axis, grad_logp=gl, grad_entropy=ge, backward=backward,
                                 return_entropy=True, **opts)
        return dataclasses.replace(a, kind="cupy")

    def check(x_np, t_np, what, axis=-1, x_dev=None, **opts):
        """Forward (logp, entropy) and backward (both gradients) against the reference."""
        dt = x_np.dtype
        x = cp.asarray(x_np) if x_dev is None else x_dev
        t = cp.asarray(t_np)
        logp, ent = TL.token_logprobs(cargs(x, t, axis=axis, validate=False, **opts))
        wl, we = reference_rl.token_logprobs(x_np, t_np, axis=axis, return_entropy=True, validate=False, **opts)
        acc = wl.dtype
        # logp and H are differences of O(|z|) terms: the error is relative to those.
        zmax = float(np.nanmax(np.abs(np.where(np.isfinite(x_np), x_np, 0)))) / opts.get("temperature", 1.0) + 1
        atol = tolerance(acc)[0] * zmax * 4
        assert_close(cp.asnumpy(logp), wl, acc, f"logp {what}", atol=atol)
        assert_close(cp.asnumpy(ent), we, acc, f"entropy {what}", atol=atol)
        gl = rng.standard_normal(t_np.shape).astype(acc)
        ge = rng.standard_normal(t_np.shape).astype(acc)
        n = 2
        for g_ent in (None, ge):
            ba = cargs(x, t, cp.asarray(gl), None if g_ent is None else cp.asarray(g_ent), backward=True,
                       axis=axis, validate=False, **opts)
            got = TL.token_logprobs_backward(ba)
            want = reference_rl.token_logprobs_backward(x_np, t_np, gl, g_ent, axis=axis, validate=False, **opts)
            finite = np.isfinite(want)
            gscale = float(np.abs(want[finite]).max()) if finite.any() else 1.0
            assert_close(cp.asnumpy(got), want, dt, f"grad {what} entropy={g_ent is not None}",
                         atol=tolerance(dt)[0] * gscale * zmax)
            # The saved record gives the same gradient bit for bit.
            _, _, rec = TL.forward_stats(ba)
            again = TL.token_logprobs_backward(ba, record=rec)
            assert cp.asnumpy(again).tobytes() == cp.asnumpy(got).tobytes(), f"record {what}"
            n += 2
        return n

    def rand(shape, dt, scale=3.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    def sizes():
        n = 0
        for dt in (np.float32, np.float64, np.float16):
            for cols in (1, 31, 33, 1025):
                for opts in OPTIONS:
                    rows = 5
                    x = rand((rows, cols), dt)
                    t = rng.integers(0, cols, rows)
                    n += check(x, t, f"{rows}x{cols} {dt.__name__} {opts}", **opts)
        return n

    def layouts():
        n = 0
        for dt in (np.float32, np.float16):
            for cols in (33, 1025):
                for opts in ({}, {"top_k": 5, "top_p": 0.9}):
                    rows = 4
                    buf = rand((rows * cols + 1,), dt)  # every row misaligned differently
                    x_np = buf[1:].reshape(rows, cols)
                    x_dev = cp.asarray(buf)[1:].reshape(rows, cols)
                    t = rng.integers(0, cols, rows)
                    n += check(x_np, t, f"misaligned {cols} {dt.__name__} {opts}", x_dev=x_dev, **opts)
            x = rand((3, 37, 4), dt)
            t = rng.integers(0, 37, (3, 4))
            n += check(x, t, f"axis 1 {dt.__name__}", axis=1, top_k=4)
        # bfloat16 words through the raw storage
        bits = (rand((4, 300), np.float32).view(np.uint32) >> 16).astype(np.uint16)
        xf = (bits.astype(np.uint32) << 16).view(np.float32)
        t = rng.integers(0, 300, 4)
        for opts in ({}, {"top_p": 0.7, "temperature": 0.8}):
            a = dataclasses.replace(cargs(xf, t, validate=False, **opts), logits=cp.asarray(bits), tokens=cp.asarray(t))
            logp, ent = TL.token_logprobs(a, storage="bfloat16")
            wl, we = reference_rl.token_logprobs(xf, t, return_entropy=True, **opts)
            assert_close(cp.asnumpy(logp), wl, "float32", f"bf16 logp {opts}", atol=1e-4)
            assert_close(cp.asnumpy(ent), we, "float32", f"bf16 entropy {opts}", atol=1e-4)
            n += 2
        # empty batch
        logp, ent = TL.token_logprobs(cargs(cp.zeros((0, 7), np.float32), cp.zeros(0, np.int64)))
        assert logp.shape == (0,) and ent.shape == (0,)
        return n + 1

    def special():
        n = 0
        for dt in (np.float32, np.float64, np.float16):
            for cols in (1, 5, 33, 1025):
                rows = 8
                x = rand((rows, cols), dt)
                t = rng.integers(0, cols, rows)
                j = cols // 2
                x[1, j] = np.nan
                x[2, j] = np.inf
                x[3, :] = -np.inf
                x[4, ::2] = -np.inf
                t[4] = 1 if cols > 1 else 0
                x[5, :] = 2.0  # all tied
                t[6] = -100  # ignored
                x[6, :] = np.nan  # ... and its logits are not read
                t[7] = cols + 3  # out of range (validate=False): NaN log p and gradient
                for opts in ({}, {"top_k": 2}, {"top_p": 0.5}, {"logit_softcap": 3.0}, {"top_k": 1, "top_p": 0.3}):
                    n += check(x, t, f"special {cols} {dt.__name__} {opts}", **opts)
        # a token outside the kept set: log p = -inf, no log p gradient
        x = np.array([[3.0, 2.0, 1.0, 0.0]], dtype=np.float32)
        logp, _ = TL.token_logprobs(cargs(cp.asarray(x), cp.asarray(np.array([3])), top_k=2))
        assert cp.asnumpy(logp)[0] == -np.inf
        n += check(x, np.array([3]), "token outside top_k", top_k=2)
        return n + 1

    def invariance():
        """A row's results, bitwise, whatever the batch size and its position in it."""
        n = 0
        for dt in (np.float32, np.float16, np.float64):
            for cols in (33, 1025, 3001):
                for opts in ({}, {"top_k": 7, "top_p": 0.85, "logit_softcap": 6.0}):
                    row = rand((cols,), dt)
                    tok = int(rng.integers(0, cols))
                    gl, ge = 0.7, -1.3
                    seen = None
                    for rows, pos, off in ((1, 0, 0), (3, 1, 1), (7, 5, 3), (7, 0, 2)):
                        buf = rand((rows * cols + off,), dt)
                        x = buf[off:].reshape(rows, cols)
                        x[pos] = row
                        t = rng.integers(0, cols, rows)
                        t[pos] = tok
                        acc = np.float64 if dt == np.float64 else np.float32
                        g1 = rng.standard_normal(rows).astype(acc)
                        g2 = rng.standard_normal(rows).astype(acc)
                        g1[pos], g2[pos] = gl, ge
                        xd = cp.asarray(buf)[off:].reshape(rows, cols)
                        logp, ent = TL.token_logprobs(cargs(xd, cp.asarray(t), **opts))
                        grad = TL.token_logprobs_backward(cargs(xd, cp.asarray(t), cp.asarray(g1), cp.asarray(g2),
                                                                backward=True, **opts))
                        mine = (cp.asnumpy(logp)[pos].tobytes(), cp.asnumpy(ent)[pos].tobytes(),
                                cp.asnumpy(grad)[pos].tobytes())
                        if seen is None:
                            seen = mine
                        assert mine == seen, f"batch {rows} position {pos} offset {off}: {dt.__name__} {cols} {opts}"
                        n += 1
        return n

    def ties():
        """Integer logits (many ties, so the masks' tie rules decide) under drawn options."""
        n = 0
        for _ in range(60):
            dt = (np.float32, np.float64, np.float16)[int(rng.integers(0, 3))]
            cols = int(rng.integers(1, 200))
            rows = int(rng.integers(1, 6))
            x = rng.integers(-4, 5, (rows, cols)).astype(dt)
            t = rng.integers(0, cols, rows)
            opts = {}
            if rng.random() < 0.7:
                opts["top_k"] = int(rng.integers(1, cols + 3))
            if rng.random() < 0.6:
                opts["top_p"] = float(rng.uniform(0.05, 1.0))
            if rng.random() < 0.3:
                opts["temperature"] = float(rng.choice([0.5, 0.8, 1.5]))
            if rng.random() < 0.2:
                opts["logit_softcap"] = float(rng.choice([3.0, 10.0]))
            n += check(x, t, f"ties {rows}x{cols} {dt.__name__} {opts}", **opts)
        return n

    return {"sizes": sizes, "layouts": layouts, "special": special, "invariance": invariance, "ties": ties}


def main(argv=None) -> int:
    return runner_main(argv, "token_logprobs", "token_logprobs", suites)


if __name__ == "__main__":
    sys.exit(main())
