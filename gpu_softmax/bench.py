"""Benchmark runner shared by `gpu-softmax bench` and benchmarks/device_check.py.

Two times per row, both from CUDA events on the current stream, inputs rotated among
buffers that together exceed twice the L2 size, fresh random data (never zeros):

- **call time** (`call_ms`): events between consecutive calls of a back-to-back loop,
  so host work (argument checks, allocation, autograd, launch) counts whenever the GPU
  waits for it: what a user's eager loop sees.
- **kernel time** (`ms`): the same loop queued behind a spin kernel that keeps the GPU
  busy until the host has queued every call, so the events time the device work alone.
  `kernel_covered` says the spin outlasted the queuing (false: a call synchronised
  with the host, and the kernel time may include host gaps).

GB/s, % of copy bandwidth, speed-ups and the goals use kernel time. Bandwidth counts
the fewest bytes each op must move (`op_bytes`) against the device-to-device copy
(bytes read + written) and read-only bandwidths measured in the same run. A
host-overhead row per op (`kind: "overhead"`, a tiny input) gives each
implementation's call time minus that of an empty kernel launch.

Our results are checked on a sample of rows (first, last and random ones) of the
timed input against the float64 reference at the tolerances of the tests
(`selfcheck.compare`); the check never reads the whole input back to the host.

Implementations per (op, dtype, shape): ours (`gpu_softmax`, CuPy arrays), ours
through the torch bridge (`gpu_softmax.torch`, for cross_entropy_with_grad: forward
and `.backward()`, the training path), and every baseline present: PyTorch eager,
`torch.compile` (compiled once per op with dynamic shapes), `cupyx`, Liger-Kernel
and QuACK. One that is missing, lacks the op or raises is skipped with a note.
`bfloat16` rows are torch tensors (ours through the bridge). Peak device memory is
recorded for every implementation of the training rows.

Time: our kernels are compiled with NVRTC in background threads while the main thread
imports torch, measures the bandwidth and compiles torch.compile's graphs (one per op
and dtype, dynamic shapes, on a tiny input); compile and first-call JIT times are
reported apart (`compile_seconds`), and a time budget stops starting new cases once
spent (their rows say so).

Without a GPU the rows time the NumPy reference on small shapes (impl
"NumPy reference"), with the host clock.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import json
import math
import platform
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import gpu_softmax as gs

OPS = ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
       "cross_entropy", "cross_entropy_with_grad")
DTYPES = ("float32", "float16", "float64", "bfloat16")
# Dtypes that exist only as torch tensors (CuPy and NumPy have no bfloat16).
TORCH_ONLY_DTYPES = ("bfloat16",)
REFERENCE_IMPL = "NumPy reference"  # what the rows time without a GPU
IMPLS = ("gpu_softmax", "gpu_softmax.torch", "torch", "torch.compile", "cupyx", "liger", "quack", REFERENCE_IMPL)
BASELINE_IMPLS = ("torch", "torch.compile", "cupyx", "liger", "quack")
OURS = ("gpu_softmax", REFERENCE_IMPL)  # the row each case's speed-ups are computed for
JIT_IMPLS = ("torch.compile", "liger", "quack")  # compile on first call: counted in compile_seconds

# Shapes named in the kernel issues' performance goals.
GPU_SHAPES = {
    "softmax": [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144), (8, 262144), (1, 1048576)],
    "cross_entropy_with_grad": [(8192, 32000), (4096, 128256), (2048, 262144)],
    "cross_entropy": [(8192, 32000), (4096, 128256), (2048, 262144)],
}
QUICK_GPU_SHAPES = [(4096, 32768), (8, 262144)]
QUICK_GPU_CE_SHAPES = [(4096, 128256)]
CPU_SHAPES = [(64, 1000), (16, 32000), (4, 131072)]
QUICK_CPU_SHAPES = [(64, 1000), (4, 32000)]
OVERHEAD_SHAPE = (8, 128)  # the host-overhead rows: small enough that the launch is all there is
# Left out of the host-overhead rows: they JIT-compile per row length, so a tiny row
# would cost a compile of its own.
OVERHEAD_SKIP = ("liger", "quack")

# The default plans, as (op, dtype, shape) cases.
# --quick: one goal shape of each kind, float32: many rows, few long rows, the training step.
QUICK_PLAN = [("softmax", "float32", (4096, 32768)), ("softmax", "float32", (8, 262144)),
              ("cross_entropy_with_grad", "float32", (4096, 128256))]
_FULL = [
    ("softmax", ["float32", "float16"], GPU_SHAPES["softmax"]),
    ("log_softmax", ["float32"], [(4096, 32768), (1024, 131072), (8, 262144)]),
    ("softmax_backward", ["float32"], [(4096, 32768)]),
    ("cross_entropy_with_grad", ["float32", "float16"], GPU_SHAPES["cross_entropy_with_grad"]),
    ("cross_entropy", ["float32"], [(4096, 128256)]),
    ("softmax", ["bfloat16"], [(4096, 32768), (8, 262144)]),
    ("cross_entropy_with_grad", ["bfloat16"], [(4096, 128256)]),
]
FULL_PLAN = [(op, dt, s) for op, dts, shapes in _FULL for dt in dts for s in shapes]
# Seconds after which no new case starts (the runs' goals: 60 s and 5 minutes).
BUDGET_S = {"quick": 50.0, "full": 280.0}
SAMPLE_ROWS = 8  # rows of each timed input checked against the reference

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
    ms: float  # kernel time, median (GPU); host-clock time of a call without a GPU
    ms_p10: float
    ms_p90: float
    gbps: float
    pct_copy: float | None
    backend: str  # "cuda" or "numpy"
    matched: bool | None = None  # our result vs the reference on sampled rows (None: not checked)
    max_rel_err: float | None = None
    speedup: dict[str, float] = field(default_factory=dict)  # ours over each baseline (baseline ms / ours ms)
    note: str = ""
    pct_read: float | None = None  # percent of the read-only bandwidth
    bytes: int = 0  # op_bytes: the fewest bytes the op must move
    reps: int = 0
    peak_mem_bytes: int | None = None  # training rows (cross_entropy_with_grad), where measurable
    call_ms: float = math.nan  # call time, median: what an eager loop sees per call
    call_p10: float = math.nan
    call_p90: float = math.nan
    kernel_covered: bool | None = None  # the spin outlasted the queuing (kernel time is device time alone)
    first_call_ms: float | None = None  # the first call, compile / JIT included
    kind: str = "timing"  # "timing" or "overhead" (tiny input: host overhead)
    host_overhead_us: float | None = None  # overhead rows: call time minus an empty kernel launch's
    plan: dict | None = None  # ours: the launch plan the kernels chose (regime, grid, ...)


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


DEFAULT_OPS = ("softmax", "log_softmax", "cross_entropy_with_grad")
DEFAULT_DTYPES = ("float32", "float16")


def default_cases(quick: bool, backend: str) -> list[tuple[str, str, tuple[int, int]]]:
    """The plan when the user names no op, dtype or shape."""
    if backend == "cuda":
        return list(QUICK_PLAN if quick else FULL_PLAN)
    return plan(DEFAULT_OPS, DEFAULT_DTYPES, None, quick, backend)


def overhead_cases(cases) -> list[tuple[str, str, tuple[int, int]]]:
    """One tiny case per (op, dtype) of the plan, first dtype of each op only."""
    seen: dict[str, str] = {}
    for op, dtype, _ in cases:
        seen.setdefault(op, dtype)
    return [(op, dtype, OVERHEAD_SHAPE) for op, dtype in seen.items()]


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


def _take_rows(a, idx: list[int]) -> np.ndarray:
    """Rows `idx` of a NumPy, CuPy or torch array, as NumPy (only those rows cross to the host)."""
    if isinstance(a, np.ndarray):
        return a[idx]
    if hasattr(a, "detach"):
        import torch

        return _to_numpy(a[torch.as_tensor(idx, device=a.device)])
    import cupy

    return _to_numpy(a[cupy.asarray(idx)])


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


_COMPILED: dict[str, Callable] = {}


def _torch_compiled(op: str) -> tuple[Callable | None, str]:
    """torch.compile of the eager op, once per op for every shape (dynamic shapes): the
    plan's shapes do not each pay a compile. Its compile time is counted by `run`."""
    fn, why = _torch_ops(op)
    if fn is None:
        return None, why
    if op not in _COMPILED:
        try:
            import torch

            _COMPILED[op] = torch.compile(fn, dynamic=True)
        except Exception as exc:
            return None, f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]})"
    return _COMPILED[op], ""


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


