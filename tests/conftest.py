"""Shared fixtures. GPU tests are marked `gpu` and skip with a reason without a device."""

from __future__ import annotations

import os

import numpy as np
import pytest


def _gpu_reason() -> str | None:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"CuPy is not importable ({type(exc).__name__}: {exc}); install gpu-softmax[cuda12x] or [cuda13x]"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    if n < 1:
        return "no CUDA device"
    return None


GPU_SKIP_REASON = _gpu_reason()

# Largest input (elements) a GPU test compares against the float64 reference on the
# CPU. The reference, not the kernel, dominates a GPU test run; the device check
# lowers this to fit its time box (benchmarks/device_check.py), a soak raises it.
# Every row length and row count of the sweeps stays covered either way.
GPU_TEST_MAX_ELEMENTS = int(os.environ.get("GPU_SOFTMAX_TEST_MAX_ELEMENTS", 1 << 24))


def pytest_collection_modifyitems(config, items):
    if GPU_SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=f"gpu test: {GPU_SKIP_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cp():
    """The cupy module, for tests marked gpu."""
    if GPU_SKIP_REASON is not None:
        pytest.skip(f"gpu test: {GPU_SKIP_REASON}")
    import cupy

    return cupy


@pytest.fixture
def rng(request):
    # Fresh inputs on every run, but a failing seed is printed so it can be replayed.
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
