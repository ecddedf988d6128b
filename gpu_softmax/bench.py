"""Benchmark runner shared by `gpu-softmax bench` and benchmarks/device_check.py.

GPU timing: CUDA events on the current stream, warm-up outside the timed region,
median of many runs, inputs rotated among buffers that together exceed L2 (twice
its size), fresh random data (never zeros). Bandwidth counts the fewest bytes each
op must move (`op_bytes`: inputs read once, outputs written once) and is reported
against the device-to-device copy bandwidth (bytes read + bytes written) and the
read-only bandwidth measured in the same run.

Implementations timed per (op, dtype, shape): ours (`gpu_softmax`, on CuPy arrays),
and every baseline present: PyTorch eager (`torch`), `torch.compile`, `cupyx`
(cupyx.scipy.special), Liger-Kernel (`liger`) and QuACK (`quack`). A baseline that
is missing, has no such op, or raises is skipped with a note in the results; it
never fails the run. `bfloat16` rows are torch tensors: ours runs through the torch
bridge `gpu_softmax.torch` when it imports (skipped with a note otherwise).

For `cross_entropy_with_grad` rows the peak device memory of each implementation is
also recorded (`peak_mem_bytes`: the CuPy memory-pool high-water mark plus
torch.cuda.max_memory_allocated above what was live before the call, result
included).

Without a GPU the same rows are produced for the NumPy reference on small shapes,
timed with the host clock, so the command still says something true and writes its
files; the rows say which backend ran.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import gpu_softmax as gs
from gpu_softmax import reference
from gpu_softmax.testing import assert_close, max_relative_error, tolerance

OPS = ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
       "cross_entropy", "cross_entropy_with_grad")
DTYPES = ("float32", "float16", "float64", "bfloat16")
# Dtypes that exist only as torch tensors (CuPy and NumPy have no bfloat16).
TORCH_ONLY_DTYPES = ("bfloat16",)
IMPLS = ("gpu_softmax", "gpu_softmax.torch", "torch", "torch.compile", "cupyx", "liger", "quack")
BASELINE_IMPLS = ("torch", "torch.compile", "cupyx", "liger", "quack")

# Shapes named in the kernel issues' performance goals.
GPU_SHAPES = {
    "softmax": [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144), (8, 262144), (1, 1048576)],
    "cross_entropy_with_grad": [(8192, 32000), (4096, 128256), (2048, 262144)],
    "cross_entropy": [(8192, 32000), (4096, 128256), (2048, 262144)],
}
QUICK_GPU_SHAPES = [(4096, 32768), (1024, 131072), (8, 262144)]
QUICK_GPU_CE_SHAPES = [(8192, 32000), (4096, 128256)]
CPU_SHAPES = [(64, 1000), (16, 32000), (4, 131072)]
QUICK_CPU_SHAPES = [(64, 1000), (4, 32000)]

# The performance goals of the kernel issues: (name, ops, dtypes, shapes, metric, threshold).
# metric: "pct_copy" / "pct_read" (percent of the bandwidth measured in the same run) or
# "speedup:<impl>" (how many times faster than that baseline). "16-bit" is float16 and bfloat16.
_GOAL_FWD_SHAPES = [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144)]
_GOAL_CE_SHAPES = [(8192, 32000), (4096, 128256), (2048, 262144)]
_ALL_FLOAT = ("float32", "float16", "bfloat16")
GOALS = [
    ("softmax/log_softmax forward >= 90% of copy bandwidth", ("softmax", "log_softmax"), _ALL_FLOAT,
     _GOAL_FWD_SHAPES, "pct_copy", 90.0),
    ("softmax/log_softmax forward >= 75% of copy bandwidth (few rows)", ("softmax", "log_softmax"), _ALL_FLOAT,
     [(8, 262144), (1, 1048576)], "pct_copy", 75.0),
    ("fused CE loss+grad >= 85% of copy bandwidth", ("cross_entropy_with_grad",), _ALL_FLOAT,
     _GOAL_CE_SHAPES, "pct_copy", 85.0),
    ("fused CE loss+grad >= 2x F.cross_entropy fwd+bwd", ("cross_entropy_with_grad",), _ALL_FLOAT,
     [(4096, 128256)], "speedup:torch", 2.0),
    ("CE loss only >= 85% of read bandwidth", ("cross_entropy",), _ALL_FLOAT, _GOAL_CE_SHAPES, "pct_read", 85.0),
]


@dataclass
class Row:
    op: str
    impl: str
    dtype: str
    shape: list[int]
    ms: float
    ms_p10: float
    ms_p90: float
    gbps: float
    pct_copy: float | None
    backend: str  # "cuda" or "numpy"
    matched: bool | None = None  # our result vs the reference (None: not checked)
    max_rel_err: float | None = None
    speedup: dict[str, float] = field(default_factory=dict)  # ours over each baseline (baseline ms / ours ms)
    note: str = ""
    pct_read: float | None = None  # percent of the read-only bandwidth
    bytes: int = 0  # op_bytes: the fewest bytes the op must move
    reps: int = 0
    peak_mem_bytes: int | None = None  # cross_entropy_with_grad rows, where measurable


def itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def op_bytes(op: str, rows: int, cols: int, itemsize: int) -> int:
    n = rows * cols * itemsize
    stat = rows * (8 if itemsize == 8 else 4)
    return {
        "softmax": 2 * n,
        "log_softmax": 2 * n,
        "logsumexp": n + stat,
        "softmax_backward": 3 * n,
        "log_softmax_backward": 3 * n,
        "cross_entropy": n + rows * 8,
        "cross_entropy_with_grad": 2 * n + rows * 8,
    }[op]


def default_shapes(op: str, backend: str, quick: bool) -> list[tuple[int, int]]:
    if backend != "cuda":
        return QUICK_CPU_SHAPES if quick else CPU_SHAPES
    if quick:
        return QUICK_GPU_CE_SHAPES if op.startswith("cross_entropy") else QUICK_GPU_SHAPES
    return GPU_SHAPES.get(op, GPU_SHAPES["softmax"])


def plan(ops, dtypes, shapes, quick: bool, backend: str) -> list[tuple[str, str, tuple[int, int]]]:
    """Every (op, dtype, shape) case `run` goes through, in order."""
    return [(op, dtype, (r, c)) for op in ops for dtype in dtypes
            for r, c in (shapes or default_shapes(op, backend, quick))]


# ----------------------------------------------------------------------------------
# inputs


def _make_inputs(xp, op: str, rows: int, cols: int, dtype, rng) -> tuple:
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


def _make_torch_inputs(op: str, rows: int, cols: int, dtype: str) -> tuple:
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


def _to_numpy(a) -> np.ndarray:
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


# ----------------------------------------------------------------------------------
# implementations: each factory returns a callable on the row's arguments, or None
# with the reason it is not there. Nothing here may raise.


def _torch_ops(op: str) -> tuple[Callable | None, str]:
    """PyTorch eager on torch tensors."""
    try:
        import torch
        import torch.nn.functional as F
    except Exception as exc:
        return None, f"torch not installed ({type(exc).__name__})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device (CPU-only build?)"

    def ce_fwd_bwd(x, tg):
        xt = x.detach().requires_grad_(True)
        loss = F.cross_entropy(xt, tg)
        loss.backward()
        return loss, xt.grad

    fn = {
        "softmax": lambda x: torch.softmax(x, -1),
        "log_softmax": lambda x: torch.log_softmax(x, -1),
        "logsumexp": lambda x: torch.logsumexp(x, -1),
        "softmax_backward": lambda gy, y: torch._softmax_backward_data(gy, y, -1, y.dtype),
        "log_softmax_backward": lambda gy, y: torch._log_softmax_backward_data(gy, y, -1, y.dtype),
        "cross_entropy": lambda x, tg: F.cross_entropy(x, tg),
        "cross_entropy_with_grad": ce_fwd_bwd,
    }.get(op)
    return fn, ("" if fn else f"torch has no {op}")


def _torch_compiled(op: str) -> tuple[Callable | None, str]:
    fn, why = _torch_ops(op)
    if fn is None:
        return None, why
    try:
        import torch

        # One compiled graph per shape and dtype; a reset keeps dynamo's recompile
        # limit from silently sending later shapes back to eager.
        torch._dynamo.reset()
        return torch.compile(fn, dynamic=False), ""
    except Exception as exc:
        return None, f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]})"


def _liger(op: str) -> tuple[Callable | None, str]:
    try:
        importlib.import_module("liger_kernel")
    except Exception as exc:
        return None, f"Liger-Kernel not installed or not importable ({type(exc).__name__})"
    try:
        if op.startswith("cross_entropy"):
            try:
                from liger_kernel.transformers.functional import liger_cross_entropy as ce
            except Exception:
                from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

                def ce(x, t):
                    out = LigerCrossEntropyFunction.apply(x, t)
                    return out[0] if isinstance(out, tuple) else out

            if op == "cross_entropy":
                return (lambda x, t: ce(x, t)), ""

            def fwd_bwd(x, t):
                # Liger writes the gradient over its input buffer (that is how it saves
                # memory); it runs last in each row so the others see the fresh logits.
                xt = x.detach().requires_grad_(True)
                loss = ce(xt, t)
                loss.backward()
                return loss, xt.grad

            return fwd_bwd, ""
        if op == "softmax":
            try:
                from liger_kernel.transformers.functional import liger_softmax as sm

                return (lambda x: sm(x)), ""
            except Exception:
                from liger_kernel.ops.softmax import LigerSoftmaxFunction

                return (lambda x: LigerSoftmaxFunction.apply(x)), ""
    except Exception as exc:
        return None, f"Liger-Kernel has no usable {op} ({type(exc).__name__}: {str(exc)[:120]})"
    return None, f"Liger-Kernel has no {op}"


def _quack(op: str) -> tuple[Callable | None, str]:
    try:
        importlib.import_module("quack")
    except Exception as exc:
        return None, f"QuACK not installed or not importable ({type(exc).__name__})"
    try:
        if op == "softmax":
            from quack.softmax import softmax as sm

            return (lambda x: sm(x)), ""
        if op == "cross_entropy":
            from quack.cross_entropy import cross_entropy as ce

            return (lambda x, t: ce(x, t)), ""
        if op == "cross_entropy_with_grad":
            from quack.cross_entropy import cross_entropy as ce

            def fwd_bwd(x, t):
                xt = x.detach().requires_grad_(True)
                loss = ce(xt, t)
                loss.backward()
                return loss, xt.grad

            return fwd_bwd, ""
    except Exception as exc:
        return None, f"QuACK has no usable {op} ({type(exc).__name__}: {str(exc)[:120]})"
    return None, f"QuACK has no {op}"


def _cupyx(op: str) -> tuple[Callable | None, str]:
    try:
        import cupyx.scipy.special as sp
    except Exception as exc:
        return None, f"cupyx.scipy.special unavailable ({type(exc).__name__})"
    fn = {
        "softmax": lambda x: sp.softmax(x, axis=-1),
        "log_softmax": lambda x: sp.log_softmax(x, axis=-1),
        "logsumexp": lambda x: sp.logsumexp(x, axis=-1),
    }.get(op)
    return fn, ("" if fn else f"cupyx.scipy.special has no {op}")


def torch_bridge():
    """(module, why): `gpu_softmax.torch` if it imports, else None and the reason."""
    try:
        return importlib.import_module("gpu_softmax.torch"), ""
    except Exception as exc:
        return None, f"torch bridge gpu_softmax.torch unavailable ({type(exc).__name__}: {str(exc)[:120]})"


def _bridge_op(op: str) -> tuple[Callable | None, str]:
    """Ours on torch tensors, through the torch bridge."""
    mod, why = torch_bridge()
    if mod is None:
        return None, why
    if op == "cross_entropy_with_grad":
        ce = getattr(mod, "cross_entropy", None)
        if ce is None:
            return None, "gpu_softmax.torch has no cross_entropy"

        def fwd_bwd(x, t):
            xt = x.detach().requires_grad_(True)
            loss = ce(xt, t)
            loss.backward()
            return loss, xt.grad

        return fwd_bwd, ""
    fn = getattr(mod, op, None)
    if fn is None:
        return None, f"gpu_softmax.torch has no {op}"
    return fn, ""


def _on_torch(fn: Callable) -> Callable:
    """Adapt a torch-tensor callable to CuPy arguments (zero-copy DLPack views)."""
    import torch

    return lambda *args: fn(*[torch.from_dlpack(a) for a in args])


def _ours(op: str) -> Callable:
    fn = getattr(gs, op)
    if op.startswith("cross_entropy"):
        return lambda x, t: fn(x, t, validate=False)
    return fn


def implementations(op: str, dtype: str, backend: str, with_baselines: bool = True,
                    skip_impls: tuple[str, ...] = ()) -> tuple[dict[str, Callable], dict[str, str]]:
    """({impl: callable on the row's arguments}, {impl: why it is absent}). Ours comes first."""
    impls: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    torch_native = dtype in TORCH_ONLY_DTYPES

    def add(name, factory, adapt):
        if name in skip_impls:
            return
        try:
            fn, why = factory(op)
        except Exception as exc:  # a factory must never fail the run
            fn, why = None, f"{type(exc).__name__}: {str(exc)[:120]}"
        if fn is None:
            notes[name] = why
            return
        try:
            impls[name] = _on_torch(fn) if adapt else fn
        except Exception as exc:
            notes[name] = f"{type(exc).__name__}: {str(exc)[:120]}"

    if backend != "cuda":
        if torch_native:
            notes["gpu_softmax"] = f"{dtype} needs PyTorch and a GPU (the torch bridge)"
        else:
            impls["gpu_softmax"] = _ours(op)
        return impls, notes
    if torch_native:
        add("gpu_softmax", _bridge_op, False)
    else:
        impls["gpu_softmax"] = _ours(op)
        if op == "cross_entropy_with_grad":  # the bridge's own overhead, fwd+bwd through autograd
            add("gpu_softmax.torch", _bridge_op, True)
    if not with_baselines:
        return impls, notes
    add("torch", _torch_ops, not torch_native)
    add("torch.compile", _torch_compiled, not torch_native)
    if not torch_native:
        add("cupyx", _cupyx, False)
    add("quack", _quack, not torch_native)
    add("liger", _liger, not torch_native)  # last: Liger may write its gradient over the input
    return impls, notes


def baselines(op: str) -> dict[str, Callable | None]:
    """Baselines on CuPy arguments, None where absent (kept for callers of the old API)."""
    impls, notes = implementations(op, "float32", "cuda")
    return {k: impls.get(k) for k in BASELINE_IMPLS}


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


def package_versions() -> dict[str, str | None]:
    """Installed version of each baseline (and of the optional bench tools); None when absent.

    Read from the installed distributions' metadata: nothing is imported.
    """
    out: dict[str, str | None] = {}
    for mod, dists in _DISTS.items():
        out[mod] = None
        for d in dists:
            try:
                out[mod] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
            except Exception:
                continue
        if out[mod] is None:
            try:
                if importlib.util.find_spec("cupy" if mod == "cupyx" else mod) is not None:
                    out[mod] = "present (version unknown)"
            except (ImportError, ValueError):
                pass
    try:
        out["gpu_softmax.torch"] = "present" if importlib.util.find_spec("gpu_softmax.torch") else None
    except (ImportError, ValueError):
        out["gpu_softmax.torch"] = None
    return out


# ----------------------------------------------------------------------------------
# timing


def _sync() -> None:
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    torch = _torch_if_loaded()
    if torch is not None:
        try:
            torch.cuda.synchronize()
        except Exception:
            pass


def _torch_if_loaded():
    import sys

    return sys.modules.get("torch")


def time_gpu(fn: Callable, arg_sets: list[tuple], warmup: int = 3, reps: int = 20) -> list[float]:
    """Milliseconds per call, CUDA events around each call, rotating argument sets.

    Torch work runs on torch's current stream; when torch is loaded the events are
    recorded on that stream instead (both default to the legacy default stream).
    """
    import cupy

    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    _sync()
    stream = cupy.cuda.get_current_stream()
    starts = [cupy.cuda.Event() for _ in range(reps)]
    ends = [cupy.cuda.Event() for _ in range(reps)]
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        starts[i].record(stream)
        fn(*args)
        ends[i].record(stream)
    ends[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]


def time_cpu(fn: Callable, arg_sets: list[tuple], warmup: int = 1, reps: int = 5) -> list[float]:
    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    out = []
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        t0 = time.perf_counter()
        fn(*args)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def peak_memory_bytes(fn: Callable, args: tuple) -> int | None:
    """Device memory one call needs above what is live before it, result included.

    The CuPy memory pool keeps freed blocks, so after emptying its cache its size
    after the call is its high-water mark; torch reports its own with
    max_memory_allocated. The two are added (an implementation may use both).
    """
    try:
        import cupy

        pool = cupy.get_default_memory_pool()
        _sync()
        pool.free_all_blocks()
        base = pool.total_bytes()
        torch = _torch_if_loaded()
        t_base = None
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            t_base = torch.cuda.memory_allocated()
        out = fn(*args)
        _sync()
        peak = pool.total_bytes() - base
        if t_base is not None:
            peak += torch.cuda.max_memory_allocated() - t_base
        del out
        return int(peak)
    except Exception:
        return None


def copy_bandwidth_gbps(backend: str, nbytes: int | None = None) -> dict:
    """Device-to-device (or host memcpy) copy and read-only bandwidth, GB/s."""
    if backend == "cuda":
        import cupy

        nbytes = nbytes or 1 << 30
        src = cupy.random.random(nbytes // 4, dtype=cupy.float32)
        dst = cupy.empty_like(src)
        copy_ms = statistics.median(time_gpu(lambda: dst.__setitem__(Ellipsis, src), [()], 3, 20))
        read_ms = statistics.median(time_gpu(lambda: src.sum(), [()], 3, 20))
        del src, dst
        return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}
    nbytes = nbytes or 1 << 26
    src = np.random.default_rng().random(nbytes // 8)
    dst = np.empty_like(src)
    copy_ms = statistics.median(time_cpu(lambda: np.copyto(dst, src), [()], 1, 5))
    read_ms = statistics.median(time_cpu(lambda: src.sum(), [()], 1, 5))
    return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}


def _check_against_reference(op: str, args_np: tuple, result, dtype) -> tuple[bool, float]:
    """Our result against the reference at the tolerance of gpu_softmax.testing.

    The absolute floor is the relative tolerance times the largest reference value:
    gradient entries like p - 1 cancel, and their error is relative to the row's
    scale, not to the (possibly tiny) difference.
    """
    ref = getattr(reference, op)
    expected = ref(*args_np, validate=False) if op.startswith("cross_entropy") else ref(*args_np)
    if isinstance(expected, tuple):
        expected, result = expected[-1], result[-1]  # the gradient
    got = _to_numpy(result)
    err = max_relative_error(got, expected)
    rtol, _ = tolerance(dtype)
    e = np.asarray(expected, dtype=np.float64)
    scale = float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 1.0
    try:
        assert_close(got, expected, dtype, atol=rtol * scale)
        return True, err
    except AssertionError:
        return False, err


def _n_arg_sets(l2: int, set_bytes: int) -> int:
    """Argument sets to rotate so that one pass over them is at least twice L2."""
    if l2 <= 0:
        return 1
    return max(2, min(64, math.ceil(2 * l2 / max(set_bytes, 1)) + 1))


def _notify(progress, name: str, *args) -> None:
    hook = getattr(progress, name, None) if progress is not None else None
    if hook is not None:
        try:
            hook(*args)
        except Exception:
            pass


def run(
    ops: list[str],
    dtypes: list[str],
    shapes: list[tuple[int, int]] | None,
    quick: bool = False,
    backend: str | None = None,
    progress: Callable[[str], None] | None = None,
    with_baselines: bool = True,
    bandwidth: dict | None = None,
    skip_impls: tuple[str, ...] = (),
    reps: int | None = None,
) -> dict:
    """Time every (op, dtype, shape); returns the results document (see write_results).

    `progress(msg)` is called before each case; if it also has `start(total)` that is
    called once with the number of cases first.
    """
    if backend is None:
        from gpu_softmax._cuda.info import gpu_status

        backend = "cuda" if gpu_status()[0] else "numpy"
    rng = np.random.default_rng()
    doc: dict[str, Any] = {"backend": backend, "date": time.strftime("%Y-%m-%d"),
                           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}
    if backend == "cuda":
        import cupy

        from gpu_softmax._cuda.info import device_name

        xp = cupy
        doc["device"] = device_name(cupy.cuda.Device().id)
        l2 = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize", 50 << 20)
        timer, n_reps = time_gpu, reps or (10 if quick else 30)
    else:
        xp = np
        doc["device"] = f"CPU ({platform.processor() or platform.machine()}), NumPy reference"
        l2 = 0
        timer, n_reps = time_cpu, reps or 3
    doc["l2_bytes"] = int(l2)
    doc["timing"] = ("CUDA events per call, 3 warm-up calls untimed, median of "
                     f"{n_reps} calls, inputs rotated over >= 2x L2" if backend == "cuda"
                     else f"host clock, 1 warm-up call, median of {n_reps} calls")
    doc["versions"] = package_versions()
    doc.update(bandwidth or copy_bandwidth_gbps(backend))
    copy, read = doc["copy_gbps"], doc.get("read_gbps")
    notes: dict[str, str] = {}  # "impl: why" once per distinct reason

    cases = plan(ops, dtypes, shapes, quick, backend)
    _notify(progress, "start", len(cases))
    for op, dtype, (rows, cols) in cases:
        if progress:
            progress(f"{op} {dtype} {rows}x{cols}")
        nbytes = op_bytes(op, rows, cols, itemsize(dtype))
        torch_native = dtype in TORCH_ONLY_DTYPES

        def blank(impl: str, note: str = "") -> Row:
            return Row(op, impl, dtype, [rows, cols], math.nan, math.nan, math.nan, math.nan, None, backend,
                       note=note, bytes=nbytes)

        impls, absent = implementations(op, dtype, backend, with_baselines, skip_impls)
        for impl, why in absent.items():
            notes.setdefault(f"{impl}: {why}", f"{impl}: {why}")
        if "gpu_softmax" not in impls:  # say why there is no row of ours
            doc["rows"].append(asdict(blank("gpu_softmax", f"skipped: {absent.get('gpu_softmax', '')}")))
            if not impls:
                continue
        # Enough argument sets that one pass over them overflows L2 (twice over).
        set_bytes = rows * cols * itemsize(dtype) * (2 if op.endswith("_backward") else 1)
        n_sets = _n_arg_sets(l2, set_bytes) if backend == "cuda" else 1
        try:
            if torch_native:
                arg_sets = [_make_torch_inputs(op, rows, cols, dtype) for _ in range(n_sets)]
            else:
                arg_sets = [_make_inputs(xp, op, rows, cols, dtype, rng) for _ in range(n_sets)]
        except Exception as exc:  # out of device memory, say
            doc["rows"].append(asdict(blank("gpu_softmax", f"inputs: {type(exc).__name__}: {str(exc)[:200]}")))
            continue
        timings: dict[str, float] = {}
        case_rows: list[Row] = []
        for impl, fn in impls.items():
            row = blank(impl)
            try:
                # Ours is checked against the float64 reference once per row (on the host: the
                # costly part of a large row); the bridge's own rows are timed only.
                if impl == "gpu_softmax" and backend == "cuda":
                    result = fn(*arg_sets[0])
                    args_np = tuple(_to_numpy(a) for a in arg_sets[0])
                    row.matched, row.max_rel_err = _check_against_reference(op, args_np, result, dtype)
                    del result
                ms = timer(fn, arg_sets, reps=n_reps)
                if op == "cross_entropy_with_grad" and backend == "cuda":
                    row.peak_mem_bytes = peak_memory_bytes(fn, arg_sets[0])
            except NotImplementedError as exc:
                row.note = f"not implemented: {str(exc)[:200]}"
                case_rows.append(row)
                continue
            except Exception as exc:  # an implementation that fails is skipped with a note
                row.note = f"{type(exc).__name__}: {str(exc)[:200]}"
                case_rows.append(row)
                continue
            row.reps = len(ms)
            row.ms = statistics.median(ms)
            q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) >= 2 else [row.ms] * 9
            row.ms_p10, row.ms_p90 = q[0], q[-1]
            row.gbps = nbytes / row.ms / 1e6 if row.ms > 0 else math.nan
            row.pct_copy = 100.0 * row.gbps / copy if copy else None
            row.pct_read = 100.0 * row.gbps / read if read else None
            if torch_native and impl == "gpu_softmax":
                row.note = "via the torch bridge gpu_softmax.torch"
            timings[impl] = row.ms
            case_rows.append(row)
        ours = timings.get("gpu_softmax")
        for row in case_rows:
            if row.impl == "gpu_softmax" and ours:
                row.speedup = {k: v / ours for k, v in timings.items() if k != "gpu_softmax"}
            doc["rows"].append(asdict(row))
        del arg_sets
    doc["notes"] = sorted(notes.values())
    return doc


# ----------------------------------------------------------------------------------
# goals and output


def vocab_parallel_rows(shapes: list[tuple[int, int]], ranks=(2, 4), dtype: str = "float32",
                        bandwidth: dict | None = None, reps: int = 20) -> list[dict]:
    """Per-rank compute of the vocabulary-parallel loss against the one-GPU fused loss.

    For each (N, V) and P, one rank's work on its (N, V/P) shard is timed on this one
    GPU: the statistics kernel, then the finishing kernel fed the records of all P
    ranks (this rank's, repeated: the same bytes the all-gather would deliver). The
    collective itself is not included, since one GPU cannot time it; its payload is
    20 bytes per row and rank (the note says so). The one-GPU row is
    ``cross_entropy_with_grad`` on the full (N, V) logits, in the same run.
    """
    import cupy

    from gpu_softmax import vocab_parallel as vp

    rng = np.random.default_rng()
    copy = (bandwidth or {}).get("copy_gbps")
    out = []
    isz = itemsize(dtype)

    def row(impl, shape, ms, nbytes, note="", speedup=None):
        med = statistics.median(ms)
        q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [med] * 9
        gbps = nbytes / med / 1e6
        return asdict(Row("vocab_parallel_cross_entropy", impl, dtype, list(shape), med, q[0], q[-1], gbps,
                          100.0 * gbps / copy if copy else None, "cuda", note=note, bytes=nbytes, reps=len(ms),
                          speedup=speedup or {}))

    for n_rows, vocab in shapes:
        x = cupy.asarray(rng.standard_normal((n_rows, vocab), dtype=np.float32)).astype(dtype)
        t = cupy.asarray(rng.integers(0, vocab, size=n_rows))
        full_ms = time_gpu(lambda: gs.cross_entropy_with_grad(x, t, validate=False), [()], 3, reps)
        full_bytes = op_bytes("cross_entropy_with_grad", n_rows, vocab, isz)
        out.append(row("gpu_softmax (1 GPU, full V)", (n_rows, vocab), full_ms, full_bytes))
        for p in ranks:
            width = -(-vocab // p)
            shard = cupy.ascontiguousarray(x[:, :width])

            def one_rank():
                rec = vp.partial_stats(shard, t, 0, vocab, validate=False)
                gathered = cupy.broadcast_to(rec, (p,) + rec.shape)
                return vp.finish(shard, t, 0, vocab, cupy.ascontiguousarray(gathered), validate=False)

            ms = time_gpu(one_rank, [()], 3, reps)
            # the shard read twice (statistics, then the gradient pass), the gradient written once
            nbytes = 3 * n_rows * width * isz
            out.append(row(f"gpu_softmax (per rank, P={p})", (n_rows, width), ms, nbytes,
                           note="per-rank kernels only; the all-gather of 20 B/row/rank is not timed",
                           speedup={"1 GPU, full V": statistics.median(full_ms) / statistics.median(ms)}))
        del x, t
    return out


def _shape_key(shape) -> tuple[int, int]:
    return int(shape[0]), int(shape[1])


def evaluate_goals(doc: dict) -> list[dict]:
    """Each goal case the document measured: our value, the target, and whether it is met.

    Only (op, dtype, shape) cases present in the document appear; a case whose row
    carries no number (failed, skipped) has met=None.
    """
    ours = {(r["op"], r["dtype"], _shape_key(r["shape"])): r for r in doc.get("rows", [])
            if r["impl"] == "gpu_softmax"}
    out = []
    for name, ops, dtypes, shapes, metric, threshold in GOALS:
        for op in ops:
            for dtype in dtypes:
                for shape in shapes:
                    r = ours.get((op, dtype, shape))
                    if r is None:
                        continue
                    if metric.startswith("speedup:"):
                        value = (r.get("speedup") or {}).get(metric.split(":", 1)[1])
                    else:
                        value = r.get(metric)
                    ok = None if value is None or value != value else bool(value >= threshold)
                    out.append({"goal": name, "op": op, "dtype": dtype, "shape": list(shape), "metric": metric,
                                "value": value, "target": threshold, "met": ok,
                                "matched": r.get("matched")})
    return out


def _fmt_bytes(n) -> str:
    if n is None:
        return ""
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return format(v, spec)


def _row_cells(r: dict) -> list[str]:
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("speedup") or {}).items())
    if r["matched"] is None:
        matched = ""
    elif r["matched"]:
        matched = "yes"
    else:
        matched = f"NO ({r['max_rel_err']:.2e})" if r.get("max_rel_err") is not None else "NO"
    spread = "" if r["ms"] != r["ms"] else f"{r['ms_p10']:.4f}-{r['ms_p90']:.4f}"
    return [r["op"], r["impl"], r["dtype"], f"{r['shape'][0]}x{r['shape'][1]}", _fmt(r["ms"], ".4f"), spread,
            _fmt(r["gbps"], ".1f"), _fmt(r["pct_copy"], ".1f"), matched, sp,
            _fmt_bytes(r.get("peak_mem_bytes")), str(r.get("note", "")).replace("|", "/").replace("\n", " ")]