def _bridge_op(op: str, reduction: str = "mean") -> tuple[Callable | None, str]:
    """Ours on torch tensors, through the torch bridge (cross entropy: forward and
    .backward(), the training path)."""
    mod, why = torch_bridge()
    if mod is None:
        return None, why
    if op == "cross_entropy_with_grad":
        ce = getattr(mod, "cross_entropy", None)
        if ce is None:
            return None, "gpu_softmax.torch has no cross_entropy"

        def fwd_bwd(x, t):
            xt = x.detach().requires_grad_(True)
            loss = ce(xt, t, reduction=reduction)
            (loss if loss.ndim == 0 else loss.sum()).backward()
            return loss, xt.grad

        return fwd_bwd, ""
    if op == "cross_entropy":
        ce = getattr(mod, "cross_entropy", None)
        return ((lambda x, t: ce(x, t, reduction=reduction)), "") if ce else (None, "gpu_softmax.torch has no cross_entropy")
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


def _ours_for_check(op: str, dtype: str) -> Callable | None:
    """Ours as the accuracy check calls it: cross entropy per row (reduction "none"),
    so a sample of rows can be compared; the timed call's mean adds those rows up."""
    if dtype in TORCH_ONLY_DTYPES:
        return _bridge_op(op, reduction="none")[0]
    if op.startswith("cross_entropy"):
        fn = getattr(gs, op)
        return lambda x, t: fn(x, t, reduction="none", validate=False)
    return getattr(gs, op)


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
            notes[REFERENCE_IMPL] = f"{dtype} needs PyTorch and a GPU (the torch bridge)"
        else:
            impls[REFERENCE_IMPL] = _ours(op)
        return impls, notes
    if torch_native:
        add("gpu_softmax", _bridge_op, False)
    else:
        impls["gpu_softmax"] = _ours(op)
        if op == "cross_entropy_with_grad":  # the training path: forward and .backward() through autograd
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
# the run's identity: commit, kernel sources, device


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
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


