"""The run's identity: installed versions of the baselines and tools, the commit, the device."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
from pathlib import Path

import gpu_softmax

COMMIT_ENV = "GPU_SOFTMAX_COMMIT"  # set by whoever builds from a checkout without .git (the container's build arg)
_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when running from one

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
    # The bridge's file ships with every install; it works only with torch, so it is
    # reported as torch is (the convention of `gpu-softmax info`).
    out["gpu_softmax.torch"] = out["torch"] if _importable("gpu_softmax.torch") else None
    return out


def package_version() -> str:
    """The installed gpu-softmax distribution's version, else the imported package's."""
    try:
        return importlib.metadata.version("gpu-softmax")
    except Exception:
        return gpu_softmax.__version__


def _in_checkout() -> bool:
    """Running from this project's checkout (not an install that happens to sit in some
    other git repository)."""
    return (_ROOT / "pyproject.toml").is_file() and (_ROOT / "cuda_src").is_dir() and (_ROOT / ".git").exists()


def _git(*args: str) -> str | None:
    if not _in_checkout():
        return None
    try:
        return subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except Exception:
        return None


def source_identity() -> dict:
    """The installed version, the commit it was built from and the git tree of cuda_src/
    ("-dirty" when it has uncommitted edits). The commit is $GPU_SOFTMAX_COMMIT where set,
    else git's in a checkout, else None (a wheel built without either); `commit_source`
    says which."""
    tree = _git("rev-parse", "HEAD:cuda_src")
    dirty = _git("status", "--porcelain", "--", "cuda_src")
    env_commit = os.environ.get(COMMIT_ENV, "").strip()
    git_commit = None if env_commit else _git("rev-parse", "HEAD")
    source = COMMIT_ENV if env_commit else ("git" if git_commit else None)
    return {"package_version": package_version(), "commit": env_commit or git_commit, "commit_source": source,
            "cuda_src_tree": (tree + "-dirty") if tree and dirty else tree}


def device_info() -> dict:
    from gpu_softmax._cuda.info import backend_info

    info = backend_info()
    out = {k: info.get(k) for k in ("cupy", "cuda_runtime", "cuda_driver", "nvrtc", "python", "numpy")}
    out["devices"] = info.get("devices")
    return out
