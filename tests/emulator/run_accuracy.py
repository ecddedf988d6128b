"""Emulated softmax / log_softmax accuracy against torch's own, on the same inputs.

    python tests/emulator/run_accuracy.py [--build-dir DIR]

The softmax statistics use the faster forms of issue 20 (exp as one FMA + EX2,
a plain sum where log_softmax keeps counting the elements at the max): for each
dtype, each goal row length and each regime the planner (or a test hook) picks,
the real kernel text runs on the CPU (tests/emulator/harness.py) and its largest
error against the float64 reference must be no larger than torch's (CPU) on the
same inputs. Prints `OK accuracy <n> checks` and exits 0 when all hold. Started
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


def run(cp, SM) -> int:
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
                    SM.FORCE_REGIME = force
                    if dt == "bfloat16":
                        got = SM.forward_raw(cp.asarray(bits_bf16(x32)), -1, op, storage="bfloat16")
                        got = (cp.asnumpy(got).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                    else:
                        got = cp.asnumpy(SM.forward_raw(cp.asarray(xt.numpy()), -1, op)).astype(np.float64)
                    # The worst element of the same 8 rows, each side: which row is
                    # worse is rounding luck, the worst case is the property.
                    ours = float(np.abs(got - want).max())
                    torchs = float(np.abs(theirs - want).max())
                    if not ours <= torchs:
                        raise AssertionError(f"{op} {dt} cols={cols} regime={force or 'planned'}: max error "
                                             f"{ours:.3g} against torch's {torchs:.3g}")
                    print(f"{op:<12} {dt:<9} cols={cols:<6} {force or 'planned':<8} max error {ours:.3g}, "
                          f"torch {torchs:.3g}")
                    n += 1
    SM.FORCE_REGIME = None
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=None)
    ns = ap.parse_args(argv)
    out = Path(ns.build_dir) if ns.build_dir else Path(tempfile.gettempdir()) / "gs_emu_build"
    cp, SM, _ = harness.setup("softmax", out)
    print(f"OK accuracy {run(cp, SM)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
