"""The real kernel sources, run on the CPU by a host emulator, against the reference.

CI has no GPU; this is how it still executes every regime of both op families:
tests/emulator/harness.py compiles the text the loader hands CuPy with g++ (one host
fiber per CUDA thread; barriers, shuffles and shared memory emulated) and routes
the launch modules' launches into it. It proves indexing, tails, alignment paths,
the reductions, split-row exchange and in-place safety. It does not prove GPU
memory ordering or timing: the `gpu` tests do that on a device.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent / "emulator" / "run.py"

SUITES = [
    ("softmax", "basic"), ("softmax", "special"), ("softmax", "layouts"), ("softmax", "long_rows"), ("softmax", "regimes"), ("softmax", "variants"),
    ("cross_entropy", "hard"), ("cross_entropy", "soft"), ("cross_entropy", "special"), ("cross_entropy", "layouts"),
    ("cross_entropy", "overflow"), ("cross_entropy", "split"), ("cross_entropy", "scale"), ("cross_entropy", "variants"),
]


@pytest.mark.slow
@pytest.mark.parametrize("family,suite", SUITES)
def test_emulated_kernels_match_reference(family, suite, emulator_build_dir):
    p = subprocess.run([sys.executable, str(RUNNER), family, suite, "--build-dir", str(emulator_build_dir)],
                       capture_output=True, text=True, timeout=1200)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    assert f"OK {family} {suite}" in out, out[-8000:]


TOKEN_LOGPROBS_RUNNER = RUNNER.parent / "run_token_logprobs.py"
TOKEN_LOGPROBS_SUITES = ["sizes", "layouts", "special", "invariance", "ties"]


@pytest.mark.slow
@pytest.mark.parametrize("suite", TOKEN_LOGPROBS_SUITES)
def test_emulated_token_logprob_kernels_match_reference(suite, emulator_build_dir):
    p = subprocess.run([sys.executable, str(TOKEN_LOGPROBS_RUNNER), suite, "--build-dir", str(emulator_build_dir)],
                       capture_output=True, text=True, timeout=1200)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    assert f"OK token_logprobs {suite}" in out, out[-8000:]
