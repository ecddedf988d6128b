"""What this machine can run: used by `gpu-softmax info`, the CLI's backend choice,
the device-check script and `gpu_softmax.backend_info()`."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import numpy as np

INSTALL_HINT = (
    'for the GPU backend install CuPy with its NVRTC: pip install "gpu-softmax[cuda12x]" '
    '(CUDA 12 driver) or "gpu-softmax[cuda13x]" (CUDA 13 driver), on a machine with an NVIDIA GPU'
)

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
        return False, f"CuPy found no usable CUDA driver/device ({type(exc).__name__}: {exc})"
    if n < 1:
        return False, "CuPy sees no CUDA device"
    return True, f"{n} CUDA device(s)"


def device_name(index: int = 0) -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def backend_info() -> dict:
    from . import loader

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
