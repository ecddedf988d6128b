"""Benchmark runner shared by `gpu-softmax bench` and benchmarks/device_check.py.

GPU timing: CUDA events on the current stream, warm-up outside the timed region,
median of many runs, inputs rotated among buffers that together exceed L2, fresh
random data. Bandwidth counts the fewest bytes each op must move (inputs read once,
outputs written once) and is reported against the device-to-device copy bandwidth
measured in the same run (bytes read + bytes written).

Without a GPU the same rows are produced for the NumPy reference on small shapes,
timed with the host clock, so the command still says something true and writes its
files; the rows say which backend ran.
"""

from __future__ import annotations

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

# Shapes named in the kernel issues' performance goals.
GPU_SHAPES = {
    "softmax": [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144), (8, 262144), (1, 1048576)],
    "cross_entropy_with_grad": [(8192, 32000), (4096, 128256), (2048, 262144)],
    "cross_entropy": [(8192, 32000), (4096, 128256), (2048, 262144)],
}
QUICK_GPU_SHAPES = [(4096, 32768), (1024, 131072), (8, 262144)]
CPU_SHAPES = [(64, 1000), (16, 32000), (4, 131072)]
QUICK_CPU_SHAPES = [(64, 1000), (4, 32000)]


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
    speedup: dict[str, float] = field(default_factory=dict)  # over each baseline
    note: str = ""


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


def _make_inputs(xp, op: str, rows: int, cols: int, dtype, rng) -> tuple:
    """Fresh random arguments (never zeros) for one call of `op`."""
    x = rng.standard_normal((rows, cols), dtype=np.float32) * 3
    x = xp.asarray(x.astype(dtype))
    if op in ("softmax_backward", "log_softmax_backward"):
        gy = xp.asarray(rng.standard_normal((rows, cols), dtype=np.float32).astype(dtype))
        y = gs.softmax(x) if op == "softmax_backward" else gs.log_softmax(x)
        return (gy, y)
    if op.startswith("cross_entropy"):
        t = xp.asarray(rng.integers(0, cols, size=rows, dtype=np.int64))
        return (x, t)
    return (x,)


def _ours(op: str) -> Callable:
    fn = getattr(gs, op)
    if op.startswith("cross_entropy"):
        return lambda x, t: fn(x, t, validate=False)
    return fn


# ----------------------------------------------------------------------------------
# baselines (each returns None when not present; never fails the run)


def _torch_baselines(op: str, compiled: bool) -> Callable | None:
    try:
        import torch
        import torch.nn.functional as F
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None

    def t(a):
        return torch.from_dlpack(a)

    eager = {
        "softmax": lambda x: torch.softmax(t(x), -1),
        "log_softmax": lambda x: torch.log_softmax(t(x), -1),
        "logsumexp": lambda x: torch.logsumexp(t(x), -1),
        "softmax_backward": lambda gy, y: torch._softmax_backward_data(t(gy), t(y), -1, t(y).dtype),
        "log_softmax_backward": lambda gy, y: torch._log_softmax_backward_data(t(gy), t(y), -1, t(y).dtype),
        "cross_entropy": lambda x, tg: F.cross_entropy(t(x), t(tg)),
    }

    def ce_fwd_bwd(x, tg):
        xt = t(x).detach().requires_grad_(True)
        loss = F.cross_entropy(xt, t(tg))
        loss.backward()
        return xt.grad

    eager["cross_entropy_with_grad"] = ce_fwd_bwd
    fn = eager.get(op)
    if fn is None or not compiled:
        return fn
    try:
        return torch.compile(fn, dynamic=False)
    except Exception:
        return None


def _cupyx_baseline(op: str) -> Callable | None:
    try:
        import cupyx.scipy.special as sp
    except Exception:
        return None
    return {
        "softmax": lambda x: sp.softmax(x, axis=-1),
        "log_softmax": lambda x: sp.log_softmax(x, axis=-1),
        "logsumexp": lambda x: sp.logsumexp(x, axis=-1),
    }.get(op)


def baselines(op: str) -> dict[str, Callable | None]:
    return {
        "torch": _torch_baselines(op, compiled=False),
        "torch.compile": _torch_baselines(op, compiled=True),
        "cupyx": _cupyx_baseline(op),
    }


# ----------------------------------------------------------------------------------
# timing


def time_gpu(fn: Callable, arg_sets: list[tuple], warmup: int = 3, reps: int = 20) -> list[float]:
    """Milliseconds per call, CUDA events around each call, rotating argument sets."""
    import cupy

    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    cupy.cuda.get_current_stream().synchronize()
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
    got = result.get() if hasattr(result, "get") else np.asarray(result)
    err = max_relative_error(got, expected)
    rtol, _ = tolerance(dtype)
    e = np.asarray(expected, dtype=np.float64)
    scale = float(np.nanmax(np.abs(e))) if np.isfinite(e).any() else 1.0
    try:
        assert_close(got, expected, dtype, atol=rtol * scale)
        return True, err
    except AssertionError:
        return False, err


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
) -> dict:
    """Time every (op, dtype, shape); returns the results document (see write_results)."""
    if backend is None:
        from gpu_softmax._cuda.info import gpu_status

        backend = "cuda" if gpu_status()[0] else "numpy"
    rng = np.random.default_rng()
    doc: dict[str, Any] = {"backend": backend, "date": time.strftime("%Y-%m-%d"), "rows": []}
    if backend == "cuda":
        import cupy

        from gpu_softmax._cuda.info import device_name

        xp = cupy
        doc["device"] = device_name(cupy.cuda.Device().id)
        l2 = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize", 50 << 20)
        timer, reps = time_gpu, (10 if quick else 30)
    else:
        xp = np
        doc["device"] = f"CPU ({platform.processor() or platform.machine()}), NumPy reference"
        l2 = 0
        timer, reps = time_cpu, 3
    doc.update(bandwidth or copy_bandwidth_gbps(backend))
    copy = doc["copy_gbps"]

    for op in ops:
        op_shapes = shapes or (
            (QUICK_GPU_SHAPES if quick else GPU_SHAPES.get(op, GPU_SHAPES["softmax"]))
            if backend == "cuda"
            else (QUICK_CPU_SHAPES if quick else CPU_SHAPES)
        )
        for dtype in dtypes:
            for rows, cols in op_shapes:
                if progress:
                    progress(f"{op} {dtype} {rows}x{cols}")
                itemsize = np.dtype(dtype).itemsize
                nbytes = op_bytes(op, rows, cols, itemsize)
                # Enough argument sets that one pass over them overflows L2.
                n_sets = max(1, min(4, math.ceil(2 * l2 / max(nbytes, 1)) + 1)) if backend == "cuda" else 1
                try:
                    arg_sets = [_make_inputs(xp, op, rows, cols, dtype, rng) for _ in range(n_sets)]
                except Exception as exc:  # out of device memory, say
                    doc["rows"].append(asdict(Row(op, "gpu_softmax", dtype, [rows, cols], math.nan, math.nan,
                                                  math.nan, math.nan, None, backend, note=f"inputs: {exc}")))
                    continue
                impls: dict[str, Callable | None] = {"gpu_softmax": _ours(op)}
                if backend == "cuda" and with_baselines:
                    impls.update({k: v for k, v in baselines(op).items() if k not in skip_impls})
                timings: dict[str, float] = {}
                for impl, fn in impls.items():
                    if fn is None:
                        continue
                    row = Row(op, impl, dtype, [rows, cols], math.nan, math.nan, math.nan, math.nan, None, backend)
                    try:
                        if impl == "gpu_softmax" and backend == "cuda":
                            result = fn(*arg_sets[0])
                            args_np = tuple(a.get() if hasattr(a, "get") else a for a in arg_sets[0])
                            row.matched, row.max_rel_err = _check_against_reference(op, args_np, result, dtype)
                        ms = timer(fn, arg_sets, reps=reps)
                    except NotImplementedError as exc:
                        row.note = f"not implemented: {exc}"
                        doc["rows"].append(asdict(row))
                        continue
                    except Exception as exc:  # a baseline that fails is skipped with a note
                        row.note = f"{type(exc).__name__}: {str(exc)[:200]}"
                        doc["rows"].append(asdict(row))
                        continue
                    row.ms = statistics.median(ms)
                    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [row.ms] * 9
                    row.ms_p10, row.ms_p90 = q[0], q[-1]
                    row.gbps = nbytes / row.ms / 1e6
                    row.pct_copy = 100.0 * row.gbps / copy if copy else None
                    timings[impl] = row.ms
                    doc["rows"].append(asdict(row))
                ours = timings.get("gpu_softmax")
                if ours:
                    for r in doc["rows"]:
                        if r["impl"] == "gpu_softmax" and r["op"] == op and r["dtype"] == dtype and r["shape"] == [rows, cols]:
                            r["speedup"] = {k: v / ours for k, v in timings.items() if k != "gpu_softmax"}
                del arg_sets
    return doc


def markdown_table(doc: dict) -> str:
    lines = [
        f"# gpu_softmax benchmark: {doc.get('device')} ({doc.get('backend')} backend), {doc.get('date')}",
        "",
        f"Copy bandwidth (read + write): {doc.get('copy_gbps', float('nan')):.1f} GB/s; "
        f"read-only: {doc.get('read_gbps', float('nan')):.1f} GB/s",
        "",
        "| op | impl | dtype | shape | median ms | p10-p90 ms | GB/s | % copy | matched ref | speed-up | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        pct = "" if r["pct_copy"] is None else f"{r['pct_copy']:.1f}"
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in r.get("speedup", {}).items())
        matched = "" if r["matched"] is None else ("yes" if r["matched"] else f"NO ({r['max_rel_err']:.2e})")
        lines.append(
            f"| {r['op']} | {r['impl']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} | {r['ms']:.4f} | "
            f"{r['ms_p10']:.4f}-{r['ms_p90']:.4f} | {r['gbps']:.1f} | {pct} | {matched} | {sp} | {r['note']} |"
        )
    return "\n".join(lines) + "\n"


def write_results(doc: dict, out_dir: Path, stem: str = "results") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(doc, indent=2, default=float) + "\n")
    paths[1].write_text(markdown_table(doc))
    png = plot(doc, out_dir / f"{stem}.png")
    if png:
        paths.append(png)
    return paths


def plot(doc: dict, path: Path) -> Path | None:
    """GB/s against row length, one line per implementation and op, copy bandwidth as ceiling."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return None
    rows = [r for r in doc["rows"] if r["gbps"] == r["gbps"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(f"{r['op']} / {r['impl']} / {r['dtype']}", []).append((r["shape"][1], r["gbps"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if doc.get("copy_gbps"):
        ax.axhline(doc["copy_gbps"], color="k", linestyle="--", label="copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("row length (elements)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"{doc.get('device')} ({doc.get('backend')})")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
