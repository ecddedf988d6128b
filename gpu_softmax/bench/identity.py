"""The run's identity: installed versions of the baselines and tools, the commit, the device."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
from pathlib import Path

# Module -> the distributions that may provide it, first found wins.
_DISTS = {
    "torch": ["torch"],
    "triton": ["triton", "pytorch-triton"],
    "cupyx": ["cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy"],
    "liger_kernel": ["liger-kernel", "liger-kernel-nightly"],
    "quack": ["quack-kernels", "quack"],
    "matplotlib": ["matplotlib"],
    "rich": ["rich"],
    "tqdm": ["tqdm"],
}


def _dist_version(dists: list[str]) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except Exception:
            continue
    return None


def _importable(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def package_versions() -> dict[str, str | None]:
    """Installed version of each baseline (and of the optional bench tools); None when absent.

    Read from the installed distributions' metadata: nothing is imported.
    """
    out: dict[str, str | None] = {}
    for mod, dists in _DISTS.items():
        out[mod] = _dist_version(dists)
        if out[mod] is None and _importable("cupy" if mod == "cupyx" else mod):
            out[mod] = "present (version unknown)"
    out["gpu_softmax.torch"] = "present" if _importable("gpu_softmax.torch") else None
    return out


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except Exception:
        return None


def source_identity() -> dict:
    """The commit and the git tree of cuda_src/ ("-dirty" when it has uncommitted edits);
    None for both outside a git checkout (an installed wheel)."""
    tree = _git("rev-parse", "HEAD:cuda_src")
    dirty = _git("status", "--porcelain", "--", "cuda_src")
    return {"commit": _git("rev-parse", "HEAD"), "cuda_src_tree": (tree + "-dirty") if tree and dirty else tree}


def device_info() -> dict:
    from gpu_softmax._cuda.info import backend_info

    info = backend_info()
    out = {k: info.get(k) for k in ("cupy", "cuda_runtime", "cuda_driver", "nvrtc", "python", "numpy")}
    out["devices"] = info.get("devices")
    return out