# ----------------------------------------------------------------------------------
# timing

_TIMER_SRC = r"""
extern "C" __global__ void gs_bench_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
extern "C" __global__ void gs_bench_empty() {}
"""


@functools.lru_cache(maxsize=None)
def _timer_kernel(name: str):
    import cupy

    return cupy.RawModule(code=_TIMER_SRC).get_function(name)


def _spin(ms: float) -> None:
    """Keep the GPU busy for `ms` on the current stream (one thread spinning on the clock)."""
    _timer_kernel("gs_bench_spin")((1,), (1,), (np.uint64(int(ms * 1e6)),))


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


@dataclass
class Timing:
    call: list[float]  # ms between consecutive calls of a back-to-back loop
    kernel: list[float]  # the same behind a spin kernel: device time alone
    covered: bool  # the spin outlasted the host's queuing of the kernel-time loop
    first_ms: float  # the first call, compile / JIT included


def _event_loop(fn: Callable, arg_sets: list[tuple], reps: int, spin_ms: float = 0.0):
    """(ms per call, host seconds to queue them, whether a spin kernel outlasted the queuing).

    Torch work runs on torch's current stream; both it and CuPy's default to the
    legacy default stream, on which the events are recorded.
    """
    import cupy

    stream = cupy.cuda.get_current_stream()
    events = [cupy.cuda.Event() for _ in range(reps + 1)]
    shield = None
    if spin_ms:
        _spin(spin_ms)
        shield = cupy.cuda.Event()
        shield.record(stream)
    t0 = time.perf_counter()
    events[0].record(stream)
    for i in range(reps):
        fn(*arg_sets[i % len(arg_sets)])
        events[i + 1].record(stream)
    host_s = time.perf_counter() - t0
    covered = shield is not None and not shield.done
    events[-1].synchronize()
    return [cupy.cuda.get_elapsed_time(a, b) for a, b in zip(events, events[1:])], host_s, covered


def time_gpu(fn: Callable, arg_sets: list[tuple], warmup: int = 3, reps: int = 20) -> Timing:
    """Call time and kernel time of `fn`, rotating argument sets (see the module docstring)."""
    t0 = time.perf_counter()
    fn(*arg_sets[0])
    _sync()
    first_ms = (time.perf_counter() - t0) * 1e3
    for i in range(1, warmup):
        fn(*arg_sets[i % len(arg_sets)])
    _sync()
    call, host_s, _ = _event_loop(fn, arg_sets, reps)
    spin_ms = min(500.0, 2e3 * host_s + 1.0)
    for _ in range(2):  # a second try with a longer spin if the first did not cover the queuing
        kernel, _, covered = _event_loop(fn, arg_sets, reps, spin_ms)
        if covered:
            break
        spin_ms = min(2000.0, spin_ms * 4)
    return Timing(call, kernel, covered, first_ms)


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


