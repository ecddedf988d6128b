"""The CLI on a machine without a GPU: it must still do something useful and say so."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_softmax import cli
from gpu_softmax._cuda.info import gpu_status

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = not gpu_status()[0]


def subcommand_help(name: str) -> str:
    """`gpu-softmax NAME --help`, whitespace-normalised (argparse wraps lines)."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices[name].format_help().split())


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
    assert "using the NumPy reference" in p.stdout and gpu_status()[1] in p.stdout
    assert "cudaError" not in p.stdout  # the CUDA runtime's "driver version is insufficient" misleads here
    # How to get the CUDA kernels: a command that works from the checkout (or, with CuPy in place, a GPU).
    assert 'pip install ".[cuda12x]"' in p.stdout or "CuPy is installed" in p.stdout
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
    for bad in ("3x0", "0x5", "4x-2"):
        with pytest.raises(SystemExit, match=f"bad --shapes entry '{bad}': rows and columns must be at least 1"):
            cli.main(["bench", "--shapes", f"4x64,{bad}", "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()  # refused before anything ran


def test_no_arguments_prints_help_and_version_is_the_package_version(capsys):
    import gpu_softmax

    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gpu-softmax") and "bench" in out and "check" in out and "info" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"gpu-softmax {gpu_softmax.__version__}"


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_reps_help_says_how_many_calls_run_without_a_gpu(tmp_path):
    assert cli.main(["bench", "--op", "softmax", "--dtype", "float32", "--shapes", "4x64", "--no-baselines",
                     "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert f"{row['reps']} without a GPU" in subcommand_help("bench")


def test_help_texts_say_what_the_options_do():
    from gpu_softmax.bench import cases

    check = subcommand_help("check")
    assert "--quick" in check and "fewer cases" in check
    shapes = subcommand_help("bench")
    assert "issue" not in shapes  # no reference to a document the user has not seen
    for op, backend in (("softmax", "cuda"), ("cross_entropy_with_grad", "cuda"), ("softmax", "numpy")):
        for r, c in cases.default_shapes(op, backend, quick=False):
            assert f"{r}x{c}" in shapes, (op, backend, r, c)
    for name in ("info", "compile-check"):
        for opt in ("--json",) if name == "info" else ("--arch",):
            text = subcommand_help(name)
            assert re.search(rf"{opt}( \S+)? \w", text), text  # the option has a help text


def info_output(capsys, *args) -> str:
    # In-process: `info` only reads the machine's state, and the bridge check imports torch once per worker.
    assert cli.main(["info", *args]) == 0
    return capsys.readouterr().out


def test_info_json_names_backend_and_sources(capsys):
    info = json.loads(info_output(capsys, "--json"))
    assert Path(info["kernel_sources"], "common.cuh").is_file()
    assert info["gpu"] is (not NO_GPU)
    assert set(info["baselines"]) >= {"torch", "cupyx", "liger_kernel", "quack"}
    assert set(info["baseline_versions"]) >= {"torch", "cupyx", "liger_kernel", "quack", "gpu_softmax.torch"}
    assert info["baseline_versions"]["cupyx"] == info["cupy"]
    if importlib.util.find_spec("torch") is not None:
        assert info["torch_bridge"].startswith("importable (torch ")
        assert info["baseline_versions"]["gpu_softmax.torch"] == info["baseline_versions"]["torch"]


def test_info_says_when_the_torch_bridge_cannot_import(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as where torch is not installed
    info = json.loads(info_output(capsys, "--json"))
    assert info["torch_bridge"].startswith("not importable: torch is not installed")
    assert 'pip install ".[torch]"' in info["torch_bridge"]
    assert info["baseline_versions"]["gpu_softmax.torch"] is None
    out = info_output(capsys)
    assert re.search(r"torch_bridge\s+not importable", out), out
    assert "gpu_softmax.torch" not in out.split("baselines and bench tools:")[1]


def test_no_gpu_reason_says_so_instead_of_the_driver_error(monkeypatch):
    from gpu_softmax._cuda import info

    class RuntimeErr(Exception):
        def __init__(self, status, text):
            super().__init__(text)
            self.status = status

    insufficient = RuntimeErr(35, "cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    monkeypatch.setattr(info, "_nvidia_driver_present", lambda: False)
    assert info._device_count_failure(insufficient) == "no NVIDIA GPU found"
    monkeypatch.setattr(info, "_nvidia_driver_present", lambda: True)
    assert info._device_count_failure(RuntimeErr(100, "cudaErrorNoDevice")) == "no NVIDIA GPU found"
    old_driver = info._device_count_failure(insufficient)  # a GPU with a driver too old for CuPy's runtime
    assert "cudaErrorInsufficientDriver" in old_driver and "update the driver" in old_driver
    # The install hint names a command that works from the checkout (the package is on no index).
    monkeypatch.setattr(info, "_present", lambda mod: False)
    assert 'pip install ".[cuda12x]"' in info.install_hint() and "gpu-softmax[" not in info.install_hint()


def test_info_text_lists_baselines(capsys):
    # (tests/test_packaging.py runs the installed `gpu-softmax info` in a process of its own)
    out = info_output(capsys)
    assert "baselines and bench tools:" in out
    for name in ("torch", "cupyx", "liger_kernel", "quack", "compile_cache", "nvrtc", "torch_bridge"):
        assert name in out


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_check_without_gpu_compiles_and_reports_skip(capsys, monkeypatch):
    # The real NVRTC compile of every family and architecture is tests/test_compile.py's (the same
    # compile_check.check_family); a stand-in report here keeps this a test of the command: its rows,
    # its summary, and its exit status on a clean and on a spilling compile.
    from gpu_softmax._cuda import compile_check as cc

    def report(family, arch, spills=0):
        entry = cc.EntryReport("gs_kernel", arch, registers=32, stack_bytes=0, spill_store_bytes=spills,
                               spill_load_bytes=0)
        return cc.FamilyReport(family=family, arch=arch, seconds=0.0, log="", entries={entry.name: entry})

    monkeypatch.setattr(cc, "check_family", report)
    assert cli.main(["check", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "using the NumPy reference" in out
    assert "reference identities float32" in out
    assert "CUDA kernels against the reference" in out and "skip" in out
    assert " FAIL " not in out and "0 failed" in out
    monkeypatch.setattr(cc, "check_family", lambda family, arch: report(family, arch, spills=8))
    assert cli.main(["check", "--quick"]) == 1
    assert " FAIL " in capsys.readouterr().out
