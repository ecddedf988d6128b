"""The run loop: every case of the plan, every implementation present, into one results document."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from gpu_softmax._cuda.info import device_name, gpu_status

from . import baselines, identity, timing, warmup
from .cases import (BUDGET_S, JIT_IMPLS, OURS, OVERHEAD_SKIP, REFERENCE_IMPL, TORCH_ONLY_DTYPES, TRAINING_OP,
                    Case, Row, chosen_cases, itemsize, op_bytes, overhead_cases)
from .check import check_sampled
from .inputs import make_inputs, make_torch_inputs, n_arg_sets


@dataclass
class _Setup:
    """What every case of one run shares."""

    backend: str
    xp: Any  # numpy or cupy
    l2: int
    reps: int
    copy_gbps: float | None
    read_gbps: float | None
    with_baselines: bool
    skip_impls: tuple[str, ...]
    rng: Any
    warm: warmup.KernelWarmup | None = None
    empty_ms: float | None = None  # an empty kernel launch's call time (the overhead rows' floor)


def _notify(progress, name: str, *args) -> None:
    hook = getattr(progress, name, None) if progress is not None else None
    if hook is not None:
        try:
            hook(*args)
        except Exception:
            pass


def _new_doc(backend: str, budget_s: float) -> dict:
    return {"backend": backend, "date": time.strftime("%Y-%m-%d"),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": [],
            **identity.source_identity(), "budget_s": budget_s}


def _prepare_gpu(doc: dict, quick: bool, reps: int | None, with_baselines: bool, skip_impls) -> tuple:
    """Start NVRTC in the background, describe the device, clear torch.compile's graphs:
    (the warm-up, cupy, L2 bytes, reps)."""
    import cupy

    warm = warmup.KernelWarmup()  # NVRTC in the background while torch imports and bandwidth is measured
    doc["device"] = device_name(cupy.cuda.Device().id)
    doc["device_info"] = identity.device_info()
    l2 = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id).get("l2CacheSize", 50 << 20)
    n_reps = reps or (10 if quick else 30)
    doc["timing"] = (f"CUDA events, 3 warm-up calls untimed, median of {n_reps} calls, inputs rotated over "
                     ">= 2x L2; kernel ms: the calls queued behind a spin kernel (device time alone); "
                     "call ms: back-to-back calls as an eager loop sees them")
    if with_baselines and "torch.compile" not in skip_impls:  # this run's compiles are this run's to count
        baselines.forget_compiled()
    return warm, cupy, int(l2), n_reps


def _prepare(doc: dict, backend: str, quick: bool, reps: int | None, with_baselines: bool, skip_impls,
             bandwidth: dict | None) -> _Setup:
    """The device (or CPU) side of the document and the run's shared setup."""
    warm = None
    if backend == "cuda":
        warm, xp, l2, n_reps = _prepare_gpu(doc, quick, reps, with_baselines, skip_impls)
    else:
        xp, l2, n_reps = np, 0, reps or 3
        doc["device"] = f"CPU ({platform.processor() or platform.machine()}), NumPy reference"
        doc["timing"] = f"host clock, 1 warm-up call, median of {n_reps} calls"
    doc["l2_bytes"] = l2
    doc["versions"] = identity.package_versions()
    doc.update(bandwidth or timing.copy_bandwidth_gbps(backend))
    setup = _Setup(backend, xp, l2, n_reps, doc["copy_gbps"], doc.get("read_gbps"), with_baselines,
                   tuple(skip_impls), np.random.default_rng(), warm)
    if backend == "cuda":
        setup.empty_ms = doc["empty_launch_ms"] = timing.empty_launch_ms()
    return setup


def _blank(setup: _Setup, case: Case, kind: str, impl: str, note: str = "") -> Row:
    op, dtype, (rows, cols) = case
    return Row(op, impl, dtype, [rows, cols], math.nan, math.nan, math.nan, math.nan, None, setup.backend,
               note=note, bytes=op_bytes(op, rows, cols, itemsize(dtype)), kind=kind)


def _ours_name(setup: _Setup) -> str:
    return "gpu_softmax" if setup.backend == "cuda" else REFERENCE_IMPL


