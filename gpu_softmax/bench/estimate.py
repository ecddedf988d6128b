"""The dry run: what a plan should cost on a GPU with empty caches, without one."""

from __future__ import annotations

from .cases import BASELINE_IMPLS, OVERHEAD_SKIP, TRAINING_OP, itemsize, op_bytes, overhead_cases

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
_JIT_OPS = ("softmax", "cross_entropy", "cross_entropy_with_grad")  # what Liger and QuACK provide


def _case_impls(op: str, kind: str, baselines) -> list[str]:
    impls = ["gpu_softmax"] + [b for b in baselines if (b != "cupyx" or op in ("softmax", "log_softmax", "logsumexp"))
                               and not (kind == "overhead" and b in OVERHEAD_SKIP)]
    if op == TRAINING_OP:
        impls.append("gpu_softmax.torch")
    return impls


def _liger_config(op: str, dtype: str, cols: int) -> tuple | None:
    """The Triton configuration Liger compiles for a case (None: it refuses the row length)."""
    if op.startswith("cross_entropy"):
        return op, dtype, min(1 << 15, 1 << max(0, (cols - 1).bit_length()))
    if cols <= LIGER_MAX_COLS:
        return op, dtype, 1 << max(0, (cols - 1).bit_length())
    return None


def _count(all_cases, n_reps: int, baselines, a: dict) -> tuple[int, float, set, set, set]:
    """(timed calls, device seconds, torch.compile graphs, Liger configs, QuACK compiles)."""
    calls, device_s = 0, 0.0
    graphs: set[tuple] = set()
    liger: set[tuple] = set()
    quack: set[tuple] = set()
    for (op, dtype, (rows, cols)), kind in all_cases:
        impls = _case_impls(op, kind, baselines)
        per_impl = 3 + 2 * n_reps + (2 if kind == "timing" else 0)  # warm-up, two loops, check / peak memory
        nbytes = op_bytes(op, rows, cols, itemsize(dtype))
        calls += per_impl * len(impls)
        device_s += len(impls) * per_impl * max(nbytes / (a["gpu_gbps"] * 1e9), a["call_overhead_ms"] / 1e3)
        if "torch.compile" in impls:
            graphs.add((op, dtype, rows == 1))  # dynamo specialises a dimension of size 1
        if "liger" in impls and op in _JIT_OPS and (cfg := _liger_config(op, dtype, cols)) is not None:
            liger.add(cfg)
        if "quack" in impls and op in _JIT_OPS:
            quack.add((op, dtype, cols))
    return calls, device_s, graphs, liger, quack


def estimate(cases, reps: int | None = None, quick: bool = True, baselines=BASELINE_IMPLS, assumed=None) -> dict:
    """Estimated seconds of `run` on a GPU for these cases, every baseline in
    `baselines` present, caches empty: counts of calls, bytes and compiles times the
    ASSUMED costs. The GPU run's own elapsed_s and compile_seconds are the measurement."""
    a = dict(ASSUMED, **(assumed or {}))
    n_reps = reps or (10 if quick else 30)
    all_cases = [(c, "overhead") for c in overhead_cases(cases)] + [(c, "timing") for c in cases]
    calls, device_s, graphs, liger, quack = _count(all_cases, n_reps, baselines, a)
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
    lines.append("(assumed costs: gpu_softmax.bench.estimate.ASSUMED; a GPU run reports the measured ones)")
    return "\n".join(lines)
