"""The CLI on a machine without a GPU: it must still do something useful and say so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_softmax import cli
from gpu_softmax._cuda.info import gpu_status

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = not gpu_status()[0]


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpu_softmax", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


ROW_KEYS = {"op", "impl", "dtype", "shape", "ms", "ms_p10", "ms_p90", "gbps", "pct_copy", "pct_read", "backend",
            "matched", "max_rel_err", "speedup", "note", "bytes", "reps", "peak_mem_bytes"}
DOC_KEYS = {"backend", "date", "time_utc", "device", "copy_gbps", "read_gbps", "rows", "notes", "versions", "timing"}


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_bench_quick_on_numpy_writes_files(tmp_path):
    p = run_cli("bench", "--quick", "--op", "softmax,cross_entropy_with_grad", "--dtype", "float32",
                "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "NumPy reference" in p.stdout and "no GPU found" in p.stdout
    assert "gpu-softmax[cuda12x]" in p.stdout  # how to get the GPU backend
    doc = json.loads((tmp_path / "results.json").read_text())
    assert DOC_KEYS <= set(doc)
    assert doc["backend"] == "numpy"
    assert doc["copy_gbps"] > 0 and doc["read_gbps"] > 0
    ops = {(r["op"], tuple(r["shape"])) for r in doc["rows"]}
    assert {"softmax", "cross_entropy_with_grad"} == {o for o, _ in ops}
    assert len(doc["rows"]) == 4  # two ops, one dtype, the two quick CPU shapes
    for r in doc["rows"]:
        assert ROW_KEYS <= set(r)
        assert r["impl"] == "NumPy reference" and r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0
        assert r["ms_p10"] <= r["ms"] <= r["ms_p90"] and r["backend"] == "numpy"
    md = (tmp_path / "results.md").read_text()
    assert "| softmax | NumPy reference | float32 |" in md
    for r in doc["rows"]:  # one markdown row per JSON row
        assert f"| {r['op']} | {r['impl']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} |" in md
    assert "[1/4] softmax float32" in p.stderr  # progress (plain: stderr is not a terminal here)
    assert "wrote " in p.stdout
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot: matplotlib is not installed" in p.stdout
        pytest.skip("matplotlib not installed: PNG not checked")
    for name in ("results.png", "results-softmax-float32.png", "results-cross_entropy_with_grad-float32.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_bench_bfloat16_without_gpu_skips_with_a_note(tmp_path):
    rc = cli.main(["bench", "--quick", "--op", "softmax", "--dtype", "bfloat16,float32", "--shapes", "4x64",
                   "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    bf = [r for r in rows if r["dtype"] == "bfloat16"]
    assert len(bf) == 1 and bf[0]["note"].startswith("skipped:") and bf[0]["ms"] != bf[0]["ms"]
    assert [r["dtype"] for r in rows if r["ms"] == r["ms"]] == ["float32"]


def test_bench_rejects_unknown_dtype_and_skip(tmp_path):
    with pytest.raises(SystemExit, match="unknown --dtype"):
        cli.main(["bench", "--dtype", "bfloat17", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown --skip"):
        cli.main(["bench", "--skip", "pytorch", "--out", str(tmp_path)])


def test_plain_progress_counts(capsys):
    p = cli._PlainProgress()
    p.start(2)
    p("a")
    p("b")
    p.close()
    assert capsys.readouterr().err.splitlines() == ["  [1/2] a", "  [2/2] b"]


def test_bench_rejects_unknown_op(tmp_path):
    with pytest.raises(SystemExit, match="unknown --op"):
        cli.main(["bench", "--op", "softmaxx", "--out", str(tmp_path)])


def test_bench_rejects_bad_shape(tmp_path):
    with pytest.raises(SystemExit, match="ROWSxCOLS"):
        cli.main(["bench", "--shapes", "12by4", "--out", str(tmp_path)])


def test_info_json_names_backend_and_sources():
    p = run_cli("info", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert Path(info["kernel_sources"], "common.cuh").is_file()
    assert info["gpu"] is (not NO_GPU)
    assert set(info["baselines"]) >= {"torch", "cupyx", "liger_kernel", "quack"}
    assert set(info["baseline_versions"]) >= {"torch", "cupyx", "liger_kernel", "quack", "gpu_softmax.torch"}
    assert info["baseline_versions"]["cupyx"] == info["cupy"]


def test_info_text_lists_baselines():
    p = run_cli("info")
    assert p.returncode == 0, p.stderr
    assert "baselines and bench tools:" in p.stdout
    for name in ("torch", "cupyx", "liger_kernel", "quack", "compile_cache", "nvrtc"):
        assert name in p.stdout


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_check_without_gpu_compiles_and_reports_skip():
    p = run_cli("check", "--quick")
    out = p.stdout
    assert "reference identities float32" in out
    assert "CUDA kernels against the reference" in out and "skip" in out
    # With NVRTC installed the kernels are compiled instead; a failure there fails the command.
    assert p.returncode == (1 if " FAIL " in out else 0), out
