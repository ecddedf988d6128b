"""The timed inputs: fresh random arguments (never zeros), rotated beyond L2, and rows read back."""

from __future__ import annotations

import math

import numpy as np

import gpu_softmax as gs


def make_inputs(xp, op: str, rows: int, cols: int, dtype, rng) -> tuple:
    """Fresh random arguments (never zeros) for one call of `op` (NumPy or CuPy)."""
    if xp is np:
        x = xp.asarray((rng.standard_normal((rows, cols), dtype=np.float32) * 3).astype(dtype))
    else:  # generated on the device: no host round trip for gigabyte inputs
        x = (xp.random.standard_normal((rows, cols), dtype=xp.float32) * 3).astype(dtype)
    if op in ("softmax_backward", "log_softmax_backward"):
        if xp is np:
            gy = xp.asarray(rng.standard_normal((rows, cols), dtype=np.float32).astype(dtype))
        else:
            gy = xp.random.standard_normal((rows, cols), dtype=xp.float32).astype(dtype)
        y = gs.softmax(x) if op == "softmax_backward" else gs.log_softmax(x)
        return (gy, y)
    if op.startswith("cross_entropy"):
        t = xp.asarray(rng.integers(0, cols, size=rows, dtype=np.int64))
        return (x, t)
    return (x,)


def make_torch_inputs(op: str, rows: int, cols: int, dtype: str) -> tuple:
    """The same arguments as torch CUDA tensors (for dtypes CuPy lacks: bfloat16)."""
    import torch

    tdt = getattr(torch, dtype)
    x = (torch.randn(rows, cols, device="cuda", dtype=torch.float32) * 3).to(tdt)
    if op in ("softmax_backward", "log_softmax_backward"):
        gy = torch.randn(rows, cols, device="cuda", dtype=torch.float32).to(tdt)
        y = torch.softmax(x, -1) if op == "softmax_backward" else torch.log_softmax(x, -1)
        return (gy, y)
    if op.startswith("cross_entropy"):
        return (x, torch.randint(0, cols, (rows,), device="cuda", dtype=torch.int64))
    return (x,)


def n_arg_sets(l2: int, set_bytes: int) -> int:
    """Argument sets to rotate so that one pass over them is at least twice L2."""
    if l2 <= 0:
        return 1
    return max(2, min(64, math.ceil(2 * l2 / max(set_bytes, 1)) + 1))


def to_numpy(a) -> np.ndarray:
    """A NumPy copy of a NumPy, CuPy or torch array (bfloat16 widened to float32)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch
        a = a.detach()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return a.cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def take_rows(a, idx: list[int]) -> np.ndarray:
    """Rows `idx` of a NumPy, CuPy or torch array, as NumPy (only those rows cross to the host)."""
    if isinstance(a, np.ndarray):
        return a[idx]
    if hasattr(a, "detach"):
        import torch

        return to_numpy(a[torch.as_tensor(idx, device=a.device)])
    import cupy

    return to_numpy(a[cupy.asarray(idx)])
