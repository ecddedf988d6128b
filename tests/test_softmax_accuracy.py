"""softmax / log_softmax of the real kernels (host emulator) are as accurate as torch's
own, against the float64 reference, on the same inputs (issue 20: the faster exp and
sum forms must not cost accuracy). tests/emulator/run_accuracy.py does the work."""

from __future__ import annotations

import pytest

from emulated_runs import assert_runner_ok

pytest.importorskip("torch")


@pytest.mark.slow
def test_emulated_softmax_error_no_larger_than_torch(emulator_build_dir):
    # 3 dtypes x 3 row lengths x 2 ops x 2 regimes (planned, staged)
    assert_runner_ok("run_accuracy.py", build_dir=emulator_build_dir, ok="OK accuracy 36 checks", timeout=900)


@pytest.mark.slow
def test_emulated_backward_error_no_larger_than_torch(emulator_build_dir):
    """The backward passes sum in float (a compensated pair, no FP64): their error against
    float64 is no larger than torch's float32-arithmetic backward, over all rows and on a
    row where grad_y - sum(grad_y * y) cancels."""
    # 3 dtypes x 3 row lengths x 2 ops x 2 regimes (planned, staged) x 2 measures (all rows, cancelling row)
    assert_runner_ok("run_accuracy.py", "--backward", build_dir=emulator_build_dir,
                     ok="OK backward accuracy 72 checks", timeout=900)


@pytest.mark.slow
def test_emulated_logsumexp_error_no_larger_than_torch(emulator_build_dir):
    """logsumexp runs a float pass and reads rows near 0 again in double: its error against float64
    is no larger than torch's float32 logsumexp of the same values, over all rows and on rows near 0
    (shifted to 1e-3 and -1.5, one dominant element at 0)."""
    # 3 dtypes x 3 row lengths x 2 measures (all rows, rows near 0)
    assert_runner_ok("run_accuracy.py", "--logsumexp", build_dir=emulator_build_dir,
                     ok="OK logsumexp accuracy 18 checks", timeout=900)
