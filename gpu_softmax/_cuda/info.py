"""What this machine can run: used by `gpu-softmax info`, the CLI's backend choice,
the device-check script and `gpu_softmax.backend_info()`."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

import numpy as np

from . import loader

# The hints name the checkout's extras where there is a checkout, and otherwise (a
# wheel installed elsewhere) the packages those extras hold, which install anywhere.
CUDA12_PACKAGES = "cupy-cuda12x nvidia-cuda-nvrtc-cu12"
CUDA13_PACKAGES = "cupy-cuda13x nvidia-cuda-nvrtc"
NO_GPU = "no NVIDIA GPU found"
# The CUDA 13 driver branch starts at R580; CUDA 12 drivers are R525 and newer.
DRIVER_NEEDS = {12: "R525 or newer", 13: "R580 or newer"}
# A CUDA 12 build of torch: PyTorch's own index serves one per release; the package
# index's plain `torch` wheel is a CUDA 13 build (docs/install.md).
TORCH_CUDA12 = 'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cu126'


def _in_checkout() -> bool:
    """Whether this package runs from its source checkout, where ".[extra]" installs work."""
    root = Path(__file__).resolve().parents[2]
    return (root / "pyproject.toml").is_file() and (root / "cuda_src").is_dir()


def gpu_install() -> str:
    if _in_checkout():
        return (f'pip install -e ".[cuda12x]" in the checkout (a CUDA 12 or 13 driver, {DRIVER_NEEDS[12]}), or '
                f'-e ".[cuda13x]" (the CUDA 13 stack: a CUDA 13 driver, {DRIVER_NEEDS[13]})')
    return (f"pip install {CUDA12_PACKAGES} (a CUDA 12 or 13 driver, {DRIVER_NEEDS[12]}), or {CUDA13_PACKAGES} "
            f"(the CUDA 13 stack: a CUDA 13 driver, {DRIVER_NEEDS[13]})")


def torch_install() -> str:
    if _in_checkout():
        return 'pip install -e ".[torch]" in the checkout'
    return 'pip install "torch>=2.4"'


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
    return (f"CuPy cannot use the NVIDIA driver ({type(exc).__name__}: {exc}); update the driver (CUDA 13 needs "
            f"{DRIVER_NEEDS[13]}), or use CuPy for CUDA 12 (the cuda12x extra), which runs under CUDA 12 and 13 drivers")


def install_hint() -> str:
    """What to do to run the CUDA kernels, given what is installed here."""
    if not _present("cupy"):
        return f"for the CUDA kernels, on a machine with an NVIDIA GPU: {gpu_install()}"
    return ("CuPy is installed, but the CUDA kernels did not run here: they need a machine with an NVIDIA GPU "
            "and its driver")


def _cuda_text(version: int) -> str:
    """12080 (CUDA's integer form) as "12.8"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _cuda_int(text: str) -> int:
    """torch.version.cuda's "13.0" as 13000."""
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major) * 1000 + int(minor) * 10


def cuda_version_warnings(torch_cuda: str | None, driver: int | None, cupy_cuda: int | None) -> list[str]:
    """What is wrong with this combination of CUDA builds, as sentences (empty when nothing).

    torch_cuda: torch.version.cuda ("13.0"; None for a CPU build or no torch); driver: the
    newest CUDA the driver supports (12080; None without a driver); cupy_cuda: the CUDA
    CuPy is built for (12090; None without CuPy).
    """
    out = []
    if torch_cuda and driver:
        wanted = _cuda_int(torch_cuda)
        if wanted // 1000 > driver // 1000:
            fix = (TORCH_CUDA12 if driver // 1000 == 12 else "a torch build for this driver's CUDA")
            out.append(f"torch is built for CUDA {torch_cuda}, newer than this driver supports (CUDA "
                       f"{_cuda_text(driver)}): torch cannot use the GPU, so the torch GPU tests skip and the torch "
                       f"baselines are missing. Install {fix}, or update the driver (CUDA {wanted // 1000} needs "
                       f"{DRIVER_NEEDS.get(wanted // 1000, 'a newer driver')})")
        elif wanted > driver:
            out.append(f"torch is built for CUDA {torch_cuda}, newer than this driver's CUDA {_cuda_text(driver)}: it "
                       "runs only through CUDA's minor-version compatibility, where a kernel that needs PTX JIT "
                       "compilation fails; updating the driver removes the doubt")
    if cupy_cuda and driver and cupy_cuda // 1000 > driver // 1000:
        out.append(f"CuPy is built for CUDA {_cuda_text(cupy_cuda)}, newer than this driver supports (CUDA "
                   f"{_cuda_text(driver)}): use CuPy for CUDA 12 ({CUDA12_PACKAGES}, the cuda12x extra)")
    if torch_cuda and cupy_cuda and _cuda_int(torch_cuda) // 1000 != cupy_cuda // 1000:
        out.append(f"torch uses CUDA {torch_cuda} and CuPy CUDA {_cuda_text(cupy_cuda)}: one process then loads two "
                   "CUDA runtimes, which needs a driver for the newer one and is not the single stack the project's "
                   "GPU measurements used. For one stack install matching builds: torch cu130 with the cuda13x "
                   "extra (a CUDA 13 driver), or a CUDA 12 torch with the cuda12x extra (docs/install.md)")
    return out


def cuda_versions() -> dict:
    """The versions cuda_version_warnings compares, read from this machine (None where absent)."""
    found = {"torch_cuda": None, "driver": None, "cupy_cuda": None}
    try:
        import cupy

        found["cupy_cuda"] = int(cupy.cuda.runtime.runtimeGetVersion()) or None
        found["driver"] = int(cupy.cuda.runtime.driverGetVersion()) or None  # 0: no driver
    except Exception:
        pass
    if _present("torch"):
        try:
            import torch

            found["torch_cuda"] = torch.version.cuda
        except Exception:
            pass
    return found


def torch_bridge_status() -> tuple[bool, str]:
    """(importable, detail) for gpu_softmax.torch: whether torch itself imports and the
    bridge's module is present. The bridge is not imported here (a lower layer does
    not reach up into it)."""
    try:
        import torch
    except Exception as exc:
        if not _present("torch"):
            return False, f"not importable: torch is not installed ({torch_install()})"
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