def empty_launch_ms(reps: int = 50) -> float:
    """Call time of launching an empty kernel: the floor the host-overhead rows subtract."""
    kernel = _timer_kernel("gs_bench_empty")
    return statistics.median(time_gpu(lambda: kernel((1,), (1,), ()), [()], 3, reps).call)


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
        copy_ms = statistics.median(time_gpu(lambda: dst.__setitem__(Ellipsis, src), [()], 3, 20).kernel)
        read_ms = statistics.median(time_gpu(lambda: src.sum(), [()], 3, 20).kernel)
        del src, dst
        return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}
    nbytes = nbytes or 1 << 26
    src = np.random.default_rng().random(nbytes // 8)
    dst = np.empty_like(src)
    copy_ms = statistics.median(time_cpu(lambda: np.copyto(dst, src), [()], 1, 5))
    read_ms = statistics.median(time_cpu(lambda: src.sum(), [()], 1, 5))
    return {"copy_gbps": 2 * nbytes / copy_ms / 1e6, "read_gbps": nbytes / read_ms / 1e6}


# ----------------------------------------------------------------------------------
# compiling: our kernels in the background, everything else counted on first call


class KernelWarmup:
    """NVRTC-compiles every op family in its own thread (NVRTC releases the GIL), into
    CuPy's on-disk kernel cache, so the loader's own compile later is a cache load.
    `seconds` is the wall time until all are done (a warm cache makes it short)."""

    def __init__(self):
        from gpu_softmax._cuda import loader

        self.errors: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self.seconds: float | None = None
        self.families = loader.families()
        self.threads = [threading.Thread(target=self._compile, args=(f,), daemon=True) for f in self.families]
        for t in self.threads:
            t.start()

    def _compile(self, family: str) -> None:
        import cupy

        from gpu_softmax._cuda import loader

        try:
            # the loader's own text and options: the same cache entry its compile will find
            cupy.RawModule(code=loader.module_source(family), options=loader.COMPILE_OPTIONS).compile()
        except Exception as exc:  # the timed calls will raise it again, in their rows
            self.errors[family] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def wait(self) -> float:
        for t in self.threads:
            t.join()
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.t0
        return self.seconds


def _plan_info(op: str, dtype: str, rows: int, cols: int) -> dict | None:
    """The launch plan our kernels choose for this case (never raises: None if unknown).
    `bytes_in_flight_per_sm` is recorded where the plan states it."""
    try:
        from gpu_softmax._cuda import cross_entropy as ce_mod
        from gpu_softmax._cuda import launch
        from gpu_softmax._cuda import softmax as sm_mod

        storage = "bfloat16" if dtype == "bfloat16" else dtype
        direction = {"logsumexp": "lse", "softmax_backward": "bwd", "log_softmax_backward": "bwd"}.get(op, "fwd")
        if op.startswith("cross_entropy"):
            p = ce_mod.plan_for(storage, rows, cols)
        elif hasattr(sm_mod, "plan_for"):
            p = sm_mod.plan_for(direction, storage, rows, cols)
        else:
            p = sm_mod.plan(storage, direction, rows, cols, 0, launch.sm_count(), sm_mod._occupancy)
        info = {k: getattr(p, k) for k in ("regime", "kernel", "grid", "block", "k", "smem", "resident")
                if hasattr(p, k)}
        info["bytes_in_flight_per_sm"] = getattr(p, "bytes_in_flight_per_sm", getattr(p, "inflight_bytes_per_sm", None))
        return info
    except Exception:
        return None


# ----------------------------------------------------------------------------------
# accuracy: a sample of rows against the float64 reference


def sample_rows(rows: int, rng, n: int = SAMPLE_ROWS) -> list[int]:
    """The first and last rows and random others, sorted, at most n (all rows if fewer)."""
    if rows <= n:
        return list(range(rows))
    picked = {0, rows - 1}
    while len(picked) < n:
        picked.add(int(rng.integers(0, rows)))
    return sorted(picked)


def check_sampled(op: str, dtype: str, fn: Callable, args: tuple, rng) -> tuple[bool, float, str]:
    """(matched, max relative error, what failed): `fn(*args)` (ours, per-row results)
    on sampled rows against the reference at the tests' tolerances."""
    from gpu_softmax.selfcheck import compare

    got = fn(*args)
    idx = sample_rows(int(args[0].shape[0]), rng)
    args_np = tuple(_take_rows(a, idx) for a in args)
    got_np = tuple(_take_rows(g, idx) for g in got) if isinstance(got, tuple) else _take_rows(got, idx)
    del got
    try:
        err = compare(op, dtype, args_np, got_np, {"reduction": "none"})
        return True, err, ""
    except AssertionError as exc:
        return False, math.nan, str(exc)[:300]


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


def _summary(samples: list[float]) -> tuple[float, float, float]:
    med = statistics.median(samples)
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) >= 2 else [med] * 9
    return med, q[0], q[-1]


def _precompile_torch(cases) -> float:
    """Compile torch.compile's graph of each (op, dtype) in `cases` on a tiny input (the
    graphs have dynamic shapes, so the plan's shapes reuse them); seconds spent. A graph
    that fails to compile is left to its rows, which say why."""
    t0 = time.perf_counter()
    for op, dtype in dict.fromkeys((op, dtype) for op, dtype, _ in cases):
        fn, _ = _torch_compiled(op)
        if fn is None:
            continue
        try:  # torch tensors, as DLPack gives them for CuPy rows (ours would wait for NVRTC)
            fn(*_make_torch_inputs(op, *OVERHEAD_SHAPE, dtype))
            _sync()
        except Exception:
            pass
    return time.perf_counter() - t0


