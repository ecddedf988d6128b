"""Emulated softmax / log_softmax accuracy against torch's own, on the same inputs.

    python tests/emulator/run_accuracy.py [--backward | --logsumexp] [--build-dir DIR]

The softmax statistics use the faster forms of issue 20 (exp as one FMA + EX2,
a plain sum where log_softmax keeps counting the elements at the max): for each
dtype, each goal row length and each regime the planner (or a test hook) picks,
the real kernel text runs on the CPU (tests/emulator/harness.py) and its largest
error against the float64 reference must be no larger than torch's (CPU) on the
same inputs (the forward passes: by the absolute or the per-ulp measure,
forward_no_worse_than_torch). Prints `OK accuracy <n> checks` and exits 0 when all hold. Started
as a subprocess by tests/test_softmax_accuracy.py (it fakes `cupy`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

ROW_LENGTHS = (1000, 4096, 32768)  # a warp-regime row, then the goal shapes' rows held on chip
DTYPES = ("float32", "float16", "bfloat16")


def inputs(rng, rows: int, cols: int) -> np.ndarray:
    """Logits far from zero (where exp's argument rounding shows) and a first row with
    one dominant element (where the sum is 1 + tiny)."""
    x = (rng.standard_normal((rows, cols)) * 3 + 20).astype(np.float32)
    x[0] = rng.standard_normal(cols).astype(np.float32) * 0.5 - 30
    x[0, cols // 3] = 5.0
    return x


def bits_bf16(x32: np.ndarray) -> np.ndarray:
    import torch

    return torch.from_numpy(x32).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def no_worse_than_torch(case: str, got, theirs, want) -> None:
    """Our worst error against the float64 `want` is no larger than torch's on the same inputs
    (which of the rows is worse is rounding luck: the worst case is the property)."""
    ours = float(np.abs(got - want).max())
    torchs = float(np.abs(theirs - want).max())
    if not ours <= torchs:
        raise AssertionError(f"{' '.join(case.split())}: {ours:.3g} against torch's {torchs:.3g}")
    print(f"{case} {ours:.3g}, torch {torchs:.3g}")


PRECISION = {"float32": (24, 2.0**-149), "float16": (11, 2.0**-24), "bfloat16": (8, 2.0**-133)}


def max_ulps(got, want, dt: str) -> float:
    """The worst error in units of the last place of `dt` at each expected value (its
    smallest subnormal step below the normal range): every output in its own units."""
    bits, step = PRECISION[dt]
    _, e = np.frexp(want)
    ulp = np.maximum(np.ldexp(1.0, e - bits), step)
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want) / ulp
    return float(np.max(np.where(np.isfinite(want), err, 0.0)))


def forward_no_worse_than_torch(case: str, got, theirs, want, dt: str) -> None:
    """Ours is no worse than torch's on the same inputs by the worst absolute error or by the
    worst error in ulps. Either alone is decided by one output's last bit where both sides are
    within an ulp: the absolute measure by the largest output (float32: whose last bit follows
    the row sum's rounding, which differs with torch's vector width), the ulp measure by one
    16-bit output sitting on a rounding tie. Worse by both is a real loss."""
    ours, torchs = float(np.abs(got - want).max()), float(np.abs(theirs - want).max())
    ours_u, torchs_u = max_ulps(got, want, dt), max_ulps(theirs, want, dt)
    if not (ours <= torchs or ours_u <= torchs_u):
        raise AssertionError(f"{' '.join(case.split())}: {ours:.3g} ({ours_u:.3g} ulps) against torch's "
                             f"{torchs:.3g} ({torchs_u:.3g} ulps)")
    print(f"{case} {ours:.3g} ({ours_u:.3g} ulps), torch {torchs:.3g} ({torchs_u:.3g} ulps)")


def run(cp, SM) -> int:
    base = SM.POLICY  # the planner's knobs; restored at the end
    import torch

    from gpu_softmax import reference

    rng = np.random.default_rng(20)
    n = 0
    for dt in DTYPES:
        tdt = getattr(torch, dt)
        for cols in ROW_LENGTHS:
            x32 = inputs(rng, 8, cols)
            xt = torch.from_numpy(x32).to(tdt)
            x64 = xt.to(torch.float64).numpy()  # what both implementations see
            for op in ("softmax", "log_softmax"):
                want = getattr(reference, op)(x64, axis=-1)
                theirs = getattr(torch, op)(xt, dim=-1).to(torch.float64).numpy()
                for force in (None, "stage"):
                    SM.POLICY = base.replace(force_regime=force)
                    if dt == "bfloat16":
                        got = SM.forward_raw(cp.asarray(bits_bf16(x32)), -1, op, storage="bfloat16")
                        got = (cp.asnumpy(got).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                    else:
                        got = cp.asnumpy(SM.forward_raw(cp.asarray(xt.numpy()), -1, op)).astype(np.float64)
                    # The worst element of the same 8 rows, each side: which row is
                    # worse is rounding luck, the worst case is the property.
                    forward_no_worse_than_torch(f"{op:<12} {dt:<9} cols={cols:<6} {force or 'planned':<8} max error",
                                                got, theirs, want, dt)
                    n += 1
    SM.POLICY = base
    return n


def backward_inputs(rng, rows: int, cols: int, tdt):
    """(grad_y, y) stored in `tdt`, y a softmax (or log_softmax) output of Gaussian
    logits. Row 0's grad_y is 1 plus noise of 1e-3, so grad_y - sum(grad_y * y)
    cancels to about 1e-3 in every element (a float sum's error shows there);
    row 1 has one dominant element."""
    import torch

    x = torch.from_numpy(rng.standard_normal((rows, cols)) * 2)
    x[1, cols // 3] = 30.0
    g = torch.from_numpy(rng.standard_normal((rows, cols)))
    g[0] = 1 + 1e-3 * g[0]
    return g.to(tdt), torch.softmax(x, -1).to(tdt), torch.log_softmax(x, -1).to(tdt)


def to_device(cp, t):
    """A torch CPU tensor as the emulated device array (bfloat16 as its 16-bit words)."""
    import torch

    if t.dtype == torch.bfloat16:
        return cp.asarray(t.view(torch.int16).numpy().view(np.uint16))
    return cp.asarray(t.numpy())


def from_device(cp, a, tdt) -> np.ndarray:
    import torch

    a = cp.asnumpy(a)
    if tdt == torch.bfloat16:
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def run_backward(cp, SM) -> int:
    """softmax_backward / log_softmax_backward (float sums, compensated: issue 20)
    against torch's own backward (CPU, float32 arithmetic) on the same inputs."""
    base = SM.POLICY  # the planner's knobs; restored at the end
    import torch

    from gpu_softmax import reference

    rng = np.random.default_rng(21)
    torch_bwd = {"softmax_backward": torch._softmax_backward_data,
                 "log_softmax_backward": torch._log_softmax_backward_data}
    n = 0
    for dt in DTYPES:
        tdt = getattr(torch, dt)
        storage = "bfloat16" if dt == "bfloat16" else None
        for cols in ROW_LENGTHS:
            g, y_sm, y_lsm = backward_inputs(rng, 8, cols, tdt)
            for op, y in (("softmax_backward", y_sm), ("log_softmax_backward", y_lsm)):
                g64, y64 = g.to(torch.float64).numpy(), y.to(torch.float64).numpy()
                want = getattr(reference, op)(g64, y64, axis=-1)
                theirs = torch_bwd[op](g, y, -1, tdt).to(torch.float64).numpy()
                for force in (None, "stage"):
                    SM.POLICY = base.replace(force_regime=force)
                    got = SM.backward_raw(to_device(cp, g), to_device(cp, y), -1, op, storage=storage)
                    got = from_device(cp, got, tdt)
                    # All 8 rows (the largest elements' rounding dominates), then the
                    # cancelling row alone, where the row sum's own error shows.
                    for what, rows in (("max error", slice(None)), ("cancelling row", slice(0, 1))):
                        no_worse_than_torch(f"{op:<20} {dt:<9} cols={cols:<6} {force or 'planned':<8} {what}",
                                            got[rows], theirs[rows], want[rows])
                        n += 1
    SM.POLICY = base
    return n


def lse_inputs(rng, cols: int) -> np.ndarray:
    """inputs()' rows (one dominant element, logits far from 0), then rows whose logsumexp is
    near 0, where m + log(sum) cancels: shifted to 1e-3 and -1.5, one dominant element at 0
    (lse about cols * e^-30); last a row just outside the double pass's range (3.0)."""
    x = inputs(rng, 8, cols)
    dom = rng.standard_normal(cols) * 0.5 - 30
    dom[cols // 2] = 0.0
    near = [dom]
    for target in (1e-3, -1.5, 3.0):
        z = rng.standard_normal(cols) * 2
        m = z.max()
        near.insert(-1 if target != 3.0 else len(near), z - (m + np.log(np.exp(z - m).sum())) + target)
    return np.concatenate([x, np.stack(near).astype(np.float32)])


def run_logsumexp(cp, SM) -> int:
    """logsumexp (a float pass, read again in double near 0: issue 20) against torch's float32
    logsumexp of the same values: float16 / bfloat16 inputs upcast for torch, since our result
    is float32 (torch's own 16-bit result would be rounded to 16 bits)."""
    import torch

    from gpu_softmax import reference

    rng = np.random.default_rng(22)
    n = 0
    for dt in DTYPES:
        tdt = getattr(torch, dt)
        for cols in ROW_LENGTHS:
            x32 = lse_inputs(rng, cols)
            xt = torch.from_numpy(x32).to(tdt)
            want = reference.logsumexp(xt.to(torch.float64).numpy(), axis=-1).astype(np.float64)
            theirs = torch.logsumexp(xt.to(torch.float32), dim=-1).to(torch.float64).numpy()
            if dt == "bfloat16":
                got = SM.forward_raw(cp.asarray(bits_bf16(x32)), -1, "logsumexp", storage="bfloat16")
            else:
                got = SM.forward_raw(cp.asarray(xt.numpy()), -1, "logsumexp")
            got = cp.asnumpy(got).astype(np.float64)
            # All rows (the largest results' rounding dominates), then the rows near 0 alone (the
            # double pass). A single row just outside their range (3.0) is in the first measure
            # only: on one row, which side's float32 rounding lands nearer is luck.
            for what, rows in (("max error", slice(None)), ("rows near 0", slice(8, 11))):
                no_worse_than_torch(f"logsumexp {dt:<9} cols={cols:<6} {what}", got[rows], theirs[rows], want[rows])
                n += 1
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=None)
    ap.add_argument("--backward", action="store_true", help="the backward passes instead of the forward ones")
    ap.add_argument("--logsumexp", action="store_true", help="logsumexp instead of the forward passes")
    ns = ap.parse_args(argv)
    out = Path(ns.build_dir) if ns.build_dir else Path(tempfile.gettempdir()) / "gs_emu_build"
    cp, SM, _ = harness.setup("softmax", out)
    label, suite = ("accuracy", run)
    if ns.backward:
        label, suite = ("backward accuracy", run_backward)
    elif ns.logsumexp:
        label, suite = ("logsumexp accuracy", run_logsumexp)
    print(f"OK {label} {suite(cp, SM)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
