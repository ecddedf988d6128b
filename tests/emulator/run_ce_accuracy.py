"""Emulated cross-entropy accuracy of the split fast path against torch's own, on the same inputs.

    python tests/emulator/run_ce_accuracy.py [--build-dir DIR]

The fast path (`gs_ce_split*_lean_*`, issue 20) forms exp(x - m) as one FMA + EX2, sums each
thread's exponentials plainly (recounting at the max only in a thread its max dominates), and
reduces the block and the group max-then-sum. For each dtype and each row length (the goal
shape's 128256 classes, and a shorter split row), the real kernel text runs on the CPU
(tests/emulator/harness.py) and its largest error against the float64 reference must be no
larger than torch's (CPU) on the same inputs: the gradient against torch's gradient in the same
dtype, the per-row loss (relative: a confident row's loss is tiny) against torch's float32 loss
of the same values. Prints `OK ce accuracy <n> checks` and exits 0 when all hold. Started as a
subprocess by tests/test_cross_entropy_accuracy.py (it fakes `cupy`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

ROW_LENGTHS = (40000, 128256)  # a short split row, the goal shape's (4096 x 128256) row
DTYPES = ("float32", "float16", "bfloat16")
ROWS = 4


def inputs(rng, cols: int, huge: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits far from zero (where exp's argument rounding shows), a row whose target dominates
    (the loss is log(1 + tiny)), a row whose target is its max among close rivals, targets in the
    first, last and an interior block's chunk; with `huge`, a row near float32's largest value
    (m * log2(e) overflows: the fast path's exponent offset does not exist there), its max twice."""
    x = (rng.standard_normal((ROWS + huge, cols)) * 3 + 20).astype(np.float32)
    t = np.array([cols // 2 + 3, 0, cols - 1, 5 * cols // 7, cols // 3][:ROWS + huge])
    x[1] = rng.standard_normal(cols).astype(np.float32) * 0.5 - 30
    x[1, 0] = 5.0
    x[2, cols - 1] = float(x[2].max()) + 0.25
    if huge:
        x[4] = rng.uniform(1e37, 3e38, cols).astype(np.float32)
        x[4, cols // 3] = x[4, 2 * cols // 3] = 3.3e38
    return x, t


def wide_rows(rng, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows offset far from zero (|m| >= 2^16, where the fast path takes exp of the difference):
    +1e5, -3e6 and 1e9-scale offsets with a spread that keeps the row's softmax non-trivial."""
    x = np.stack([1e5 + rng.standard_normal(cols) * 3, -3e6 + rng.standard_normal(cols) * 3,
                  np.full(cols, 1e9) + rng.integers(-2, 3, cols) * 64.0]).astype(np.float32)
    return x, np.array([cols // 2, 1, cols - 2])


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float64).tiny)))


def run(cp, CE) -> int:
    import torch

    from gpu_softmax import _checks, reference

    rng = np.random.default_rng(20)
    seen = set()
    launch_fn = CE._launch

    def recording(name, *args, **kw):
        seen.add(name)
        return launch_fn(name, *args, **kw)

    CE._launch = recording
    n = 0
    try:
        for dt in DTYPES:
            tdt = getattr(torch, dt)
            cases = [(cols, *inputs(rng, cols, huge=dt != "float16")) for cols in ROW_LENGTHS]  # float16: 3e38 is inf
            if dt == "float32":
                cases.append((ROW_LENGTHS[0], *wide_rows(rng, ROW_LENGTHS[0])))
            for cols, x32, t in cases:
                xt = torch.from_numpy(x32).to(tdt)
                x64 = xt.to(torch.float64).numpy()  # what every implementation sees
                want_loss, want_grad = reference.cross_entropy_with_grad(x64, t, reduction="none")
                # torch: the loss in float32 from the same values, the gradient in the dtype itself
                theirs_loss = torch.nn.functional.cross_entropy(xt.float(), torch.from_numpy(t), reduction="none")
                xg = xt.clone().requires_grad_(True)
                torch.nn.functional.cross_entropy(xg, torch.from_numpy(t), reduction="none").sum().backward()
                theirs_grad = xg.grad.to(torch.float64).numpy()
                if dt == "bfloat16":
                    bits = xt.view(torch.int16).numpy().view(np.uint16)
                    a = dataclasses.replace(_checks.check_cross_entropy(x64.astype(np.float32), t, reduction="none"),
                                            kind="cupy", logits=cp.asarray(bits), target=cp.asarray(t))
                    loss, grad = CE.cross_entropy_with_grad(a, False, storage="bfloat16")
                    got_grad = (cp.asnumpy(grad).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                else:
                    a = dataclasses.replace(_checks.check_cross_entropy(xt.numpy(), t, reduction="none"),
                                            kind="cupy", logits=cp.asarray(xt.numpy()), target=cp.asarray(t))
                    loss, grad = CE.cross_entropy_with_grad(a, False)
                    got_grad = cp.asnumpy(grad).astype(np.float64)
                got_loss = cp.asnumpy(loss).astype(np.float64)
                checks = [("grad", float(np.abs(got_grad - want_grad).max()),
                           float(np.abs(theirs_grad - want_grad).max())),
                          ("loss", rel_err(got_loss, want_loss),
                           rel_err(theirs_loss.to(torch.float64).numpy(), want_loss))]
                for what, ours, torchs in checks:
                    if not ours <= torchs:
                        raise AssertionError(f"{what} {dt} cols={cols}: max error {ours:.3g} against torch's "
                                             f"{torchs:.3g}")
                    print(f"{what:<5} {dt:<9} cols={cols:<7} max error {ours:.3g}, torch {torchs:.3g}")
                    n += 1
    finally:
        CE._launch = launch_fn
    lean = {CE.split_lean_name(s) for s in DTYPES}
    if not lean <= seen:
        raise AssertionError(f"the fast-path kernels did not all run: {sorted(lean - seen)}")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=None)
    ns = ap.parse_args(argv)
    out = Path(ns.build_dir) if ns.build_dir else Path(tempfile.gettempdir()) / "gs_emu_build"
    cp, CE, _ = harness.setup("cross_entropy", out, sm_count=8)  # k = 11 co-resident blocks at 128256
    print(f"OK ce accuracy {run(cp, CE)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
