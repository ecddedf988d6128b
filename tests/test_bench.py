"""The benchmark runner and the results summary, on the CPU (NumPy backend).

What needs a GPU (CUDA-event timing, the baselines themselves, peak memory) is
exercised by benchmarks/device_check.py; here: byte accounting, the plan, that a
missing or failing baseline never fails a run, the files written, the goals, and
benchmarks/summarize.py.
"""

from __future__ import annotations

import copy
import time
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dataclasses import asdict

from gpu_softmax.bench import (baselines, cases, check, estimate, goals, identity, inputs, plot, report, runner,
                                timing, vocab_parallel, warmup)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import summarize  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


def test_op_bytes_counts_inputs_once_and_outputs_once():
    r, c = 4, 1000
    n4 = r * c * 4
    assert cases.op_bytes("softmax", r, c, 4) == 2 * n4
    assert cases.op_bytes("log_softmax", r, c, 4) == 2 * n4
    assert cases.op_bytes("logsumexp", r, c, 4) == n4 + 4 * r
    assert cases.op_bytes("logsumexp", r, c, 8) == 2 * n4 + 8 * r
    assert cases.op_bytes("softmax_backward", r, c, 2) == 3 * r * c * 2
    assert cases.op_bytes("cross_entropy", r, c, 2) == r * c * 2 + 8 * r
    assert cases.op_bytes("cross_entropy_with_grad", r, c, 4) == 2 * n4 + 8 * r
    assert cases.itemsize("bfloat16") == 2 and cases.itemsize("float64") == 8


def test_plan_uses_goal_shapes_on_gpu_and_small_ones_on_cpu():
    gpu = cases.plan(["softmax", "cross_entropy_with_grad"], ["float32"], None, quick=False, backend="cuda")
    assert (("softmax", "float32", (1, 1048576)) in gpu) and (("cross_entropy_with_grad", "float32", (4096, 128256)) in gpu)
    cpu = cases.plan(["softmax"], ["float32", "float16"], None, quick=True, backend="numpy")
    assert cpu == [("softmax", d, s) for d in ("float32", "float16") for s in cases.QUICK_CPU_SHAPES]
    assert cases.plan(["logsumexp"], ["float64"], [(3, 5)], quick=False, backend="cuda") == [("logsumexp", "float64", (3, 5))]


def test_rotating_buffers_cover_twice_l2():
    l2 = 50 << 20
    for set_bytes in (1 << 20, 4 << 20, 32 << 20, 1 << 30):
        n = inputs.n_arg_sets(l2, set_bytes)
        assert n >= 2
        assert n * set_bytes >= 2 * l2 or n == 64
    assert inputs.n_arg_sets(0, 100) == 1


def _doc(**kw):
    kw.setdefault("progress", None)
    return runner.run(["softmax", "cross_entropy_with_grad"], ["float32"], [(8, 300)], backend="numpy",
                     bandwidth={"copy_gbps": 10.0, "read_gbps": 20.0}, **kw)


def test_run_numpy_rows():
    doc = _doc()
    assert doc["backend"] == "numpy" and doc["copy_gbps"] == 10.0 and doc["read_gbps"] == 20.0
    assert {"date", "time_utc", "device", "rows", "notes", "versions", "timing"} <= set(doc)
    assert len(doc["rows"]) == 2
    for r in doc["rows"]:
        assert r["impl"] == cases.REFERENCE_IMPL and r["backend"] == "numpy"
        assert r["ms"] > 0 and r["ms_p10"] <= r["ms"] <= r["ms_p90"]
        assert r["bytes"] == cases.op_bytes(r["op"], 8, 300, 4)
        assert math.isclose(r["gbps"], r["bytes"] / r["ms"] / 1e6)
        assert math.isclose(r["pct_copy"], 10 * r["gbps"]) and math.isclose(r["pct_read"], 5 * r["gbps"])
        assert r["peak_mem_bytes"] is None  # measured on the GPU only


def test_progress_gets_total_then_each_case():
    seen = []

    class P:
        def start(self, total):
            seen.append(("start", total))

        def __call__(self, msg):
            seen.append(msg)

    _doc(progress=P())
    assert seen == [("start", 2), "softmax float32 8x300", "cross_entropy_with_grad float32 8x300"]


