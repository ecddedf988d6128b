"""Host time of one softmax-family call on the CuPy path, kernels not launched.

    PYTHONPATH=. python benchmarks/host_overhead.py [--calls N] [--json FILE]

``--json`` writes every figure, among them ``softmax_us`` (``gpu_softmax.softmax`` on an
8x32 input), ``torch_ce_fwd_bwd_us`` (``gpu_softmax.torch.cross_entropy`` forward and
backward on an 8x16 CPU tensor through the bridge's CUDA branch, launches stubbed;
``torch_ce_cpu_fwd_bwd_us`` is its CPU path, the float64 reference) and ``torch_reference_ce_fwd_bwd_us`` (torch's own
``F.cross_entropy`` forward and backward on the same tensor, same run), so runs compare.

Measures what the issue's host-overhead goal counts (call time on a tiny input
minus the time of an empty launch) on the CPU side: the kernel launch itself is
replaced by a stub that records its arguments, so what is timed is our Python
path (argument checks, layout, planning, workspace, argument packing). Without a
GPU (or with ``--fake-cupy``) CuPy is replaced by a NumPy-backed stand-in, whose
``empty`` costs less than CuPy's pool allocation: on a GPU run ``measure(fake=False)``
with real CuPy arrays (still stubbed launches) gives the number to report, and the
benchmark adds the empty-kernel launch time it measures itself.

``measure()`` returns {case: microseconds per call}; the benchmark (gpu_softmax/bench/) can
import and call it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def install_fake_cupy() -> types.ModuleType:
    """A NumPy-backed `cupy` with what the launch path touches (no GPU needed).
    Its arrays wrap NumPy arrays rather than subclass them, so the argument
    checks see CuPy arrays and take the CUDA path."""

    class _Data:
        __slots__ = ("ptr",)

        def __init__(self, ptr):
            self.ptr = ptr

    _device = types.SimpleNamespace(id=0, attributes={"MultiProcessorCount": 132})

    class ndarray:
        __slots__ = ("a", "ptr")

        def __init__(self, a):
            self.a = a
            self.ptr = a.ctypes.data  # once: NumPy's ctypes is slower than CuPy's .data.ptr

        shape = property(lambda self: self.a.shape)
        dtype = property(lambda self: self.a.dtype)
        ndim = property(lambda self: self.a.ndim)
        size = property(lambda self: self.a.size)
        nbytes = property(lambda self: self.a.nbytes)
        itemsize = property(lambda self: self.a.itemsize)
        flags = property(lambda self: self.a.flags)
        data = property(lambda self: _Data(self.ptr))
        device = property(lambda self: _device)

        def reshape(self, *shape):
            return ndarray(self.a.reshape(*shape))

    ndarray.__module__ = "cupy"
    cp = types.ModuleType("cupy")
    cp.ndarray = ndarray
    cp.empty = lambda shape, dtype=np.float32: ndarray(np.empty(shape, dtype))
    cp.zeros = lambda shape, dtype=np.float32: ndarray(np.zeros(shape, dtype))
    cp.asarray = lambda a, dtype=None: ndarray(np.array(a, dtype=dtype))
    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = lambda *a: _device
    cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0)
    cp.cuda = cuda
    sys.modules["cupy"] = cp
    sys.modules["cupy.cuda"] = cuda
    return cp


def _per_call_us(fn, calls: int, repeats: int = 7) -> float:
    """Median over `repeats` loops of the CPU time this thread spent per call:
    thread CPU time, not wall time, so that other processes on a shared machine
    do not count (the wall time is the same on an idle one)."""
    fn()  # first call: imports, plan cache, workspace
    times = []
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        for _ in range(calls):
            fn()
        times.append((time.thread_time_ns() - t0) / calls / 1e3)
    return statistics.median(times)


def measure(calls: int = 2000, fake: bool | None = None) -> dict[str, float]:
    """Microseconds per call with stubbed launches; `fake` None: fake CuPy only if
    real CuPy cannot allocate (no GPU)."""
    if fake is None:
        try:
            import cupy

            cupy.empty(1)
            fake = False
        except Exception:
            fake = True
    cp = install_fake_cupy() if fake else __import__("cupy")

    import gpu_softmax
    from gpu_softmax import _checks
    from gpu_softmax._cuda import softmax as sm

    launched = []
    real_launch = sm._launch
    sm._launch = lambda ds, p, args: launched.append(p)
    try:
        x = cp.asarray(np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32))
        y = cp.asarray(np.full((8, 32), 1 / 32, np.float32))
        out = cp.empty((8, 32), np.float32)
        big = cp.empty((8, 262144), np.float32)  # the few-long-rows case (split plan, workspace)
        args = _checks.check_softmax(x, -1)
        def empty():
            pass

        cases = {
            "calibration: one empty Python call": empty,
            "stub launch alone": lambda: sm._launch(None, None, ()),
            "_cuda.softmax.softmax(checked args)": lambda: sm.softmax(args),
            "gpu_softmax.softmax(x)": lambda: gpu_softmax.softmax(x),
            "gpu_softmax.softmax(x, out=out)": lambda: gpu_softmax.softmax(x, out=out),
            "gpu_softmax.log_softmax(x)": lambda: gpu_softmax.log_softmax(x),
            "gpu_softmax.logsumexp(x)": lambda: gpu_softmax.logsumexp(x),
            "gpu_softmax.softmax_backward(y, y)": lambda: gpu_softmax.softmax_backward(y, y),
            "gpu_softmax.softmax(8x262144, out=) [split plan]": lambda: gpu_softmax.softmax(big, out=big),
        }
        res = {name: round(_per_call_us(fn, calls), 3) for name, fn in cases.items()}
    finally:
        sm._launch = real_launch
    stub = res["stub launch alone"]
    res = {k: (v if k.startswith(("stub", "calibration")) else round(v - stub, 3)) for k, v in res.items()}
    res["cupy"] = "numpy stand-in (no GPU)" if fake else "real"
    return res


def _stubbed_cuda_branch(torch, rows: int, classes: int):
    """Patches making the bridge take its CUDA branch on CPU tensors with every launch a
    no-op that hands back preallocated outputs (what `ce_bridge_overhead.py` does): what
    is then timed is the bridge's host path. Returns the undo function."""
    import contextlib

    from gpu_softmax._cuda import cross_entropy as ce
    from gpu_softmax.torch import _bridge

    loss_out, grad_out = np.zeros((), np.float32), np.zeros((rows, classes), np.float32)
    patches = {
        (ce, "cross_entropy_with_grad"): lambda a, return_logsumexp=False, *, storage=None, loss_storage=None:
            (loss_out, grad_out),
        (ce, "scale_grad"): lambda grad, g, cols, inner, *, storage=None: None,
        (_bridge, "device_kind"): lambda tn: "cuda",
        (_bridge, "cupy_on"): lambda device: contextlib.nullcontext(),
        (_bridge, "to_cupy"): lambda tn: None if tn is None else tn.detach().numpy(),
        (_bridge, "from_cupy"): lambda arr, dtype: torch.from_numpy(arr),
    }
    saved = {key: getattr(*key) for key in patches}
    for (mod, name), fn in patches.items():
        setattr(mod, name, fn)

    def undo():
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    return undo