def run(
    ops: list[str] | None = None,
    dtypes: list[str] | None = None,
    shapes: list[tuple[int, int]] | None = None,
    quick: bool = False,
    backend: str | None = None,
    progress: Callable[[str], None] | None = None,
    with_baselines: bool = True,
    bandwidth: dict | None = None,
    skip_impls: tuple[str, ...] = (),
    reps: int | None = None,
    cases: list[tuple[str, str, tuple[int, int]]] | None = None,
    budget_s: float | None = None,
) -> dict:
    """Time every case; returns the results document (see write_results).

    The cases are `cases`, else every (op, dtype, shape) of ops x dtypes x shapes, else
    the default plan (`default_cases`). On the GPU, host-overhead rows (one tiny case
    per op) come first. No case starts once `budget_s` seconds have passed (default
    BUDGET_S); it gets a row saying so. `progress(msg)` is called before each case; if
    it also has `start(total)` that is called once with the number of cases first.
    """
    t_start = time.perf_counter()
    if backend is None:
        from gpu_softmax._cuda.info import gpu_status

        backend = "cuda" if gpu_status()[0] else "numpy"
    if cases is None:
        cases = (plan(ops or list(DEFAULT_OPS), dtypes or list(DEFAULT_DTYPES), shapes, quick, backend)
                 if (ops or dtypes or shapes) else default_cases(quick, backend))
    if budget_s is None:
        budget_s = BUDGET_S["quick" if quick else "full"]
    rng = np.random.default_rng()
    doc: dict[str, Any] = {"backend": backend, "date": time.strftime("%Y-%m-%d"),
                           "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": [],
                           **source_identity(), "budget_s": budget_s}
    compile_s: dict[str, float] = {}
    warm = None
    if backend == "cuda":
        import cupy

        from gpu_softmax._cuda.info import device_name

        warm = KernelWarmup()  # NVRTC in the background while torch imports and bandwidth is measured
        xp = cupy
        doc["device"] = device_name(cupy.cuda.Device().id)
        doc["device_info"] = device_info()
        l2 = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize", 50 << 20)
        n_reps = reps or (10 if quick else 30)
        doc["timing"] = (f"CUDA events, 3 warm-up calls untimed, median of {n_reps} calls, inputs rotated over "
                         ">= 2x L2; kernel ms: the calls queued behind a spin kernel (device time alone); "
                         "call ms: back-to-back calls as an eager loop sees them")
        if with_baselines and "torch.compile" not in skip_impls:  # this run's compiles are this run's to count
            _COMPILED.clear()
            try:
                import torch

                torch._dynamo.reset()
            except Exception:
                pass
    else:
        xp = np
        doc["device"] = f"CPU ({platform.processor() or platform.machine()}), NumPy reference"
        l2 = 0
        n_reps = reps or 3
        doc["timing"] = f"host clock, 1 warm-up call, median of {n_reps} calls"
    doc["l2_bytes"] = int(l2)
    doc["versions"] = package_versions()
    doc.update(bandwidth or copy_bandwidth_gbps(backend))
    copy, read = doc["copy_gbps"], doc.get("read_gbps")
    notes: dict[str, str] = {}  # "impl: why" once per distinct reason
    empty_ms = None
    all_cases = [(c, "timing") for c in cases]
    if backend == "cuda":
        all_cases = [(c, "overhead") for c in overhead_cases(cases)] + all_cases
        empty_ms = empty_launch_ms()
        doc["empty_launch_ms"] = empty_ms

    if warm is not None and with_baselines and "torch.compile" not in skip_impls:
        # while NVRTC compiles our kernels: one dynamic-shape graph per (op, dtype) of the plan
        compile_s["torch.compile"] = _precompile_torch(cases)

    _notify(progress, "start", len(all_cases))
    for (op, dtype, (rows, cols)), kind in all_cases:
        if progress:
            progress(f"{op} {dtype} {rows}x{cols}" + (" (host overhead)" if kind == "overhead" else ""))
        nbytes = op_bytes(op, rows, cols, itemsize(dtype))
        torch_native = dtype in TORCH_ONLY_DTYPES
        ours_name = "gpu_softmax" if backend == "cuda" else REFERENCE_IMPL

        def blank(impl: str, note: str = "") -> Row:
            return Row(op, impl, dtype, [rows, cols], math.nan, math.nan, math.nan, math.nan, None, backend,
                       note=note, bytes=nbytes, kind=kind)

        elapsed = time.perf_counter() - t_start
        if elapsed > budget_s:
            doc["rows"].append(asdict(blank(ours_name, f"not run: the time budget ({budget_s:.0f} s) was spent")))
            continue
        skip = tuple(skip_impls) + (OVERHEAD_SKIP if kind == "overhead" else ())
        impls, absent = implementations(op, dtype, backend, with_baselines, skip)
        for impl, why in absent.items():
            notes.setdefault(f"{impl}: {why}", f"{impl}: {why}")
        if ours_name not in impls:  # say why there is no row of ours
            doc["rows"].append(asdict(blank(ours_name, f"skipped: {absent.get(ours_name, '')}")))
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
            doc["rows"].append(asdict(blank(ours_name, f"inputs: {type(exc).__name__}: {str(exc)[:200]}")))
            continue
        timings: dict[str, float] = {}
        case_rows: list[Row] = []
        for impl, fn in impls.items():
            row = blank(impl)
            try:
                if impl == "gpu_softmax" and warm is not None:
                    warm.wait()
                if impl == "gpu_softmax" and kind == "timing":
                    check = _ours_for_check(op, dtype)
                    if check is not None:
                        row.matched, row.max_rel_err, why = check_sampled(op, dtype, check, arg_sets[0], rng)
                        if why:
                            row.note = f"sampled rows: {why}"
                    row.plan = _plan_info(op, dtype, rows, cols)
                if backend == "cuda":
                    t = time_gpu(fn, arg_sets, reps=n_reps)
                    kernel, call = t.kernel, t.call
                    row.kernel_covered, row.first_call_ms = t.covered, t.first_ms
                    if not t.covered:
                        row.note = (row.note + "; " if row.note else "") + \
                            "kernel time may include host gaps (the call waited for the GPU)"
                    if op == "cross_entropy_with_grad" and kind == "timing":
                        row.peak_mem_bytes = peak_memory_bytes(fn, arg_sets[0])
                else:
                    kernel = call = time_cpu(fn, arg_sets, reps=n_reps)
            except NotImplementedError as exc:
                row.note = f"not implemented: {str(exc)[:200]}"
                case_rows.append(row)
                continue
            except Exception as exc:  # an implementation that fails is skipped with a note
                row.note = f"{type(exc).__name__}: {str(exc)[:200]}"
                case_rows.append(row)
                continue
            row.reps = len(kernel)
            row.ms, row.ms_p10, row.ms_p90 = _summary(kernel)
            row.call_ms, row.call_p10, row.call_p90 = _summary(call)
            row.gbps = nbytes / row.ms / 1e6 if row.ms > 0 else math.nan
            row.pct_copy = 100.0 * row.gbps / copy if copy else None
            row.pct_read = 100.0 * row.gbps / read if read else None
            if kind == "overhead" and empty_ms is not None:
                row.host_overhead_us = 1e3 * (row.call_ms - empty_ms)
            if row.first_call_ms is not None and impl in JIT_IMPLS:
                # the first call's excess over a steady one: torch.compile / Triton / CuTe JIT
                compile_s[impl] = compile_s.get(impl, 0.0) + max(0.0, row.first_call_ms - row.call_ms) / 1e3
            if torch_native and impl == "gpu_softmax":
                row.note = (row.note + "; " if row.note else "") + "via the torch bridge gpu_softmax.torch"
            timings[impl] = row.ms
            case_rows.append(row)
        ours = timings.get(ours_name)
        bridge = timings.get("gpu_softmax.torch")
        for row in case_rows:
            if row.impl == ours_name and ours:
                row.speedup = {k: v / ours for k, v in timings.items() if k != ours_name}
            elif row.impl == "gpu_softmax.torch" and bridge:  # the training path against the others'
                row.speedup = {k: v / bridge for k, v in timings.items() if k not in OURS + ("gpu_softmax.torch",)}
            doc["rows"].append(asdict(row))
        del arg_sets
    if warm is not None:
        compile_s["nvrtc"] = warm.wait()
        for fam, err in warm.errors.items():
            notes.setdefault(fam, f"NVRTC compile of {fam}.cu failed: {err}")
    doc["notes"] = sorted(notes.values())
    doc["compile_seconds"] = {k: round(v, 2) for k, v in compile_s.items()}
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    return doc