def test_failing_or_missing_baseline_never_fails_the_run(monkeypatch):
    real = baselines.implementations

    def fake(op, dtype, backend, with_baselines=True, skip_impls=()):
        impls, notes = real(op, dtype, backend, with_baselines, skip_impls)

        def broken(*args):
            raise RuntimeError("baseline exploded")

        def slower(*args):
            out = impls[cases.REFERENCE_IMPL](*args)
            sum(range(20000))
            return out

        impls.update({"torch": broken, "cupyx": slower})
        notes["quack"] = "QuACK not installed (ModuleNotFoundError)"
        return impls, notes

    monkeypatch.setattr(baselines, "implementations", fake)
    doc = _doc()
    rows = {(r["op"], r["impl"]): r for r in doc["rows"]}
    assert "RuntimeError: baseline exploded" in rows[("softmax", "torch")]["note"]
    assert math.isnan(rows[("softmax", "torch")]["ms"])
    ours = rows[("softmax", cases.REFERENCE_IMPL)]
    assert set(ours["speedup"]) == {"cupyx"} and ours["speedup"]["cupyx"] > 0
    assert "quack: QuACK not installed (ModuleNotFoundError)" in doc["notes"]
    md = report.markdown_table(doc)
    assert "baseline exploded" in md and "| softmax | cupyx | float32 | 8x300 |" in md


def test_implementation_factories_never_raise(monkeypatch):
    # A Liger-Kernel that imports but whose functions need torch; a QuACK without its ops.
    liger = types.ModuleType("liger_kernel")
    transformers = types.ModuleType("liger_kernel.transformers")
    functional = types.ModuleType("liger_kernel.transformers.functional")
    functional.liger_cross_entropy = lambda x, t: 0.0
    monkeypatch.setitem(sys.modules, "liger_kernel", liger)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", functional)
    monkeypatch.setitem(sys.modules, "quack", types.ModuleType("quack"))
    for op in cases.OPS:
        for dtype in cases.DTYPES:
            impls, notes = baselines.implementations(op, dtype, "cuda")
            assert set(impls) | set(notes) <= set(cases.IMPLS)
            assert all(isinstance(v, str) and v for v in notes.values())
            if dtype not in cases.TORCH_ONLY_DTYPES:
                assert "gpu_softmax" in impls
            else:
                assert "gpu_softmax" in impls or "gpu_softmax" in notes
            assert "quack" in notes or "quack" in impls
    if importlib.util.find_spec("torch") is None:
        impls, notes = baselines.implementations("cross_entropy", "float32", "cuda")
        assert "torch" in notes and "liger" in notes  # liger needs torch tensors
    impls, notes = baselines.implementations("softmax", "float32", "cuda", skip_impls=("torch", "cupyx"))
    assert "torch" not in impls and "torch" not in notes and "cupyx" not in impls


def test_bfloat16_without_gpu_is_a_skipped_row():
    doc = runner.run(["softmax"], ["bfloat16"], [(4, 64)], backend="numpy", bandwidth={"copy_gbps": 1, "read_gbps": 1})
    (row,) = doc["rows"]
    assert row["dtype"] == "bfloat16" and row["note"].startswith("skipped:") and math.isnan(row["ms"])
    assert any("bfloat16" in n for n in doc["notes"])


def test_peak_memory_without_gpu_is_none():
    assert timing.peak_memory_bytes(lambda: None, ()) is None


def test_package_versions_lists_every_baseline():
    v = identity.package_versions()
    assert {"torch", "triton", "cupyx", "liger_kernel", "quack", "gpu_softmax.torch", "matplotlib"} <= set(v)
    import importlib.util

    # Present packages report a version, absent ones nothing.
    assert bool(v["cupyx"]) == (importlib.util.find_spec("cupy") is not None)


