"""softmax / log_softmax of the real kernels (host emulator) are as accurate as torch's
own, against the float64 reference, on the same inputs (issue 20: the faster exp and
sum forms must not cost accuracy). tests/emulator/run_accuracy.py does the work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
RUNNER = Path(__file__).resolve().parent / "emulator" / "run_accuracy.py"


@pytest.mark.slow
def test_emulated_softmax_error_no_larger_than_torch(emulator_build_dir):
    p = subprocess.run([sys.executable, str(RUNNER), "--build-dir", str(emulator_build_dir)],
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    # 3 dtypes x 3 row lengths x 2 ops x 2 regimes (planned, staged)
    assert "OK accuracy 36 checks" in out, out[-8000:]


@pytest.mark.slow
def test_emulated_backward_error_no_larger_than_torch(emulator_build_dir):
    """The backward passes sum in float (a compensated pair, no FP64): their error against
    float64 is no larger than torch's float32-arithmetic backward, over all rows and on a
    row where grad_y - sum(grad_y * y) cancels."""
    p = subprocess.run([sys.executable, str(RUNNER), "--backward", "--build-dir", str(emulator_build_dir)],
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    # 3 dtypes x 3 row lengths x 2 ops x 2 regimes (planned, staged) x 2 measures (all rows, cancelling row)
    assert "OK backward accuracy 72 checks" in out, out[-8000:]