TABLE_HEADER = ["op", "impl", "dtype", "shape", "median ms", "p10-p90 ms", "GB/s", "% copy", "matched ref",
                "speed-up", "peak mem", "note"]


def markdown_table(doc: dict) -> str:
    lines = [
        f"# gpu_softmax benchmark: {doc.get('device')} ({doc.get('backend')} backend), {doc.get('date')}",
        "",
        f"Copy bandwidth (read + write): {doc.get('copy_gbps', float('nan')):.1f} GB/s; "
        f"read-only: {doc.get('read_gbps', float('nan')):.1f} GB/s",
        "",
    ]
    if doc.get("timing"):
        lines += [f"Timing: {doc['timing']}. GB/s counts the fewest bytes each op must move (inputs read once, "
                  "outputs written once); speed-up is baseline time / our time.", ""]
    lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for r in doc["rows"]:
        lines.append("| " + " | ".join(_row_cells(r)) + " |")
    goals = evaluate_goals(doc) if doc.get("backend") == "cuda" else []
    if goals:
        lines += ["", "## Goals", "", "| goal | op | dtype | shape | ours | target | met |", "|---|---|---|---|---|---|---|"]
        for g in goals:
            unit = "x" if g["metric"].startswith("speedup") else "%"
            met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
            lines.append(f"| {g['goal']} | {g['op']} | {g['dtype']} | {g['shape'][0]}x{g['shape'][1]} | "
                         f"{_fmt(g['value'], '.1f' if unit == '%' else '.2f')}{unit if g['value'] is not None else ''}"
                         f" | {g['target']:g}{unit} | {met} |")
    if doc.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def write_results(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    """`<stem>.json`, `<stem>.md`, and with matplotlib `<stem>.png` (every (op, dtype) as a
    panel) plus one `<stem>-<op>-<dtype>.png` per (op, dtype)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    paths[1].write_text(markdown_table(doc))
    try:
        paths += plot(doc, out_dir, stem)
    except Exception as exc:  # a plotting problem must not lose the numbers
        print(f"bench: plot failed ({type(exc).__name__}: {exc})")
    return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    return float(o)


def _groups(doc: dict) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in doc["rows"]:
        groups.setdefault((r["op"], r["dtype"]), []).append(r)
    return groups


def _draw(ax, doc: dict, op: str, dtype: str, rows: list[dict]) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["gbps"] == r["gbps"]:
            series.setdefault(r["impl"], []).append((r["shape"][1], r["gbps"]))
    for impl in sorted(series, key=lambda k: (IMPLS.index(k) if k in IMPLS else 99, k)):
        pts = sorted(series[impl])
        style = dict(linewidth=2.5, color="C3") if impl == "gpu_softmax" else {}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, **style)
    for r in rows:  # shapes can share a row length: say how many rows each of ours had
        if r["impl"] == "gpu_softmax" and r["gbps"] == r["gbps"]:
            ax.annotate(f"{r['shape'][0]} rows", (r["shape"][1], r["gbps"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    if doc.get("copy_gbps"):
        ax.axhline(doc["copy_gbps"], color="k", linestyle="--", linewidth=1, label="copy bandwidth (ceiling)")
    if doc.get("read_gbps") and op in ("cross_entropy", "logsumexp"):
        ax.axhline(doc["read_gbps"], color="gray", linestyle=":", linewidth=1, label="read bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (elements)")
    ax.set_ylabel("GB/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{op} {dtype}", fontsize=9)
    ax.legend(fontsize=6)


def plot(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    """GB/s against row length, one line per implementation, copy bandwidth as the ceiling;
    one file per (op, dtype) and an overview with every (op, dtype) as a panel.
    Returns [] without matplotlib or without a timed row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    groups = {k: v for k, v in _groups(doc).items() if any(r["gbps"] == r["gbps"] for r in v)}
    if not groups:
        return []
    out_dir = Path(out_dir)
    title = f"{doc.get('device')} ({doc.get('backend')}), {doc.get('date')}"
    paths = []
    n = len(groups)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax, ((op, dtype), rows) in zip(axes.flat, sorted(groups.items())):
        _draw(ax, doc, op, dtype, rows)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    overview = out_dir / f"{stem}.png"
    fig.savefig(overview, dpi=100)
    plt.close(fig)
    paths.append(overview)
    for (op, dtype), rows in sorted(groups.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw(ax, doc, op, dtype, rows)
        ax.set_title(f"{op} {dtype} -- {title}", fontsize=9)
        fig.tight_layout()
        p = out_dir / f"{stem}-{op}-{dtype}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    return paths