def _gpu_doc(device="NVIDIA H100 80GB HBM3", date="2026-11-26", ms=1.0, torch_ms=3.0):
    """A synthetic GPU results document: ours and torch at some goal shapes."""
    copy_gbps, read_gbps = 3000.0, 3200.0
    rows = []

    def row(op, impl, dtype, shape, ms_, **kw):
        nbytes = cases.op_bytes(op, *shape, cases.itemsize(dtype))
        gbps = nbytes / ms_ / 1e6
        r = cases.Row(op, impl, dtype, list(shape), ms_, ms_ * 0.99, ms_ * 1.01, gbps, 100 * gbps / copy_gbps,
                      "cuda", pct_read=100 * gbps / read_gbps, bytes=nbytes, **kw)
        return asdict(r)

    shape = (4096, 128256)
    ours_ms = 2 * 4096 * 128256 * 4 / (0.9 * copy_gbps * 1e6) * ms  # 90% of copy when ms == 1
    rows.append(row("cross_entropy_with_grad", "gpu_softmax", "float32", shape, ours_ms, matched=True,
                    speedup={"torch": torch_ms}, peak_mem_bytes=2 << 30))
    rows.append(row("cross_entropy_with_grad", "torch", "float32", shape, torch_ms * ours_ms, peak_mem_bytes=6 << 30))
    slow = 2 * 4096 * 32768 * 2 / (0.5 * copy_gbps * 1e6)  # 50% of copy
    rows.append(row("softmax", "gpu_softmax", "float16", (4096, 32768), slow, matched=True))
    rows.append(row("softmax", "gpu_softmax", "float32", (64, 1000), 0.01, matched=True))  # not a goal shape
    failed = asdict(cases.Row("softmax", "gpu_softmax", "float32", [8, 262144], math.nan, math.nan, math.nan,
                                    math.nan, None, "cuda", note="RuntimeError: boom"))
    rows.append(failed)
    return {"backend": "cuda", "device": device, "date": date, "time_utc": f"{date}T01:00:00Z", "commit": "abc123def456",
            "copy_gbps": copy_gbps, "read_gbps": read_gbps, "rows": rows,
            "tests": {"passed": 300, "failed": 0}, "selfcheck": {"passed": 90, "failed": 0}}


def test_evaluate_goals():
    by_case = {(g["op"], g["dtype"], tuple(g["shape"]), g["metric"]): g for g in goals.evaluate_goals(_gpu_doc())}
    ce = by_case[("cross_entropy_with_grad", "float32", (4096, 128256), "pct_copy")]
    assert ce["met"] is True and ce["target"] == 85.0 and abs(ce["value"] - 90.0) < 0.01
    assert by_case[("cross_entropy_with_grad", "float32", (4096, 128256), "speedup:torch")]["met"] is True
    sm = by_case[("softmax", "float16", (4096, 32768), "pct_copy")]
    assert sm["met"] is False and abs(sm["value"] - 50.0) < 0.01
    assert by_case[("softmax", "float32", (8, 262144), "pct_copy")]["met"] is None  # no number: n/a
    assert not any(k[2] == (64, 1000) for k in by_case)
    slow = {(g["op"], g["metric"]): g for g in goals.evaluate_goals(_gpu_doc(torch_ms=1.5))}
    assert slow[("cross_entropy_with_grad", "speedup:torch")]["met"] is False


def test_markdown_of_a_gpu_run_has_goals_and_memory():
    md = report.markdown_table(_gpu_doc())
    assert "## Goals" in md and "**no**" in md and "| n/a |" in md
    assert "2048 MiB" in md and "6144 MiB" in md  # peak memory of ours and of torch
    assert "| cross_entropy_with_grad | gpu_softmax | float32 | 4096x128256 |" in md