def _arg_sets(setup: _Setup, case: Case) -> list[tuple]:
    """Enough argument sets that one pass over them overflows L2 (twice over)."""
    op, dtype, (rows, cols) = case
    set_bytes = rows * cols * itemsize(dtype) * (2 if op.endswith("_backward") else 1)
    n_sets = n_arg_sets(setup.l2, set_bytes) if setup.backend == "cuda" else 1
    if dtype in TORCH_ONLY_DTYPES:
        return [make_torch_inputs(op, rows, cols, dtype) for _ in range(n_sets)]
    return [make_inputs(setup.xp, op, rows, cols, dtype, setup.rng) for _ in range(n_sets)]


def _append_note(row: Row, note: str) -> None:
    row.note = (row.note + "; " if row.note else "") + note


def _check_ours(setup: _Setup, row: Row, case: Case, arg_sets: list[tuple]) -> None:
    """Our result on sampled rows against the reference, and the plan our kernels chose."""
    op, dtype, (rows, cols) = case
    if setup.warm is not None:
        setup.warm.wait()
    fn = baselines.ours_for_check(op, dtype)
    if fn is not None:
        row.matched, row.max_rel_err, why = check_sampled(op, dtype, fn, arg_sets[0], setup.rng)
        if why:
            row.note = f"sampled rows: {why}"
    row.plan = warmup.plan_info(op, dtype, rows, cols)


def _measure(setup: _Setup, row: Row, fn: Callable, arg_sets: list[tuple]) -> tuple[list[float], list[float]]:
    """(kernel times, call times) of `fn`; on the GPU also coverage, first call and peak memory."""
    if setup.backend != "cuda":
        samples = timing.time_cpu(fn, arg_sets, reps=setup.reps)
        return samples, samples
    if setup.warm is not None and row.impl == "gpu_softmax":
        setup.warm.wait()
    t = timing.time_gpu(fn, arg_sets, reps=setup.reps)
    row.kernel_covered, row.first_call_ms = t.covered, t.first_ms
    if not t.covered:
        _append_note(row, "kernel time may include host gaps (the call waited for the GPU)")
    if row.op == TRAINING_OP and row.kind == "timing":
        row.peak_mem_bytes = timing.peak_memory_bytes(fn, arg_sets[0])
    return t.kernel, t.call


def _fill_stats(setup: _Setup, row: Row, kernel: list[float], call: list[float]) -> None:
    row.reps = len(kernel)
    row.ms, row.ms_p10, row.ms_p90 = timing.summary(kernel)
    row.call_ms, row.call_p10, row.call_p90 = timing.summary(call)
    row.gbps = row.bytes / row.ms / 1e6 if row.ms > 0 else math.nan
    row.pct_copy = 100.0 * row.gbps / setup.copy_gbps if setup.copy_gbps else None
    row.pct_read = 100.0 * row.gbps / setup.read_gbps if setup.read_gbps else None
    if row.kind == "overhead" and setup.empty_ms is not None:
        row.host_overhead_us = 1e3 * (row.call_ms - setup.empty_ms)


def _time_impl(setup: _Setup, case: Case, kind: str, impl: str, fn: Callable, arg_sets: list[tuple]) -> Row:
    """One implementation's row; an implementation that fails is a row with a note, never an error."""
    row = _blank(setup, case, kind, impl)
    try:
        if impl == "gpu_softmax" and kind == "timing":
            _check_ours(setup, row, case, arg_sets)
        kernel, call = _measure(setup, row, fn, arg_sets)
    except NotImplementedError as exc:
        row.note = f"not implemented: {str(exc)[:200]}"
        return row
    except Exception as exc:
        row.note = f"{type(exc).__name__}: {str(exc)[:200]}"
        return row
    _fill_stats(setup, row, kernel, call)
    if case[1] in TORCH_ONLY_DTYPES and impl == "gpu_softmax":
        _append_note(row, "via the torch bridge gpu_softmax.torch")
    return row


def _add_speedups(case_rows: list[Row], ours_name: str) -> None:
    """Ours (and the bridge's training path) over every other timed implementation."""
    timings = {r.impl: r.ms for r in case_rows if r.ms == r.ms}
    ours, bridge = timings.get(ours_name), timings.get("gpu_softmax.torch")
    for row in case_rows:
        if row.impl == ours_name and ours:
            row.speedup = {k: v / ours for k, v in timings.items() if k != ours_name}
        elif row.impl == "gpu_softmax.torch" and bridge:
            row.speedup = {k: v / bridge for k, v in timings.items() if k not in OURS + ("gpu_softmax.torch",)}