# ----------------------------------------------------------------------------------
# dry run: what a plan costs, without a GPU

# What the estimate assumes. NVRTC: measured on this project's 2-core CI-class machine
# under heavy load (softmax.cu 15 s, cross_entropy.cu 35 s for one architecture); the
# two compile in parallel threads. The rest are round upper values for a cold start
# (empty Inductor/Triton/CuPy caches) on an H100 host, not measurements: the GPU run
# reports the real ones in compile_seconds.
ASSUMED = {
    "gpu_gbps": 2000.0,  # device bandwidth for the timed calls (H100 PCIe ~2000, SXM ~3000, H200 ~4250)
    "call_overhead_ms": 0.3,  # host time per call (autograd, checks), paid when the GPU is faster
    "nvrtc_s": {"softmax": 15.0, "cross_entropy": 35.0},
    "imports_s": 6.0,  # CuPy, torch, Triton, Liger
    "bandwidth_probe_s": 1.5,
    "case_fixed_s": 0.4,  # inputs, events, peak-memory sync, pool frees per case
    "torch_compile_first_s": 20.0,  # Inductor's cold start and its first graph
    "torch_compile_next_s": 8.0,  # each further (op, dtype) graph (dynamic shapes: not per shape)
    "triton_jit_s": 3.0,  # each Liger kernel configuration (per dtype and block size)
    "quack_jit_s": 3.0,  # each QuACK (CuTe) compile (per dtype and row length)
}
LIGER_MAX_COLS = 65536  # Liger's softmax refuses longer rows (seen on the H200)