def test_write_results_files(tmp_path):
    doc = _gpu_doc()
    paths = report.write_results(doc, tmp_path, "gpu-x")
    names = {p.name for p in paths}
    assert {"gpu-x.json", "gpu-x.md"} <= names
    assert json.loads((tmp_path / "gpu-x.json").read_text())["rows"][0]["peak_mem_bytes"] == 2 << 30
    if not HAVE_MPL:
        pytest.skip("matplotlib not installed: no plots")
    assert {"gpu-x.png", "gpu-x-cross_entropy_with_grad-float32.png", "gpu-x-softmax-float16.png",
            "gpu-x-softmax-float32.png"} <= names
    for n in names:
        if n.endswith(".png"):
            assert (tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nan_rows_survive_json(tmp_path):
    report.write_results(_gpu_doc(), tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert any(r["note"] == "RuntimeError: boom" and r["ms"] != r["ms"] for r in rows)


# ----------------------------------------------------------------------------------
# benchmarks/summarize.py


README_STUB = f"# B\n\ntext\n\n{summarize.BEGIN}\nold\n{summarize.END}\n\nafter\n"


def test_summarize_without_runs(tmp_path):
    (tmp_path / "results").mkdir()
    assert summarize.section(tmp_path / "results") == summarize.NO_RUN + "\n"
    # A CPU run of `gpu-softmax bench` is not a GPU run.
    cpu = runner.run(["softmax"], ["float32"], [(4, 50)], backend="numpy", bandwidth={"copy_gbps": 1, "read_gbps": 1})
    (tmp_path / "results" / "cpu.json").write_text(json.dumps(cpu, default=float))
    (tmp_path / "results" / "junk.json").write_text("{not json")
    assert summarize.section(tmp_path / "results") == summarize.NO_RUN + "\n"
    readme = tmp_path / "README.md"
    readme.write_text(README_STUB)
    assert summarize.main(["--results", str(tmp_path / "results"), "--readme", str(readme), "--check"]) == 1
    assert summarize.main(["--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "No GPU run committed yet." in text and "old" not in text and text.endswith("after\n")
    assert summarize.main(["--results", str(tmp_path / "results"), "--readme", str(readme), "--check"]) == 0


def test_summarize_latest_run_per_gpu(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    old = _gpu_doc(date="2026-10-01", ms=2.0)  # 45% of copy
    new = _gpu_doc(date="2026-11-26")
    other = _gpu_doc(device="NVIDIA A100-SXM4-80GB", date="2026-09-01")
    for name, d in (("h100-old", old), ("h100-new", new), ("a100", other)):
        (res / f"{name}.json").write_text(json.dumps(d, default=float))
    body = summarize.section(res)
    lines = body.splitlines()
    table = [ln for ln in lines if ln.startswith("| NVIDIA")]
    assert len(table) == 2  # one line per GPU
    assert any("2026-11-26" in ln and "h100-new" in ln for ln in table)
    assert not any("2026-10-01" in ln for ln in lines)
    assert "#### NVIDIA H100 80GB HBM3, 2026-11-26" in body
    assert "| fused CE loss+grad >= 85% of copy bandwidth | cross_entropy_with_grad | float32 | 4096x128256 | 90.0% | 85% | yes |" in body
    assert "| 50.0% | 90% | **no** |" in body
    assert "300 passed, 0 failed" in body
    assert "Commit abc123def4, cuda_src tree -" in body and "| kernel ms | call ms |" in body  # one table per GPU


def test_committed_benchmarks_readme_is_current():
    assert summarize.main(["--check"]) == 0, "run python benchmarks/summarize.py"
    text = (ROOT / "benchmarks" / "README.md").read_text()
    for needle in ("device_check.sh", "gpu-softmax bench", "op_bytes", "summarize.py"):
        assert needle in text
    if not list((ROOT / "benchmarks" / "results").glob("*.json")):
        assert "No GPU run committed yet." in text


def test_results_docs_are_json_safe():
    doc = copy.deepcopy(_gpu_doc())
    doc["rows"][0]["peak_mem_bytes"] = np.int64(5)
    json.loads(json.dumps(doc, default=report.json_default))


@pytest.mark.gpu
def test_vocab_parallel_rows_time_one_rank_against_one_gpu(cp):
    rows = vocab_parallel.vocab_parallel_rows([(64, 1000)], ranks=(2, 4), reps=3)
    assert [r["impl"] for r in rows] == ["gpu_softmax (1 GPU, full V)", "gpu_softmax (per rank, P=2)",
                                          "gpu_softmax (per rank, P=4)"]
    assert [r["shape"] for r in rows] == [[64, 1000], [64, 500], [64, 250]]
    for r in rows:
        assert r["op"] == "vocab_parallel_cross_entropy" and r["ms"] > 0 and r["gbps"] > 0
    assert "1 GPU, full V" in rows[1]["speedup"]


# ----------------------------------------------------------------------------------
# no GPU: truthful labels, no empty columns, why there is no plot


def test_cpu_rows_say_numpy_reference_and_empty_columns_are_dropped():
    doc = _doc()
    md = report.markdown_table(doc)
    header = next(ln for ln in md.splitlines() if ln.startswith("| op |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["op", "impl", "dtype", "shape", "median ms", "p10-p90 ms", "GB/s", "% copy"]
    assert "gpu_softmax |" not in md and f"| {cases.REFERENCE_IMPL} |" in md and "not GPU numbers" in md
    for line in md.splitlines():
        if line.startswith("| softmax"):
            assert all(cell.strip() for cell in line.strip("|").split("|")), line


def test_gpu_tables_keep_call_and_kernel_time():
    header, cells = report.table(_gpu_doc())
    assert {"kernel ms", "GB/s", "matched ref", "speed-up", "peak mem", "note"} <= set(header)
    assert "host overhead us" not in header  # no row fills it


def test_why_no_plot(monkeypatch):
    skipped = runner.run(["softmax"], ["bfloat16"], [(4, 64)], backend="numpy", bandwidth={"copy_gbps": 1, "read_gbps": 1})
    if HAVE_MPL:
        assert plot.no_plot_reason(skipped).startswith("no row has a timing")
        assert plot.no_plot_reason(_doc()) is None
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot.no_plot_reason(_doc()).startswith("matplotlib is not installed")


def test_cli_without_gpu_says_why_no_plot(tmp_path, capsys):
    from gpu_softmax import cli
    from gpu_softmax._cuda.info import gpu_status

    if gpu_status()[0]:
        pytest.skip("checks the no-GPU behaviour")
    assert cli.main(["bench", "--dtype", "bfloat16", "--shapes", "4x64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = "no row has a timing" if HAVE_MPL else "matplotlib is not installed"
    assert f"no plot: {expected}" in out and "NumPy reference" in out


# ----------------------------------------------------------------------------------
# the run's identity, its time budget, its estimate


def test_doc_records_commit_and_cuda_src_tree():
    import subprocess

    doc = _doc()
    try:
        tree = subprocess.run(["git", "rev-parse", "HEAD:cuda_src"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        pytest.skip("not a git checkout")
    assert doc["cuda_src_tree"] in (tree, tree + "-dirty") and len(doc["commit"]) == 40
    assert doc["elapsed_s"] > 0 and "compile_seconds" in doc


def test_time_budget_stops_new_cases():
    doc = _doc(budget_s=0.0)
    assert len(doc["rows"]) == 2
    assert all(r["note"].startswith("not run: the time budget") and r["ms"] != r["ms"] for r in doc["rows"])


def test_estimates_fit_the_goals():
    quick = estimate.estimate(cases.QUICK_PLAN, quick=True)
    full = estimate.estimate(cases.FULL_PLAN, quick=False)
    assert quick["total_s"] <= 60, quick["seconds"]
    assert full["total_s"] <= 300, full["seconds"]
    # the plan's own budgets stop it within its goal even where the estimate is wrong
    assert cases.BUDGET_S["quick"] <= 55 and cases.BUDGET_S["full"] <= 285
    # counted, not assumed: more dtypes mean more torch.compile graphs, longer rows more Liger kernels
    more = estimate.estimate(cases.QUICK_PLAN + [("softmax", "float16", (4096, 32768))], quick=True)
    assert more["torch_compile_graphs"] == quick["torch_compile_graphs"] + 1 and more["total_s"] > quick["total_s"]
    assert quick["torch_compile_graphs"] == 2  # one per (op, dtype): shapes share a dynamic graph
    assert estimate.estimate(cases.QUICK_PLAN, baselines=())["total_s"] < quick["total_s"]


def test_dry_run_prints_the_plan_and_estimate(capsys):
    from gpu_softmax import cli

    assert cli.main(["bench", "--quick", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "softmax float32 4096x32768" in out and "cross_entropy_with_grad float32 4096x128256" in out
    assert "total" in out and "torch.compile" in out


# ----------------------------------------------------------------------------------
# accuracy on sampled rows


def test_sample_rows():
    rng = np.random.default_rng(0)
    assert check.sample_rows(5, rng) == [0, 1, 2, 3, 4]
    s = check.sample_rows(4096, rng)
    assert s[0] == 0 and s[-1] == 4095 and len(s) == cases.SAMPLE_ROWS == len(set(s)) and s == sorted(s)


@pytest.mark.parametrize("op", ["softmax", "logsumexp", "log_softmax_backward", "cross_entropy",
                                "cross_entropy_with_grad"])
def test_check_sampled_passes_ours_and_catches_a_bad_row(op):
    rng = np.random.default_rng(1)
    args = inputs.make_inputs(np, op, 300, 257, "float32", rng)
    fn = baselines.ours_for_check(op, "float32")
    ok, err, why = check.check_sampled(op, "float32", fn, args, rng)
    assert ok and err < 1e-5 and why == ""

    def broken(*a):  # right everywhere but in the last row (always sampled)
        out = fn(*a)
        target = out[-1] if isinstance(out, tuple) else out
        target[-1] = target[-1] * 1.01 + 0.01
        return out

    ok, err, why = check.check_sampled(op, "float32", broken, args, rng)
    assert not ok and "off" in why


# ----------------------------------------------------------------------------------
# the GPU code path, with a stand-in for CuPy whose arrays are NumPy arrays (so ours is
# the reference): every branch of run() for backend "cuda" executes on the CPU.


class _Event:
    def record(self, stream=None):
        self.t = time.perf_counter()

    done = False  # the spin shield "still running": kernel time covered

    def synchronize(self):
        pass


def _fake_cupy():
    cp = types.ModuleType("cupy")
    cuda = types.SimpleNamespace(
        Device=lambda *a: types.SimpleNamespace(id=0),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: {"l2CacheSize": 1 << 16, "name": b"Fake GPU"}),
        get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: None),
        Event=_Event,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
    )
    cp.cuda = cuda
    cp.random = types.SimpleNamespace(standard_normal=lambda shape, dtype: np.random.standard_normal(shape).astype(dtype))
    cp.float32 = np.float32
    cp.asarray = np.asarray
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None, total_bytes=lambda: 0)
    return cp


def test_gpu_code_path_runs_with_a_stand_in(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    monkeypatch.setattr(timing, "_timer_kernel", lambda name: (lambda grid, block, args: None))
    monkeypatch.setattr(identity, "device_info", lambda: {"devices": []})

    class Warm:
        errors = {}

        def wait(self):
            return 1.5

    monkeypatch.setattr(warmup, "KernelWarmup", Warm)
    planned = [("softmax", "float32", (16, 300)), ("cross_entropy_with_grad", "float32", (16, 300))]
    more = [("log_softmax_backward", "float16", (16, 300)), ("cross_entropy", "float32", (16, 300))]
    doc = runner.run(cases=planned + more, backend="cuda", bandwidth={"copy_gbps": 10.0, "read_gbps": 20.0}, reps=4,
                     skip_impls=("cupyx",))
    extra = [r for r in doc["rows"] if r["impl"] == "gpu_softmax" and r["kind"] == "timing" and r["op"] in
             ("log_softmax_backward", "cross_entropy")]
    assert [r["matched"] for r in extra] == [True, True], extra
    doc["rows"] = [r for r in doc["rows"] if r["op"] not in ("log_softmax_backward", "cross_entropy")]
    assert doc["device"] == "Fake GPU" and doc["compile_seconds"]["nvrtc"] == 1.5 and doc["empty_launch_ms"] >= 0
    kinds = [(r["op"], r["kind"]) for r in doc["rows"] if r["impl"] == "gpu_softmax"]
    assert kinds == [("softmax", "overhead"), ("cross_entropy_with_grad", "overhead"),
                     ("softmax", "timing"), ("cross_entropy_with_grad", "timing")]
    for r in doc["rows"]:
        if r["impl"] in ("gpu_softmax", "gpu_softmax.torch") and r["ms"] == r["ms"]:
            assert r["call_ms"] > 0 and r["ms"] > 0 and r["kernel_covered"] is True and r["reps"] == 4
            assert r["first_call_ms"] is not None and r["backend"] == "cuda"
            assert (r["host_overhead_us"] is not None) == (r["kind"] == "overhead")
    ours = {(r["op"], r["kind"]): r for r in doc["rows"] if r["impl"] == "gpu_softmax"}
    assert ours[("softmax", "timing")]["matched"] is True and ours[("softmax", "overhead")]["matched"] is None
    ce = ours[("cross_entropy_with_grad", "timing")]
    assert ce["matched"] is True and ce["peak_mem_bytes"] is not None
    if importlib.util.find_spec("torch") is not None:  # the training path through the bridge
        bridge = [r for r in doc["rows"] if r["impl"] == "gpu_softmax.torch" and r["kind"] == "timing"]
        assert bridge and bridge[0]["ms"] == bridge[0]["ms"], bridge
        assert "gpu_softmax.torch" in ce["speedup"]
    md = report.markdown_table(doc)
    assert "| kernel ms |" in md and "| call ms |" in md and "host overhead us" in md
    assert not goals.evaluate_goals(doc)  # no goal shape here; overhead rows never count


@pytest.mark.parametrize("op", ["softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad"])
def test_check_sampled_on_bfloat16_torch_rows(op):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (torch.randn(40, 300) * 3).bfloat16()
    args = (x,) if not op.startswith("cross_entropy") else (x, torch.randint(0, 300, (40,)))
    fn = baselines.ours_for_check(op, "bfloat16")  # the torch bridge: statistics come back in bfloat16
    ok, err, why = check.check_sampled(op, "bfloat16", fn, args, rng)
    assert ok, why


def test_one_adapter_shape_derives_the_training_step_from_the_forward_loss():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    calls = []

    def forward(op):
        calls.append(op)
        return (lambda x, t: F.cross_entropy(x, t, reduction="none")) if op == "cross_entropy" else None

    fake = baselines.Adapter("fake", "FakeLib", "math", forward)
    step, why = baselines.resolve(fake, "cross_entropy_with_grad")
    assert why == "" and calls == ["cross_entropy"]  # asked for the forward loss, not a second adapter
    x = torch.randn(5, 7, dtype=torch.float64)
    t = torch.randint(0, 7, (5,))
    loss, grad = step(x, t)
    expected = torch.softmax(x, -1) - F.one_hot(t, 7).double()  # d(sum of per-row losses)/dx
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0) and x.grad is None  # a fresh leaf, not x
    assert baselines.resolve(fake, "softmax") == (None, "FakeLib has no softmax")
    missing = baselines.Adapter("gone", "GoneLib", "no_such_module_xyz", forward)
    assert baselines.resolve(missing, "softmax") == (None, "GoneLib not installed or not importable (ModuleNotFoundError)")
    every = {a.name for a in baselines.BASELINES}
    assert every == set(cases.BASELINE_IMPLS)


# ----------------------------------------------------------------------------------
# readable plots and tables of a CPU run (issue 25 item 4)


def _cpu_plot_doc():
    """A CPU run as the main command makes it: the memcpy ceiling far above the rows, two
    shapes that differ in rows and columns, a slow float16 row."""
    def row(dtype, shape, gbps):
        nbytes = cases.op_bytes("softmax", *shape, cases.itemsize(dtype))
        return asdict(cases.Row("softmax", cases.REFERENCE_IMPL, dtype, list(shape), nbytes / gbps / 1e6, 0, 0,
                                gbps, 100 * gbps / 14.6, "numpy", bytes=nbytes))

    return {"backend": "numpy", "device": "CPU", "date": "2026-12-04", "copy_gbps": 14.6, "read_gbps": 20.0,
            "rows": [row("float32", (64, 1000), 0.41), row("float32", (4, 32000), 0.12),
                     row("float16", (64, 1000), 0.04), row("float16", (4, 32000), 0.013)]}


def test_cpu_plot_axis_fits_the_data_and_points_are_not_a_trend():
    if not HAVE_MPL:
        pytest.skip("matplotlib not installed: no plots")
    doc = _cpu_plot_doc()
    rows = [r for r in doc["rows"] if r["dtype"] == "float16"]
    fig = plot.case_figure(doc, "softmax", "float16", rows)
    (ax,) = fig.axes
    lo, hi = ax.get_ylim()
    # scaled to the data: the fastest row fills most of the height, the ceiling is said in words
    assert lo == 0 and 0.04 < hi <= 0.06, (lo, hi)
    assert [t.get_text() for t in ax.texts if "above this axis" in t.get_text()] == \
        ["above this axis: copy bandwidth 14.6 GB/s"]
    assert not [ln for ln in ax.get_lines() if "ceiling" in ln.get_label()]
    (ours,) = [ln for ln in ax.get_lines() if ln.get_label() == cases.REFERENCE_IMPL]
    assert ours.get_linestyle() == "None"  # 64x1000 and 4x32000 differ in both dimensions: points
    texts = [t for t in ax.texts] + list(ax.get_legend().get_texts()) + ax.get_yticklabels() + ax.get_xticklabels()
    assert texts and min(t.get_fontsize() for t in texts) >= 9
    import matplotlib.pyplot as plt

    plt.close(fig)
    # a GPU run near its ceiling keeps the linear axis from zero, and one row count is a trend
    gpu = {"backend": "cuda", "device": "GPU", "date": "x", "copy_gbps": 3000.0,
           "rows": [dict(r, impl="gpu_softmax", shape=[8, c], gbps=g, backend="cuda")
                    for r, c, g in zip(doc["rows"], (1024, 65536), (2100.0, 2700.0))]}
    fig = plot.case_figure(gpu, "softmax", "float32", gpu["rows"])
    (ax,) = fig.axes
    assert ax.get_ylim()[0] == 0 and 3000 <= ax.get_ylim()[1] <= 3800
    assert [ln for ln in ax.get_lines() if "ceiling" in ln.get_label()]  # near the data: drawn
    assert [ln for ln in ax.get_lines() if ln.get_label() == "gpu_softmax"][0].get_linestyle() == "-"
    plt.close(fig)


def test_slow_rows_print_enough_digits():
    header, cells = report.table(_cpu_plot_doc())
    gbps = [c[header.index("GB/s")] for c in cells]
    assert gbps == ["0.410", "0.120", "0.0400", "0.0130"]
    assert "0.0" not in gbps and all(c[header.index("% copy")] not in ("0.0", "") for c in cells)


# ----------------------------------------------------------------------------------
# what the results say about themselves (issue 25 item 9)


def test_results_record_the_version_and_where_the_commit_came_from(monkeypatch, tmp_path):
    import gpu_softmax

    monkeypatch.setenv(identity.COMMIT_ENV, "0123abcd")  # a container build argument, no .git
    ident = identity.source_identity()
    assert ident["commit"] == "0123abcd" and ident["commit_source"] == "GPU_SOFTMAX_COMMIT"
    assert ident["package_version"] == gpu_softmax.__version__
    monkeypatch.delenv(identity.COMMIT_ENV)
    monkeypatch.setattr(identity, "_ROOT", tmp_path)  # an installed wheel: no checkout around it
    ident = identity.source_identity()
    assert ident["commit"] is None and ident["commit_source"] is None and ident["cuda_src_tree"] is None
    assert ident["package_version"] == gpu_softmax.__version__
    md = report.markdown_table(dict(_doc(), **ident))
    assert f"gpu-softmax {gpu_softmax.__version__}, commit unknown" in md


def test_bridge_version_follows_torch(monkeypatch):
    real_dist, real_importable = identity._dist_version, identity._importable
    monkeypatch.setattr(identity, "_dist_version", lambda dists: None if dists == ["torch"] else real_dist(dists))
    monkeypatch.setattr(identity, "_importable", lambda mod: False if mod == "torch" else real_importable(mod))
    v = identity.package_versions()
    assert v["torch"] is None and v["gpu_softmax.torch"] is None  # the file ships, but cannot work without torch
    monkeypatch.setattr(identity, "_dist_version", lambda dists: "9.9" if dists == ["torch"] else None)
    assert identity.package_versions()["gpu_softmax.torch"] == "9.9"


def test_bfloat16_note_without_gpu_says_what_is_needed():
    doc = runner.run(["softmax"], ["bfloat16"], [(4, 64)], backend="numpy", bandwidth={"copy_gbps": 1, "read_gbps": 1})
    (note,) = [n for n in doc["notes"] if "bfloat16" in n]
    assert "needs PyTorch and a GPU" not in note
    assert "needs an NVIDIA GPU" in note and "NumPy has no bfloat16" in note and "CPU tensors" in note


def test_cli_elapsed_is_the_commands_wall_time(tmp_path):
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "gpu_softmax", "bench", "--op", "softmax", "--dtype", "float32",
                        "--shapes", "4x64", "--no-baselines", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("elapsed "))
    said = float(line.split()[1])
    loop = json.loads((tmp_path / "results.json").read_text())["elapsed_s"]
    assert said > loop and 0.6 * wall <= said <= wall + 0.05, (line, wall)