def measure_torch_ce(calls: int = 2000, rows: int = 8, classes: int = 16) -> dict[str, float]:
    """Microseconds per forward+backward on a tiny CPU tensor, same process, same tensors:
    ``gpu_softmax.torch.cross_entropy`` through its CUDA branch with the launches stubbed
    (``torch_ce_fwd_bwd_us``: the bridge's host overhead, what the goal counts), through its
    CPU path (``torch_ce_cpu_fwd_bwd_us``: the checks, the float64 NumPy reference, the
    saved-gradient backward), and torch's own ``F.cross_entropy``. Empty dict without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    import gpu_softmax.torch as gst

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(rows, classes, generator=gen)
    t = torch.randint(0, classes, (rows,), generator=gen)

    def step(loss_fn):
        def run():
            x = x0.detach().requires_grad_()
            loss_fn(x, t).backward()
        return run

    res = {"torch_ce_cpu_fwd_bwd_us": round(_per_call_us(step(gst.cross_entropy), calls), 3)}
    undo = _stubbed_cuda_branch(torch, rows, classes)
    try:
        res["torch_ce_fwd_bwd_us"] = round(_per_call_us(step(gst.cross_entropy), calls), 3)
    finally:
        undo()
    res["torch_reference_ce_fwd_bwd_us"] = round(_per_call_us(step(F.cross_entropy), calls), 3)
    res["torch_threads"] = torch.get_num_threads()
    res["torch_ce_shape"] = [rows, classes]
    res["torch_ce_ratio"] = round(res["torch_ce_fwd_bwd_us"] / res["torch_reference_ce_fwd_bwd_us"], 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--fake-cupy", action="store_true", help="use the NumPy stand-in even with a GPU")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    torch_res = measure_torch_ce(args.calls)  # before the CuPy stand-in goes into sys.modules
    res = measure(args.calls, fake=True if args.fake_cupy else None)
    res["softmax_us"] = res["gpu_softmax.softmax(x)"]
    res.update(torch_res)
    for k, v in res.items():
        print(f"{k:<52} {f'{v:8.2f} us' if isinstance(v, float) and k.endswith(('us', ')', ']')) else v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
