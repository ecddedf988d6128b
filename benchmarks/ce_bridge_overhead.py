"""Host (Python) overhead of one cross-entropy training step, launches stubbed, on the CPU.

    PYTHONPATH=. python benchmarks/ce_bridge_overhead.py [--calls N] [--repeats R]

What it times, per call (the fastest of R repeats of N calls):

- ``cupy_api``: ``gpu_softmax.cross_entropy_with_grad`` on CuPy-like arrays (a NumPy
  stand-in module named ``cupy``: argument checks, target/weight preparation, the prep
  and plan steps, argument marshalling) with every kernel launch a no-op;
- ``torch_fwd_bwd``: ``gpu_softmax.torch.cross_entropy(x, t)`` then ``.backward()``
  through the CUDA branch of the bridge (autograd, the custom ops, the description
  checks, record building, the saved-gradient backward), with the launchers stubbed
  to return preallocated outputs and DLPack/stream handling stubbed by NumPy views;
- ``empty_launch``: the stubbed launch itself, the floor both are measured above;
- ``torch_sum_bwd``: ``x.sum().backward()``, torch's own smallest autograd step, as a
  calibration of the machine (a busy CPU inflates every number alike).

It cannot see what needs a GPU: real DLPack exchange, CuPy allocation and stream
objects, kernel launch latency. Those are measured by ``gpu-softmax bench`` on a GPU.
This script installs a fake ``cupy`` module: run it in a process of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Data:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):
    """NumPy array that passes for a CuPy array (module name, .data.ptr, .device)."""

    @property
    def data(self):
        return _Data(self.ctypes.data)

    @property
    def device(self):
        return types.SimpleNamespace(id=0)


ndarray.__module__ = "cupy"


def _wrap(a):
    return a.view(ndarray) if isinstance(a, np.ndarray) and not isinstance(a, ndarray) else a


def install_fake_cupy(n_sm: int = 132):
    cp = types.ModuleType("cupy")
    cp.ndarray = ndarray
    cp.empty = lambda shape, dtype=np.float32: _wrap(np.empty(shape, dtype))
    cp.zeros = lambda shape, dtype=np.float32: _wrap(np.zeros(shape, dtype))
    cp.full = lambda shape, v, dtype=np.float32: _wrap(np.full(shape, v, dtype))
    cp.ascontiguousarray = lambda a, dtype=None: _wrap(np.ascontiguousarray(a, dtype=dtype))
    cp.moveaxis = lambda a, s, d: _wrap(np.moveaxis(a, s, d))
    cp.where = lambda *a: _wrap(np.where(*a))
    cuda = types.ModuleType("cupy.cuda")
    attrs = {"MultiProcessorCount": n_sm, "CooperativeLaunch": 1}
    cuda.Device = lambda *a: types.SimpleNamespace(id=0, attributes=attrs)
    cuda.get_current_stream = lambda: None
    cp.cuda = cuda
    sys.modules["cupy"] = cp
    sys.modules["cupy.cuda"] = cuda
    return cp


def _per_call(fn, calls: int, repeats: int) -> float:
    for _ in range(max(10, calls // 10)):
        fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t0) / calls)
    return min(runs)  # contention only ever adds time: the fastest repeat is the cleanest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=1000)
    args = ap.parse_args(argv)

    cp = install_fake_cupy()
    import gpu_softmax
    from gpu_softmax import _arrays, _checks
    from gpu_softmax._cuda import cross_entropy as ce

    # The stand-in is a NumPy subclass: make the checks route it as CuPy (the real
    # array_kind does one isinstance more for a real CuPy array).
    numpy_kind = _checks.array_kind
    routed = lambda a, name: "cupy" if type(a) is ndarray else numpy_kind(a, name)  # noqa: E731
    _arrays.array_kind = _checks.array_kind = routed  # (_checks re-exports _arrays' function)

    launches = []
    ce._launch = lambda name, grid, block, a, cooperative=False: launches.append(name)

    rows, cols = args.rows, args.cols
    x = cp.ascontiguousarray(np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32))
    t = cp.ascontiguousarray(np.random.default_rng(1).integers(0, cols, rows))

    def cupy_call():
        gpu_softmax.cross_entropy_with_grad(x, t, validate=False)

    launches.clear()
    cupy_call()
    per_call_launches = len(launches)

    def empty_launch():
        ce._launch("k", 1, 128, ())

    results = {"empty_launch": _per_call(empty_launch, args.calls, args.repeats) * per_call_launches}
    results["cupy_api"] = _per_call(cupy_call, args.calls, args.repeats)

    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        import gpu_softmax.torch as gst

        torch.set_num_threads(1)  # no intra-op thread pool: it only adds wake-up latency here
        from gpu_softmax.torch import _bridge as bridge

        loss_out = np.zeros((), np.float32)
        grad_out = np.zeros((rows, cols), np.float32)

        def stub_with_grad(a, return_logsumexp=False, *, storage=None, loss_storage=None):
            return loss_out, grad_out

        ce.cross_entropy_with_grad = stub_with_grad
        ce.scale_grad = lambda grad, g, cols, inner, *, storage=None: None
        bridge.device_kind = lambda tn: "cuda"
        bridge.cupy_on = lambda device: contextlib.nullcontext()
        bridge.to_cupy = lambda tn: None if tn is None else tn.detach().numpy()
        bridge.from_cupy = lambda a, dtype: torch.from_numpy(a)

        xt = torch.zeros(rows, cols, requires_grad=True)
        tt = torch.zeros(rows, dtype=torch.int64)

        def torch_step():
            gst.cross_entropy(xt, tt).backward()
            xt.grad = None

        results["torch_fwd_bwd"] = _per_call(torch_step, max(1, args.calls // 4), args.repeats)

        # Calibration on the same machine and load: the smallest autograd step torch
        # itself takes (a sum and its backward), so numbers from a busy CPU can be scaled.
        def torch_sum_step():
            xt.sum().backward()
            xt.grad = None

        results["torch_sum_bwd"] = _per_call(torch_sum_step, max(1, args.calls // 4), args.repeats)

    print(f"host overhead per call, launches stubbed ({per_call_launches} launches per fused call), "
          f"{rows}x{cols} float32, python {sys.version.split()[0]}")
    floor = results["empty_launch"]
    for name, sec in results.items():
        extra = "" if name in ("empty_launch", "torch_sum_bwd") else (
            f"   ({(sec - floor) * 1e6:7.1f} us above the empty launches)")
        print(f"  {name:<14} {sec * 1e6:8.1f} us{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
