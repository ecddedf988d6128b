"""The cross-entropy split fast path (real kernels, host emulator) is as accurate as torch's own
against the float64 reference, on the same inputs, for every 16/32-bit dtype and the goal shape's
row length (issue 20: its exp, plain per-thread sums and max-then-sum reductions must not cost
accuracy). tests/emulator/run_ce_accuracy.py does the work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
RUNNER = Path(__file__).resolve().parent / "emulator" / "run_ce_accuracy.py"


@pytest.mark.slow
def test_emulated_ce_fast_path_error_no_larger_than_torch(emulator_build_dir):
    p = subprocess.run([sys.executable, str(RUNNER), "--build-dir", str(emulator_build_dir)],
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    # (3 dtypes x 2 row lengths + float32's rows offset past 2^16) x (gradient, loss)
    assert "OK ce accuracy 14 checks" in out, out[-8000:]
