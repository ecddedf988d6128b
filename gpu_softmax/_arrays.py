"""What the argument checks know of an array: its kind (NumPy, CuPy, a stand-in), its
dtype, and the one stand-in type for arrays the checks should see but not read.
Re-exported by :mod:`gpu_softmax._checks`, which the backends import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def result_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype of per-row statistics (losses, logsumexp): the accumulation dtype."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# ----------------------------------------------------------------------------------
# array kinds


@dataclass(frozen=True)
class ArrayDesc:
    """What the checks read of an array, for callers whose arrays are neither NumPy
    nor CuPy (the torch bridge describes its tensors): shape, a NumPy dtype, and
    the kind the caller dispatches on. Building one costs far less than a stand-in
    array, and the checks raise the same errors for it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str = "torch"

    @property
    def ndim(self) -> int:
        return len(self.shape)


def standin(a: Any, shape: tuple[int, ...] | None = None, dtype: Any = None) -> ArrayDesc | None:
    """The one stand-in for an array the checks should see but not read: a's shape (or
    `shape`) and dtype (or `dtype`), kind "standin" (callers put the real kind back)."""
    if a is None:
        return None
    shape = tuple(int(n) for n in (a.shape if shape is None else shape))
    return ArrayDesc(shape, np.dtype(a.dtype if dtype is None else dtype), "standin")


def _is_cupy_array(a: Any) -> bool:
    # Checked by type name so that NumPy-only installs never import CuPy.
    mod = type(a).__module__ or ""
    return type(a).__name__ == "ndarray" and mod.split(".")[0] == "cupy"


# NumPy subclasses whose data mean what a plain ndarray's would. Others (masked
# arrays, np.matrix, ...) carry meaning the kernels would silently drop: a mask, or
# 2-D-only results that break keepdims.
_PLAIN_SUBCLASSES = (np.memmap,)


def array_kind(a: Any, name: str) -> str:
    """'numpy' or 'cupy'; TypeError for anything else, NumPy subclasses included."""
    if isinstance(a, np.ndarray):
        # (the test emulator's stand-in for cupy.ndarray is a NumPy subclass: let it by)
        if type(a) is not np.ndarray and not isinstance(a, _PLAIN_SUBCLASSES) and not _is_cupy_array(a):
            cls = f"{type(a).__module__}.{type(a).__qualname__}"
            if isinstance(a, np.ma.MaskedArray):
                why, fix = "its mask would be ignored", f"{name}.filled(value) or np.asarray({name})"
            elif isinstance(a, np.matrix):
                why, fix = "it stays 2-D, so results cannot drop an axis", f"np.asarray({name})"
            else:
                why, fix = "what it adds to the data would be ignored", f"np.asarray({name})"
            raise TypeError(
                f"{name} is a {cls}, a NumPy array subclass gpu_softmax does not support ({why}); "
                f"pass a plain ndarray: {fix}"
            )
        return "numpy"
    if isinstance(a, ArrayDesc):
        return a.kind
    if _is_cupy_array(a):
        return "cupy"
    raise TypeError(
        f"{name} must be a NumPy or CuPy array, got {type(a).__module__}.{type(a).__name__}"
    )


def common_kind(named_arrays: dict[str, Any]) -> str:
    """The one array module shared by all given (non-None) arrays."""
    kinds = {name: array_kind(a, name) for name, a in named_arrays.items() if a is not None}
    found = set(kinds.values())
    if len(found) > 1:
        found.discard("standin")  # a stand-in takes the kind of the real arrays beside it
    if len(found) > 1:
        listing = ", ".join(f"{n} is {k}" for n, k in kinds.items() if k != "standin")
        raise TypeError(
            f"cannot mix CuPy and NumPy arrays in one call ({listing}); "
            "move them to one side with cupy.asarray or cupy.asnumpy"
        )
    if kinds:
        kind = found.pop()
        if kind == "cupy":
            devices = {n: named_arrays[n].device.id for n, k in kinds.items() if k == "cupy"}
            if len(set(devices.values())) > 1:
                listing = ", ".join(f"{n} on device {d}" for n, d in devices.items())
                raise ValueError(f"all arrays must be on one GPU ({listing})")
        return kind
    return "numpy"


def dtype_name(dtype: Any) -> str:
    """How an error names a dtype: a bridge's stand-in for a dtype NumPy lacks (torch's
    float8 types, ...) carries the real name in its metadata."""
    meta = getattr(dtype, "metadata", None) or {}
    return meta.get("name", str(dtype))


def require_native(dtype: Any, name: str) -> None:
    """TypeError for floats in a non-native byte order (the kernels read native floats; a
    byte-swapped array would otherwise be rejected as "got dtype >f4" with no way out)."""
    dt = np.dtype(dtype)
    if dt.kind == "f" and not dt.isnative:
        order = "big" if dt.byteorder == ">" else "little"
        raise TypeError(
            f"{name} has dtype {dt.str}: {order}-endian {dt.newbyteorder('=').name} is not supported; "
            f"use {name}.astype('={dt.kind}{dt.itemsize}')"
        )


def require_float(a: Any, name: str) -> None:
    if a.dtype in FLOAT_DTYPES:  # (the common case, decided first: these are native-endian)
        return
    require_native(a.dtype, name)
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, float32 or float64, got dtype {dtype_name(a.dtype)}"
        )