def estimate(cases, reps: int | None = None, quick: bool = True, baselines=BASELINE_IMPLS, assumed=None) -> dict:
    """Estimated seconds of `run` on a GPU for these cases, every baseline in
    `baselines` present, caches empty: counts of calls, bytes and compiles times the
    ASSUMED costs. The GPU run's own elapsed_s and compile_seconds are the measurement."""
    a = dict(ASSUMED, **(assumed or {}))
    n_reps = reps or (10 if quick else 30)
    all_cases = [(c, "overhead") for c in overhead_cases(cases)] + [(c, "timing") for c in cases]
    calls = 0
    device_s = 0.0
    graphs: set[tuple[str, str, bool]] = set()
    liger: set[tuple[str, str, int]] = set()
    quack: set[tuple[str, str, int]] = set()
    for (op, dtype, (rows, cols)), kind in all_cases:
        impls = ["gpu_softmax"] + [b for b in baselines if (b != "cupyx" or op in ("softmax", "log_softmax", "logsumexp"))
                                   and not (kind == "overhead" and b in OVERHEAD_SKIP)]
        if op == "cross_entropy_with_grad":
            impls.append("gpu_softmax.torch")
        per_impl = 3 + 2 * n_reps + (2 if kind == "timing" else 0)  # warm-up, two loops, check / peak memory
        nbytes = op_bytes(op, rows, cols, itemsize(dtype))
        for impl in impls:
            calls += per_impl
            device_s += per_impl * max(nbytes / (a["gpu_gbps"] * 1e9), a["call_overhead_ms"] / 1e3)
        if "torch.compile" in impls:
            graphs.add((op, dtype, rows == 1))  # dynamo specialises a dimension of size 1
        if "liger" in impls and op in ("softmax", "cross_entropy", "cross_entropy_with_grad"):
            if op.startswith("cross_entropy"):
                liger.add((op, dtype, min(1 << 15, 1 << max(0, (cols - 1).bit_length()))))
            elif cols <= LIGER_MAX_COLS:
                liger.add((op, dtype, 1 << max(0, (cols - 1).bit_length())))
        if "quack" in impls and op in ("softmax", "cross_entropy", "cross_entropy_with_grad"):
            quack.add((op, dtype, cols))
    torch_compile_s = (a["torch_compile_first_s"] + a["torch_compile_next_s"] * (len(graphs) - 1)) if graphs else 0.0
    nvrtc_s = max(a["nvrtc_s"].values())  # the families compile in parallel
    seconds = {
        # NVRTC runs in background threads while the main thread imports and compiles torch graphs
        "compile (NVRTC || imports + torch.compile)": max(nvrtc_s, a["imports_s"] + torch_compile_s),
        "triton JIT (Liger)": a["triton_jit_s"] * len(liger),
        "CuTe JIT (QuACK)": a["quack_jit_s"] * len(quack),
        "bandwidth probe": a["bandwidth_probe_s"],
        "timed calls on the device": device_s,
        "per-case fixed costs": a["case_fixed_s"] * len(all_cases),
    }
    return {"cases": len(all_cases), "timed_calls": calls, "torch_compile_graphs": len(graphs),
            "liger_kernels": len(liger), "quack_kernels": len(quack), "nvrtc_s": nvrtc_s,
            "torch_compile_s": torch_compile_s, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "total_s": round(sum(seconds.values()), 1), "assumed": a}


def format_estimate(est: dict, cases) -> str:
    lines = [f"dry run: {len(cases)} cases (+{est['cases'] - len(cases)} host-overhead rows), "
             f"{est['timed_calls']} timed calls, {est['torch_compile_graphs']} torch.compile graphs, "
             f"{est['liger_kernels']} Liger and {est['quack_kernels']} QuACK kernel compiles"]
    for op, dtype, (r, c) in cases:
        lines.append(f"  {op} {dtype} {r}x{c}")
    lines.append("estimated seconds on a GPU with empty caches (every baseline present):")
    lines += [f"  {k:<45} {v:7.1f}" for k, v in est["seconds"].items()]
    lines.append(f"  {'total':<45} {est['total_s']:7.1f}")
    lines.append("(assumed costs: gpu_softmax.bench.ASSUMED; a GPU run reports the measured ones)")
    return "\n".join(lines)


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
        full_ms = time_gpu(lambda: gs.cross_entropy_with_grad(x, t, validate=False), [()], 3, reps).kernel
        full_bytes = op_bytes("cross_entropy_with_grad", n_rows, vocab, isz)
        out.append(row("gpu_softmax (1 GPU, full V)", (n_rows, vocab), full_ms, full_bytes))
        for p in ranks:
            width = -(-vocab // p)
            shard = cupy.ascontiguousarray(x[:, :width])

            def one_rank():
                rec = vp.partial_stats(shard, t, 0, vocab, validate=False)
                gathered = cupy.broadcast_to(rec, (p,) + rec.shape)
                return vp.finish(shard, t, 0, vocab, cupy.ascontiguousarray(gathered), validate=False)

            ms = time_gpu(one_rank, [()], 3, reps).kernel
            # the shard read twice (statistics, then the gradient pass), the gradient written once
            nbytes = 3 * n_rows * width * isz
            out.append(row(f"gpu_softmax (per rank, P={p})", (n_rows, width), ms, nbytes,
                           note="per-rank kernels only; the all-gather of 20 B/row/rank is not timed",
                           speedup={"1 GPU, full V": statistics.median(full_ms) / statistics.median(ms)}))
        del x, t
    return out


# ----------------------------------------------------------------------------------
# goals and output


def _shape_key(shape) -> tuple[int, int]:
    return int(shape[0]), int(shape[1])


def evaluate_goals(doc: dict) -> list[dict]:
    """Each goal case the document measured: our value, the target, and whether it is met.

    Only (op, dtype, shape) cases present in the document appear; a case whose row
    carries no number (failed, skipped) has met=None.
    """
    ours = {(r["op"], r["dtype"], _shape_key(r["shape"])): r for r in doc.get("rows", [])
            if r["impl"] == "gpu_softmax" and r.get("kind", "timing") == "timing"}
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


def _spread(lo, hi) -> str:
    return "" if lo is None or lo != lo else f"{lo:.4f}-{hi:.4f}"


TABLE_HEADER = ["op", "impl", "dtype", "shape", "kernel ms", "p10-p90 ms", "call ms", "call p10-p90", "GB/s",
                "% copy", "matched ref", "speed-up", "peak mem", "host overhead us", "note"]


def _row_cells(r: dict) -> list[str]:
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("speedup") or {}).items())
    if r["matched"] is None:
        matched = ""
    elif r["matched"]:
        matched = "yes"
    else:
        err = r.get("max_rel_err")
        matched = f"NO ({err:.2e})" if err is not None and err == err else "NO"
    gpu = r.get("backend") == "cuda"  # without a GPU call and kernel time are one host-clock time
    return [r["op"], r["impl"], r["dtype"], f"{r['shape'][0]}x{r['shape'][1]}", _fmt(r["ms"], ".4f"),
            _spread(r["ms_p10"], r["ms_p90"]), _fmt(r.get("call_ms"), ".4f") if gpu else "",
            _spread(r.get("call_p10"), r.get("call_p90")) if gpu else "", _fmt(r["gbps"], ".1f"),
            _fmt(r["pct_copy"], ".1f"), matched, sp, _fmt_bytes(r.get("peak_mem_bytes")),
            _fmt(r.get("host_overhead_us"), ".1f"), str(r.get("note", "")).replace("|", "/").replace("\n", " ")]


