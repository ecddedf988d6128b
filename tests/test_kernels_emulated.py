"""The real kernel sources, run on the CPU by a host emulator, against the reference.

CI has no GPU; this is how it still executes every regime of both op families:
tests/emulator/harness.py compiles the text the loader hands CuPy with g++ (one host
fiber per CUDA thread; barriers, shuffles and shared memory emulated) and routes
the launch modules' launches into it. It proves indexing, tails, alignment paths,
the reductions, split-row exchange and in-place safety. It does not prove GPU
memory ordering or timing: the `gpu` tests do that on a device.
"""

from __future__ import annotations

import pytest

from emulated_runs import assert_runner_ok

SUITES = [
    ("softmax", "basic"), ("softmax", "special"), ("softmax", "backward_special"), ("softmax", "layouts"), ("softmax", "long_rows"), ("softmax", "regimes"), ("softmax", "variants"),
    ("softmax", "logsumexp_rows"), ("softmax", "large_max"), ("softmax", "huge_max"),
    ("cross_entropy", "hard"), ("cross_entropy", "soft"), ("cross_entropy", "special"), ("cross_entropy", "layouts"),
    ("cross_entropy", "overflow"), ("cross_entropy", "split"), ("cross_entropy", "scale"), ("cross_entropy", "variants"),
]


@pytest.mark.slow
@pytest.mark.parametrize("family,suite", SUITES)
def test_emulated_kernels_match_reference(family, suite, emulator_build_dir):
    assert_runner_ok("run.py", family, suite, build_dir=emulator_build_dir, ok=f"OK {family} {suite}")


TOKEN_LOGPROBS_SUITES = ["sizes", "layouts", "special", "invariance", "ties"]


@pytest.mark.slow
@pytest.mark.parametrize("suite", TOKEN_LOGPROBS_SUITES)
def test_emulated_token_logprob_kernels_match_reference(suite, emulator_build_dir):
    assert_runner_ok("run_token_logprobs.py", suite, build_dir=emulator_build_dir, ok=f"OK token_logprobs {suite}")