def _jit_seconds(rows: list[Row], compile_s: dict[str, float]) -> None:
    """The first call's excess over a steady one: torch.compile / Triton / CuTe JIT."""
    for row in rows:
        if row.first_call_ms is not None and row.impl in JIT_IMPLS and row.ms == row.ms:
            compile_s[row.impl] = compile_s.get(row.impl, 0.0) + max(0.0, row.first_call_ms - row.call_ms) / 1e3


def _run_case(setup: _Setup, case: Case, kind: str, notes: dict[str, str], compile_s: dict) -> list[dict]:
    """The rows of one case: ours first, then every implementation present."""
    op, dtype, _ = case
    ours_name = _ours_name(setup)
    skip = setup.skip_impls + (OVERHEAD_SKIP if kind == "overhead" else ())
    impls, absent = baselines.implementations(op, dtype, setup.backend, setup.with_baselines, skip)
    for impl, why in absent.items():
        notes.setdefault(f"{impl}: {why}", f"{impl}: {why}")
    out: list[dict] = []
    if ours_name not in impls:  # say why there is no row of ours
        out.append(asdict(_blank(setup, case, kind, ours_name, f"skipped: {absent.get(ours_name, '')}")))
        if not impls:
            return out
    try:
        arg_sets = _arg_sets(setup, case)
    except Exception as exc:  # out of device memory, say
        return out + [asdict(_blank(setup, case, kind, ours_name, f"inputs: {type(exc).__name__}: {str(exc)[:200]}"))]
    case_rows = [_time_impl(setup, case, kind, impl, fn, arg_sets) for impl, fn in impls.items()]
    del arg_sets
    _jit_seconds(case_rows, compile_s)
    _add_speedups(case_rows, ours_name)
    return out + [asdict(r) for r in case_rows]


def _finish(doc: dict, setup: _Setup, notes: dict[str, str], compile_s: dict[str, float]) -> None:
    if setup.warm is not None:
        compile_s["nvrtc"] = setup.warm.wait()
        for fam, err in setup.warm.errors.items():
            notes.setdefault(fam, f"NVRTC compile of {fam}.cu failed: {err}")
    doc["notes"] = sorted(notes.values())
    doc["compile_seconds"] = {k: round(v, 2) for k, v in compile_s.items()}


def detect_backend() -> str:
    return "cuda" if gpu_status()[0] else "numpy"


def _case_label(case: Case, kind: str) -> str:
    op, dtype, (rows, cols) = case
    return f"{op} {dtype} {rows}x{cols}" + (" (host overhead)" if kind == "overhead" else "")


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
    cases: list[Case] | None = None,
    budget_s: float | None = None,
) -> dict:
    """Time every case; returns the results document (see report.write_results).

    The cases are `cases`, else every (op, dtype, shape) of ops x dtypes x shapes, else
    the default plan (`cases.default_cases`). On the GPU, host-overhead rows (one tiny case
    per op) come first. No case starts once `budget_s` seconds have passed (default
    BUDGET_S); it gets a row saying so. `progress(msg)` is called before each case; if
    it also has `start(total)` that is called once with the number of cases first.
    """
    t_start = time.perf_counter()
    backend = backend or detect_backend()
    if cases is None:
        cases = chosen_cases(ops, dtypes, shapes, quick, backend)
    if budget_s is None:
        budget_s = BUDGET_S["quick" if quick else "full"]
    doc = _new_doc(backend, budget_s)
    setup = _prepare(doc, backend, quick, reps, with_baselines, skip_impls, bandwidth)
    all_cases = [(c, "timing") for c in cases]
    if backend == "cuda":
        all_cases = [(c, "overhead") for c in overhead_cases(cases)] + all_cases
    compile_s: dict[str, float] = {}
    if setup.warm is not None and with_baselines and "torch.compile" not in skip_impls:
        # while NVRTC compiles our kernels: one dynamic-shape graph per (op, dtype) of the plan
        compile_s["torch.compile"] = warmup.precompile_torch(cases)
    notes: dict[str, str] = {}  # "impl: why" once per distinct reason
    _notify(progress, "start", len(all_cases))
    for case, kind in all_cases:
        if progress:
            progress(_case_label(case, kind))
        if time.perf_counter() - t_start > budget_s:
            note = f"not run: the time budget ({budget_s:.0f} s) was spent"
            doc["rows"].append(asdict(_blank(setup, case, kind, _ours_name(setup), note)))
            continue
        doc["rows"] += _run_case(setup, case, kind, notes, compile_s)
    _finish(doc, setup, notes, compile_s)
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 2)
    return doc