def table(doc: dict) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the results table, without the columns no row fills."""
    cells = [_row_cells(r) for r in doc["rows"]]
    keep = [i for i, _ in enumerate(TABLE_HEADER) if i < 4 or any(c[i] for c in cells)]
    header = [TABLE_HEADER[i] for i in keep]
    if doc.get("backend") != "cuda":
        header = ["median ms" if h == "kernel ms" else h for h in header]
    return header, [[c[i] for i in keep] for c in cells]


def compile_summary(doc: dict) -> str:
    cs = doc.get("compile_seconds") or {}
    if not cs:
        return ""
    names = {"nvrtc": "NVRTC (our kernels, background; a warm kernel cache makes it short)",
             "torch.compile": "torch.compile"}
    parts = [f"{names.get(k, k + ' first-call JIT')} {v:.1f} s" for k, v in cs.items()]
    return "compile: " + "; ".join(parts)


def markdown_table(doc: dict) -> str:
    lines = [
        f"# gpu_softmax benchmark: {doc.get('device')} ({doc.get('backend')} backend), {doc.get('date')}",
        "",
        f"Copy bandwidth (read + write): {doc.get('copy_gbps', float('nan')):.1f} GB/s; "
        f"read-only: {doc.get('read_gbps', float('nan')):.1f} GB/s",
        "",
    ]
    if doc.get("commit"):
        lines += [f"Commit {doc['commit']}, cuda_src tree {doc.get('cuda_src_tree')}.", ""]
    if doc.get("timing"):
        lines += [f"Timing: {doc['timing']}. GB/s counts the fewest bytes each op must move (inputs read once, "
                  "outputs written once); speed-up is baseline time / our time.", ""]
    if doc.get("backend") != "cuda":
        lines += [f"No GPU: every row times the NumPy reference on the CPU (impl \"{REFERENCE_IMPL}\"); "
                  "these are not GPU numbers.", ""]
    if doc.get("elapsed_s") is not None:
        lines += [f"Elapsed {doc['elapsed_s']:.1f} s. {compile_summary(doc)}".rstrip(), ""]
    header, cells = table(doc)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
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
    if no_plot_reason(doc) is None:
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
        if r.get("kind", "timing") == "timing":
            groups.setdefault((r["op"], r["dtype"]), []).append(r)
    return groups


def no_plot_reason(doc: dict) -> str | None:
    """Why there can be no plot (None: there can)."""
    try:
        import matplotlib  # noqa: F401
    except Exception:
        return 'matplotlib is not installed (pip install ".[bench]")'
    if not any(r["gbps"] == r["gbps"] for rows in _groups(doc).values() for r in rows):
        return "no row has a timing (every case was skipped or failed; see the notes)"
    return None


def _draw(ax, doc: dict, op: str, dtype: str, rows: list[dict]) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["gbps"] == r["gbps"]:
            series.setdefault(r["impl"], []).append((r["shape"][1], r["gbps"]))
    for impl in sorted(series, key=lambda k: (IMPLS.index(k) if k in IMPLS else 99, k)):
        pts = sorted(series[impl])
        style = dict(linewidth=2.5, color="C3") if impl in OURS else {}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, **style)
    for r in rows:  # shapes can share a row length: say how many rows each of ours had
        if r["impl"] in OURS and r["gbps"] == r["gbps"]:
            ax.annotate(f"{r['shape'][0]} rows", (r["shape"][1], r["gbps"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    if doc.get("copy_gbps"):
        ax.axhline(doc["copy_gbps"], color="k", linestyle="--", linewidth=1, label="copy bandwidth (ceiling)")
    if doc.get("read_gbps") and op in ("cross_entropy", "logsumexp"):
        ax.axhline(doc["read_gbps"], color="gray", linestyle=":", linewidth=1, label="read bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (elements)")
    ax.set_ylabel("GB/s (kernel time)" if doc.get("backend") == "cuda" else "GB/s (host clock, CPU)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{op} {dtype}", fontsize=9)
    ax.legend(fontsize=6)


def plot(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    """GB/s against row length, one line per implementation, copy bandwidth as the ceiling;
    one file per (op, dtype) and an overview with every (op, dtype) as a panel.
    Returns [] without matplotlib or without a timed row (no_plot_reason says which)."""
    if no_plot_reason(doc) is not None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {k: v for k, v in _groups(doc).items() if any(r["gbps"] == r["gbps"] for r in v)}
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
