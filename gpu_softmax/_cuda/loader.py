"""Finds the kernel sources, builds one cupy.RawModule per (op family, device), lazily.

The `.cu` file of a family includes `common.cuh`; we paste the header's text in
place of that include before handing the source to CuPy, so the text CuPy hashes
for its on-disk cache carries the header too: a header edit recompiles, and a
cached module is never stale. Entry points are `extern "C"`, so their names are
stable and no name-expression lookup is needed (disk-cacheable on every CuPy).
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path

from . import kernels

HEADER = "common.cuh"
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"common\.cuh"[ \t]*$', re.MULTILINE)

# Options we pass; CuPy itself adds -ftz=true, --device-as-default-execution-space
# and the -arch of the current device. The compile check adds the same three.
COMPILE_OPTIONS: tuple[str, ...] = ("-std=c++17",)
CUPY_IMPLIED_OPTIONS: tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")


def cuda_src_dir() -> Path:
    """Directory holding the .cu/.cuh files.

    In a wheel they are package data (gpu_softmax/cuda_src); in a source checkout
    run with PYTHONPATH=. they are the repository's top-level cuda_src/.
    """
    here = Path(__file__).resolve().parent.parent  # the gpu_softmax package
    for candidate in (here / "cuda_src", here.parent / "cuda_src"):
        if (candidate / HEADER).is_file():
            return candidate
    raise FileNotFoundError(
        f"gpu_softmax kernel sources not found: looked for {HEADER} in "
        f"{here / 'cuda_src'} (installed wheel) and {here.parent / 'cuda_src'} (source checkout)"
    )


def families() -> list[str]:
    """Every op family: one `<family>.cu` file each."""
    return sorted(p.stem for p in cuda_src_dir().glob("*.cu"))


@lru_cache(maxsize=None)
def module_source(family: str) -> str:
    """The full text compiled for one family: its .cu with common.cuh pasted in."""
    src_dir = cuda_src_dir()
    path = src_dir / f"{family}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"no kernel source for op family {family!r} at {path}")
    body = path.read_text()
    header = (src_dir / HEADER).read_text()
    banner = f"// ---- {HEADER} (pasted by gpu_softmax._cuda.loader) ----\n"
    pasted, n = _INCLUDE_RE.subn(lambda _: banner + header + f"\n// ---- end {HEADER} ----", body, count=1)
    if n != 1:
        raise RuntimeError(f'{path} must #include "{HEADER}" exactly once')
    return f"// gpu_softmax: {family}.cu\n" + pasted + _generated_entries(family)


def _generated_entries(family: str) -> str:
    """The family's entry points, generated from the kernel table (kernels.py) and
    appended, so that the text CuPy, the compile check and the CPU emulator compile
    is one and the same."""
    if family not in kernels.FAMILIES:
        return ""
    return kernels.generated_entries(family)


def extern_c_kernels(source: str) -> list[str]:
    """Names of the extern "C" __global__ entry points in a source text."""
    # Macro bodies hold the entry-point template, not entry points: drop #define
    # blocks (with their backslash continuations) before looking.
    body = re.sub(r"^[ \t]*#[ \t]*define(?:[^\n]*\\\n)*[^\n]*$", "", source, flags=re.MULTILINE)
    lb = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    pattern = re.compile(r'extern\s+"C"\s+__global__\s+' + lb + r"void\s+" + lb + r"(\w+)\s*\(")
    names = pattern.findall(body)
    # Entry points made by the GS_* instantiation macros carry their names as
    # the macro's first argument.
    names += re.findall(r"^\s*GS_ENTRY\w*\(\s*(\w+)\s*,", body, re.MULTILINE)
    return sorted(set(names))


_modules: dict[tuple[str, int], object] = {}
_lock = threading.Lock()


def get_module(family: str):
    """The RawModule of `family` on the current CuPy device (compiled on first use)."""
    import cupy

    key = (family, cupy.cuda.Device().id)
    mod = _modules.get(key)
    if mod is None:
        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = cupy.RawModule(code=module_source(family), options=COMPILE_OPTIONS)
                _modules[key] = mod
    return mod


def get_function(family: str, name: str):
    return get_module(family).get_function(name)
