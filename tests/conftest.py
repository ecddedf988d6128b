"""Shared fixtures. GPU tests are marked `gpu` and skip with a reason without a device."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpu_softmax._cuda.info import gpu_status


def _gpu_reason() -> str | None:
    ok, reason = gpu_status()
    return None if ok else reason


GPU_SKIP_REASON = _gpu_reason()

# Largest input (elements) a GPU test compares against the float64 reference on the
# CPU. The reference, not the kernel, dominates a GPU test run; the device check
# lowers this to fit its time box (benchmarks/device_check.py), a soak raises it.
# Every row length and row count of the sweeps stays covered either way.
GPU_TEST_MAX_ELEMENTS = int(os.environ.get("GPU_SOFTMAX_TEST_MAX_ELEMENTS", 1 << 24))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        # An emulated run keeps every core busy (one host thread per core runs its fibers):
        # two side by side only compete for the cores. Under `--dist loadgroup` they share
        # one xdist worker, one after the other.
        if "emulator_build_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("emulator"))
    # The slow tests first, so that no worker starts a minute-long test when the others are done.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_runtest_setup(item):
    # Skipped from here rather than by a mark, so that `-ra` folds every GPU test into
    # one summary line (a mark reports each test function's own location).
    if GPU_SKIP_REASON is not None and "gpu" in item.keywords:
        pytest.skip(f"gpu tests (marked gpu) need an NVIDIA GPU: {GPU_SKIP_REASON}")


@pytest.fixture
def cp():
    """The cupy module, for tests marked gpu."""
    if GPU_SKIP_REASON is not None:
        pytest.skip(f"gpu test: {GPU_SKIP_REASON}")
    import cupy

    return cupy


@pytest.fixture(scope="session")
def emulator_build_dir(tmp_path_factory) -> Path:
    """One directory for the host emulator's compiled kernel modules, shared by every test
    and every pytest-xdist worker of a run (builds are keyed by the source's hash and
    made once, under a lock: tests/emulator/harness.py)."""
    if shutil.which("g++") is None:
        msg = "g++ not found: the kernel emulator needs a C++20 compiler"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    # Under xdist each worker's basetemp is a folder of the run's basetemp.
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path = base / "gs-emu"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def rng(request):
    # Fresh inputs on every run, but a failing seed is printed so it can be replayed.
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def host_handover():
    """The torch bridge's CuPy hand-over with NumPy standing in for CuPy (to_dev, from_dev):
    bf16 crosses as 16-bit words, as it does through DLPack. For tests that run the
    bridge's CUDA branch on the CPU."""
    import types

    torch = pytest.importorskip("torch")

    def to_dev(t):
        if t is None:
            return None
        t = t.detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()

    def from_dev(a, dtype):
        a = np.array(a, order="C")
        if a.dtype == np.uint16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).to(dtype).contiguous()
        return torch.from_numpy(a).to(dtype).contiguous()

    return types.SimpleNamespace(to_dev=to_dev, from_dev=from_dev)
