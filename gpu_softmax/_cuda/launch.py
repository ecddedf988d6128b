"""Launch helpers shared by the op families' launch modules: the lazy cupy accessor,
device id and SM count, storage dtypes, and the rows-last layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import RowLayout

from .kernels import STORAGES, SUFFIX, VEC  # noqa: F401  (re-exported: the launchers' storage names)

_sm_count: dict[int, int] = {}
_dummies: dict[tuple[int, str], Any] = {}
_cupy = None


def cupy():
    """The cupy module, imported on first use (the package imports without it)."""
    global _cupy
    if _cupy is None:
        import cupy as cp

        _cupy = cp
    return _cupy


def device_id() -> int:
    return cupy().cuda.Device().id


def sm_count() -> int:
    dev = device_id()
    n = _sm_count.get(dev)
    if n is None:
        n = int(cupy().cuda.Device(dev).attributes["MultiProcessorCount"])
        _sm_count[dev] = n
    return n


def dummy(kind: str, dtype) -> Any:
    """Tiny never-touched arrays for pointer arguments a regime does not use."""
    key = (device_id(), kind + np.dtype(dtype).name)
    a = _dummies.get(key)
    if a is None:
        a = cupy().zeros(2, dtype=dtype)
        _dummies[key] = a
    return a


_PLAIN_STORAGE = {np.dtype(n): n for n in ("float16", "float32", "float64")}


def storage_of(dtype, storage: str | None) -> str:
    """Kernel storage name of an array's dtype; `storage="bfloat16"` reads uint16 words as bf16."""
    if storage is None:
        plain = _PLAIN_STORAGE.get(dtype)  # the per-call path: one look-up
        if plain is not None:
            return plain
        name = np.dtype(dtype).name
        if name not in ("float16", "float32", "float64"):
            raise TypeError(f"no kernel for dtype {name}")
        return name
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    want = np.dtype(np.uint16) if storage == "bfloat16" else np.dtype(storage)
    if np.dtype(dtype) != want:
        raise TypeError(f"storage={storage!r} needs {want} data, got {np.dtype(dtype)}")
    return storage


def acc_dtype(storage: str) -> np.dtype:
    return np.dtype(np.float64) if storage == "float64" else np.dtype(np.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def worst_misalignment(ptr: int, cols: int, itemsize: int) -> int:
    """Largest misalignment (elements past a 16-byte boundary) of any row start."""
    vec = 16 // itemsize
    if cols % vec == 0:
        return (ptr % 16) // itemsize
    return vec - 1


def rows_last(a, layout: RowLayout):
    """C-contiguous array whose last axis is the reduced one (a copy only when needed)."""
    if layout.inner != 1:
        a = cupy().moveaxis(a, layout.axis, -1)
    if not a.flags.c_contiguous:
        a = cupy().ascontiguousarray(a)
    if a.data.ptr % a.itemsize:
        a = a.copy()
        if a.data.ptr % a.itemsize:  # pragma: no cover - CuPy allocations are 256-byte aligned
            raise RuntimeError("could not make an element-aligned copy")
    return a


def overlaps(a, b) -> bool:
    a0, b0 = a.data.ptr, b.data.ptr
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes
