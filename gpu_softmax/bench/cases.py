"""What the benchmark times: ops, dtypes, implementations, the case plans, the row record."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

OPS = ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward",
       "cross_entropy", "cross_entropy_with_grad")
TRAINING_OP = "cross_entropy_with_grad"  # forward and .backward(): the training step
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

DEFAULT_OPS = ("softmax", "log_softmax", "cross_entropy_with_grad")
DEFAULT_DTYPES = ("float32", "float16")

Case = tuple[str, str, tuple[int, int]]  # (op, dtype, (rows, cols))


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
    """The fewest bytes `op` must move: inputs read once, outputs written once."""
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


def plan(ops, dtypes, shapes, quick: bool, backend: str) -> list[Case]:
    """Every (op, dtype, shape) case `run` goes through, in order."""
    return [(op, dtype, (r, c)) for op in ops for dtype in dtypes
            for r, c in (shapes or default_shapes(op, backend, quick))]


def default_cases(quick: bool, backend: str) -> list[Case]:
    """The plan when the user names no op, dtype or shape."""
    if backend == "cuda":
        return list(QUICK_PLAN if quick else FULL_PLAN)
    return plan(DEFAULT_OPS, DEFAULT_DTYPES, None, quick, backend)


def chosen_cases(ops, dtypes, shapes, quick: bool, backend: str) -> list[Case]:
    """The plan for what the user named (ops, dtypes, shapes), else the default plan."""
    if ops or dtypes or shapes:
        return plan(ops or list(DEFAULT_OPS), dtypes or list(DEFAULT_DTYPES), shapes, quick, backend)
    return default_cases(quick, backend)


def overhead_cases(cases) -> list[Case]:
    """One tiny case per (op, dtype) of the plan, first dtype of each op only."""
    seen: dict[str, str] = {}
    for op, dtype, _ in cases:
        seen.setdefault(op, dtype)
    return [(op, dtype, OVERHEAD_SHAPE) for op, dtype in seen.items()]


# The fused linear cross-entropy's rows (GPU only, torch tensors): (N, H, V) shapes, the training step.
LINEAR_CE_OP = "linear_cross_entropy"
GPU_ONLY_OPS = (LINEAR_CE_OP,)
LINEAR_CE_SHAPES = [(8192, 4096, 128256), (16384, 4096, 128256), (8192, 4096, 32000), (4096, 8192, 262144)]
QUICK_LINEAR_CE_SHAPES = [(8192, 4096, 128256)]
LINEAR_CE_DTYPE = "bfloat16"
LINEAR_CE_GOAL_PCT = 75.0  # of the measured bf16 matmul rate, ours at the first goal shape
LINEAR_CE_IMPLS = ("gpu_softmax.torch", "torch", "torch.linear_cross_entropy", "torch.linear_cross_entropy(chunked)",
                   "torch.compile", "liger")


def linear_ce_flops(n: int, h: int, v: int) -> int:
    """The FLOP floor of the training step: three (N, H, V) matrix products of 2 N H V each."""
    return 6 * n * h * v
