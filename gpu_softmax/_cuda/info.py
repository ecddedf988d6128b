"""What this machine can run: used by `gpu-softmax info`, the CLI's backend choice,
the device-check script and `gpu_softmax.backend_info()`."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import numpy as np

from . import loader

# gpu_softmax is installed from its checkout (it is not on a package index), so the
# hints name the checkout's extras.
GPU_INSTALL = 'pip install ".[cuda12x]" (CUDA 12 driver) or ".[cuda13x]" (CUDA 13 driver) from the checkout'
TORCH_INSTALL = 'pip install ".[torch]" from the checkout'
NO_GPU = "no NVIDIA GPU found"
INSTALL_HINT = f"for the CUDA kernels, on a machine with an NVIDIA GPU: {GPU_INSTALL}"

BASELINES = ("torch", "triton", "cupyx", "liger_kernel", "quack")


def _present(mod: str) -> bool:
    if mod == "cupyx":
        mod = "cupy"
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def gpu_status() -> tuple[bool, str]:
    """(usable, reason): whether CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
    except Exception as exc:
        return False, f"CuPy is not installed or does not import ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, _device_count_failure(exc)
    if n < 1:
        return False, NO_GPU
    return True, f"{n} CUDA device(s)"


def _nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver's CUDA library can be loaded on this machine."""
    import ctypes
    import ctypes.util

    for name in ("libcuda.so.1", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return ctypes.util.find_library("cuda") is not None


def _device_count_failure(exc: Exception) -> str:
    # Without a driver the CUDA runtime reports cudaErrorInsufficientDriver, which
    # reads as "upgrade your driver" on a machine that has no GPU at all.
    if getattr(exc, "status", None) == 100 or not _nvidia_driver_present():  # 100: cudaErrorNoDevice
        return NO_GPU
    return (f"CuPy cannot use the NVIDIA driver ({type(exc).__name__}: {exc}); update the driver, or install "
            "the CuPy extra that matches it (cuda12x for a CUDA 12 driver, cuda13x for CUDA 13)")


def install_hint() -> str:
    """What to do to run the CUDA kernels, given what is installed here."""
    if not _present("cupy"):
        return INSTALL_HINT
    return "CuPy is installed: the CUDA kernels run on a machine with an NVIDIA GPU and its driver"


def torch_bridge_status() -> tuple[bool, str]:
    """(importable, detail) for gpu_softmax.torch: whether torch itself imports and the
    bridge's module is present. The bridge is not imported here (a lower layer does
    not reach up into it)."""
    try:
        import torch
    except Exception as exc:
        if not _present("torch"):
            return False, f"not importable: torch is not installed ({TORCH_INSTALL})"
        return False, f"not importable: torch does not import ({type(exc).__name__}: {exc})"
    if not _present("gpu_softmax.torch"):
        return False, "not importable: the gpu_softmax.torch module is missing from this install"
    return True, f"importable (torch {torch.__version__})"


def device_name(index: int = 0) -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def backend_info() -> dict:
    info: dict = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernel_sources": None,
        "cupy": None,
        "gpu": False,
        "gpu_reason": None,
        "devices": [],
        "cuda_runtime": None,
        "cuda_driver": None,
        "nvrtc": None,
        "compile_cache": os.environ.get("CUPY_CACHE_DIR", str(Path.home() / ".cupy" / "kernel_cache")),
        "baselines": {b: _present(b) for b in BASELINES},
    }
    try:
        info["kernel_sources"] = str(loader.cuda_src_dir())
    except FileNotFoundError as exc:
        info["kernel_sources"] = f"MISSING: {exc}"
    ok, reason = gpu_status()
    info["gpu"], info["gpu_reason"] = ok, reason
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except Exception:
        return info
    try:
        from cupy_backends.cuda.libs import nvrtc

        info["nvrtc"] = ".".join(map(str, nvrtc.getVersion()))
    except Exception as exc:
        info["nvrtc"] = f"unavailable ({type(exc).__name__})"
    if ok:
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            info["devices"].append(
                {
                    "index": i,
                    "name": device_name(i),
                    "compute_capability": f"{props['major']}.{props['minor']}",
                    "multiprocessors": props["multiProcessorCount"],
                    "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
                }
            )
    return info
