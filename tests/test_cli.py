"""The CLI on a machine without a GPU: it must still do something useful and say so."""

from __future__ import annotations

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


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_bench_quick_on_numpy_writes_files(tmp_path):
    p = run_cli("bench", "--quick", "--op", "softmax,cross_entropy_with_grad", "--dtype", "float32",
                "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "NumPy reference" in p.stdout and "no GPU found" in p.stdout
    assert "gpu-softmax[cuda12x]" in p.stdout  # how to get the GPU backend
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["backend"] == "numpy"
    assert doc["copy_gbps"] > 0
    ops = {(r["op"], tuple(r["shape"])) for r in doc["rows"]}
    assert {"softmax", "cross_entropy_with_grad"} == {o for o, _ in ops}
    for r in doc["rows"]:
        assert r["impl"] == "gpu_softmax" and r["ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "| softmax | gpu_softmax | float32 |" in md


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


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_check_without_gpu_compiles_and_reports_skip():
    p = run_cli("check", "--quick")
    out = p.stdout
    assert "reference identities float32" in out
    assert "CUDA kernels against the reference" in out and "skip" in out
    # With NVRTC installed the kernels are compiled instead; a failure there fails the command.
    assert p.returncode == (1 if " FAIL " in out else 0), out
