"""The one home of the torch <-> NumPy/CuPy crossing, shared by :mod:`gpu_softmax.torch`
and :mod:`gpu_softmax.torch.parallel` (neither imports the other for it).

- **Checks.** :func:`describe` turns a tensor into an :class:`_checks.ArrayDesc`
  (shape, dtype, kind): the shared checks of :mod:`gpu_softmax._checks` run on it
  and raise the NumPy/CuPy API's error texts. bfloat16 is described as float16
  (the checks only look at dtype kind and shape).
- **CPU.** Tensors cross to NumPy as zero-copy views (bfloat16 as a float32 copy)
  and results come back with :func:`from_numpy`.
- **CUDA.** Tensors cross to CuPy through DLPack (bfloat16 as uint16 words);
  :func:`cupy_on` makes CuPy launch on PyTorch's current stream of the tensor's
  device and allocate from PyTorch's caching allocator on that stream (CUDA graph
  capture then puts the launchers' buffers in the graph's private pool).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import ArrayDesc

# ----------------------------------------------------------------------------------
# arguments


def require_tensors(**named: Any) -> None:
    """TypeError for a non-tensor; ValueError for tensors on different devices."""
    device = None
    for t in named.values():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            break
        if device is None:
            device = t.device
        elif t.device != device:
            break
    else:
        return
    devices = {}
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__module__}.{type(t).__name__}")
        devices[name] = t.device
    listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
    raise ValueError(f"all tensors must be on one device ({listing})")


_DESC_DTYPE: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype(np.float16),
    torch.bfloat16: np.dtype(np.float16),  # described as float16: the checks read kind and shape only
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


# ints, bool, complex: a table, not tensor.numpy(), which fails inside torch.func transforms
_DESC_DTYPE.update({
    getattr(torch, name): np.dtype(name)
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                 "complex64", "complex128")
    if hasattr(torch, name)
})


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    dt = _DESC_DTYPE.get(dtype)
    if dt is None:
        # no NumPy equivalent (float8, ...): the checks' type error names the torch dtype
        dt = np.dtype(object, metadata={"name": str(dtype)})
        _DESC_DTYPE[dtype] = dt
    return dt


def describe(t: Tensor | None) -> ArrayDesc | None:
    """The (shape, dtype, kind) description the shared checks run on."""
    if t is None:
        return None
    return ArrayDesc(tuple(t.shape), _numpy_dtype(t.dtype))


# The bridge has no validate switch: on CPU it checks targets, on CUDA it does not (no host sync).
CPU_TARGETS_HINT = ("gpu_softmax.torch checks targets on CPU tensors (on CUDA tensors it does not, to avoid a "
                    "host sync, and such rows get a NaN loss)")


def device_kind(t: Tensor) -> str:
    """'cpu' (the NumPy reference) or 'cuda' (our kernels); one place to dispatch on."""
    return t.device.type


def unsupported(t: Tensor) -> NotImplementedError:
    return NotImplementedError(f"gpu_softmax.torch runs on CPU and CUDA tensors, got device {t.device}")


def acc_dtype(t: Tensor) -> torch.dtype:
    """The kernels' accumulation dtype for t's storage (loss statistics, grad_output)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------
# CPU: NumPy views of tensors, and back


def to_numpy(t: Tensor | None) -> np.ndarray | None:
    """Zero-copy NumPy view of a CPU tensor; bfloat16 (no NumPy dtype) as a float32 copy."""
    if t is None:
        return None
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy()
    return t.numpy()


def from_numpy(a: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A contiguous tensor of `dtype` from a reference result (which never aliases an input)."""
    a = np.asarray(a)
    if not a.flags.c_contiguous or not a.flags.writeable:
        a = a.copy(order="C")
    return torch.from_numpy(a).to(dtype)


# ----------------------------------------------------------------------------------
# CUDA: DLPack both ways, PyTorch's stream and allocator

_allocator = None


def torch_allocator():
    """A CuPy allocator drawing from PyTorch's caching allocator on its current stream."""
    global _allocator
    if _allocator is None:
        import cupy

        def malloc(size: int, device_id: int) -> int:
            if size == 0:
                return 0
            return torch.cuda.caching_allocator_alloc(size, device_id, torch.cuda.current_stream(device_id))

        def free(ptr: int, device_id: int) -> None:
            if ptr:
                torch.cuda.caching_allocator_delete(ptr)

        _allocator = cupy.cuda.memory.PythonFunctionAllocator(malloc, free)
    return _allocator


@contextlib.contextmanager
def cupy_on(device: torch.device):
    """CuPy on `device`, launching on PyTorch's current stream there, allocating through torch."""
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with torch.cuda.device(index), cupy.cuda.Device(index):
        # CuPy >= 14 takes torch's stream through the CUDA stream protocol (and
        # deprecates ExternalStream); older CuPy wraps the raw pointer.
        from_external = getattr(cupy.cuda.Stream, "from_external", None)
        if from_external is not None and hasattr(stream, "__cuda_stream__"):
            cp_stream = from_external(stream)
        else:
            cp_stream = cupy.cuda.ExternalStream(stream.cuda_stream, index)
        with cp_stream, cupy.cuda.using_allocator(torch_allocator().malloc):
            yield


def to_cupy(t: Tensor | None):
    """Zero-copy CuPy view of a CUDA tensor; bfloat16 as uint16 words. Call inside cupy_on."""
    if t is None:
        return None
    import cupy

    t = t.detach()
    if t.dtype == torch.bfloat16:
        return cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16)
    return cupy.from_dlpack(t)


def from_cupy(a, dtype: torch.dtype) -> Tensor:
    """Torch tensor over a launcher's CuPy result (zero copy), contiguous, of `dtype`.

    uint16 results are bfloat16 words. Call inside cupy_on (same stream: no sync).
    """
    import cupy

    if a.dtype == np.uint16:
        t = torch.from_dlpack(a.view(cupy.int16)).view(torch.bfloat16)
    else:
        t = torch.from_dlpack(a)
    return t.to(dtype).contiguous()


def storage(t: Tensor) -> str | None:
    """The launchers' `storage` argument: bfloat16 travels as uint16 words."""
    return "bfloat16" if t.dtype == torch.bfloat16 else None


_STORAGE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                 torch.float64: "float64"}


def storage_name(t: Tensor) -> str:
    """The kernels' name of t's dtype (results asked for in the logits' own storage)."""
    return _STORAGE_NAME[t.dtype]


def acc_float(t: Tensor | None) -> Tensor | None:
    """bf16 weights/soft targets as float32 (CuPy cannot hold bf16 there)."""
    return t.float() if t is not None and t.dtype == torch.bfloat16 else t
