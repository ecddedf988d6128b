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
    assert 'pip install -e ".[cuda12x]"' in p.stdout or "CuPy is installed" in p.stdout
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
    assert 'pip install -e ".[torch]"' in info["torch_bridge"]
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
    assert 'pip install -e ".[cuda12x]"' in info.install_hint() and "gpu-softmax[" not in info.install_hint()


def test_install_hints_for_a_wheel_installed_away_from_the_checkout_name_packages(monkeypatch):
    from gpu_softmax._cuda import info

    monkeypatch.setattr(info, "_present", lambda mod: False)
    assert info._in_checkout()  # these tests run from the checkout
    monkeypatch.setattr(info, "_in_checkout", lambda: False)
    for hint in (info.install_hint(), info.torch_install()):
        assert "checkout" not in hint and '".[' not in hint, hint
    assert "pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12" in info.install_hint()
    assert "cupy-cuda13x" in info.install_hint() and "CUDA 13 driver" in info.install_hint()
    assert info.torch_install().startswith("pip install ")


def test_cupy_without_a_gpu_does_not_read_as_if_the_kernels_ran(monkeypatch):
    from gpu_softmax._cuda import info

    monkeypatch.setattr(info, "_present", lambda mod: mod == "cupy")
    hint = info.install_hint()
    assert hint.startswith("CuPy is installed") and "did not run here" in hint
    assert "the CUDA kernels run on" not in hint


def test_cuda_version_warnings_with_faked_versions():
    from gpu_softmax._cuda.info import cuda_version_warnings

    # README's test command on a CUDA 12.8 driver: torch's CUDA 13 build cannot use the GPU, and
    # torch and CuPy sit on different CUDA majors.
    newer, majors = cuda_version_warnings(torch_cuda="13.0", driver=12080, cupy_cuda=12090)
    assert "torch is built for CUDA 13.0, newer than this driver supports (CUDA 12.8)" in newer
    assert "cannot use the GPU" in newer and "--index-url https://download.pytorch.org/whl/cu126" in newer
    assert "R580" in newer
    assert "torch uses CUDA 13.0 and CuPy CUDA 12.9" in majors and "cuda13x" in majors
    # The same torch on a CUDA 13 driver: only the majors differ.
    (only,) = cuda_version_warnings(torch_cuda="13.0", driver=13000, cupy_cuda=12090)
    assert only.startswith("torch uses CUDA 13.0 and CuPy CUDA 12.9")
    # Matching stacks: nothing to say.
    assert cuda_version_warnings(torch_cuda="12.6", driver=12080, cupy_cuda=12090) == []
    assert cuda_version_warnings(torch_cuda="13.0", driver=13000, cupy_cuda=13020) == []
    assert cuda_version_warnings(torch_cuda="12.6", driver=13000, cupy_cuda=12090) == []
    # A newer minor than the driver's: minor-version compatibility, said as such.
    (minor,) = cuda_version_warnings(torch_cuda="12.8", driver=12040, cupy_cuda=12040)
    assert "newer than this driver's CUDA 12.4" in minor and "minor-version compatibility" in minor
    # CuPy for CUDA 13 on a CUDA 12 driver.
    (cupy13,) = cuda_version_warnings(torch_cuda=None, driver=12080, cupy_cuda=13020)
    assert "CuPy is built for CUDA 13.2, newer than this driver supports (CUDA 12.8)" in cupy13
    # No driver, no torch, a CPU torch: nothing to compare.
    assert cuda_version_warnings(torch_cuda="13.0", driver=None, cupy_cuda=12090)[:1] == [majors]
    assert cuda_version_warnings(torch_cuda=None, driver=None, cupy_cuda=None) == []


def test_info_prints_the_cuda_warnings(capsys, monkeypatch):
    from gpu_softmax._cuda import info

    monkeypatch.setattr(info, "cuda_versions", lambda: {"torch_cuda": "13.0", "driver": 12080, "cupy_cuda": 12090})
    out = info_output(capsys)
    assert "  warning: torch is built for CUDA 13.0, newer than this driver supports (CUDA 12.8)" in out
    assert "  warning: torch uses CUDA 13.0 and CuPy CUDA 12.9" in out
    assert out.index("warning:") < out.index("baselines and bench tools:")
    doc = json.loads(info_output(capsys, "--json"))
    assert len(doc["cuda_warnings"]) == 2
    monkeypatch.setattr(info, "cuda_versions", lambda: {"torch_cuda": "12.6", "driver": 12080, "cupy_cuda": 12090})
    assert "warning:" not in info_output(capsys)


def test_compile_check_bad_arch_is_a_clear_error_not_a_traceback():
    p = run_cli("compile-check", "--arch", "foo")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    assert "compile-check: bad --arch entry 'foo': expected an SM architecture number" in p.stderr
    from gpu_softmax._cuda import compile_check as cc

    assert cc.parse_archs("80, sm_90") == (80, 90)
    for bad in ("", "80,", "sm80x", "9"):
        with pytest.raises(ValueError, match="bad --arch entry"):
            cc.parse_archs(bad)


def test_compile_check_says_which_architectures_are_supported(capsys, monkeypatch):
    from gpu_softmax._cuda import compile_check as cc

    def spilling(archs):  # what ptxas reports for sm_75: spills in cross_entropy.cu
        entry = cc.EntryReport("gs_ce_warp1_f64", archs[0], registers=255, stack_bytes=8, spill_store_bytes=4,
                               spill_load_bytes=4)
        return [cc.FamilyReport(family="cross_entropy", arch=archs[0], seconds=0.0, log="",
                                entries={entry.name: entry})]

    monkeypatch.setattr(cc, "run_all", spilling)
    assert cli.main(["compile-check", "--arch", "75"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("note: sm_75 is not a supported architecture")
    assert out.rstrip().endswith(f"compile-check: sm_75 is not a supported architecture (the kernels support "
                                 f"{cc.SUPPORTED}); ptxas spills registers there, which compile-check reports as "
                                 "problems")
    assert cc.unsupported_note(80) is None and cc.unsupported_note(90) is None
    assert cc.unsupported_note(100) and cc.unsupported_note(70)
    assert "sm_80 to sm_90" in cc.SUPPORTED


def test_help_shows_no_markdown_backticks():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = [parser.format_help()] + [p.format_help() for p in sub.choices.values()]
    for text in texts:
        assert "`" not in text, text
    assert "Supported GPUs: sm_80 to sm_90" in texts[0]


def test_info_text_lists_baselines(capsys):
    # (tests/test_packaging.py runs the installed `gpu-softmax info` in a process of its own)
    out = info_output(capsys)
    assert "baselines and bench tools:" in out
    for name in ("torch", "cupyx", "liger_kernel", "quack", "compile_cache", "nvrtc", "torch_bridge"):
        assert name in out


def stand_in_report(family, arch, spills=0):
    from gpu_softmax._cuda import compile_check as cc

    entry = cc.EntryReport("gs_kernel", arch, registers=32, stack_bytes=0, spill_store_bytes=spills,
                           spill_load_bytes=0)
    return cc.FamilyReport(family=family, arch=arch, seconds=0.0, log="", entries={entry.name: entry})


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_check_with_compile_without_gpu_compiles_and_reports_skip(capsys, monkeypatch):
    # The real NVRTC compile of every family and architecture is tests/test_compile.py's (the same
    # compile_check.check_family); a stand-in report here keeps this a test of the command: its rows,
    # its summary, and its exit status on a clean and on a spilling compile.
    from gpu_softmax._cuda import compile_check as cc

    monkeypatch.setattr(cc, "check_family", stand_in_report)
    assert cli.main(["check", "--quick", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "using the NumPy reference" in out
    assert f"No GPU: the CUDA kernels cannot run here, so this checks the NumPy reference only; compiling every " \
           f"kernel with NVRTC for sm_{cc.ARCHS[-1]}" in out
    assert "reference identities float32" in out
    assert "CUDA kernels against the reference" in out and "skip" in out
    assert " FAIL " not in out and "0 failed" in out
    monkeypatch.setattr(cc, "check_family", lambda family, arch: stand_in_report(family, arch, spills=8))
    assert cli.main(["check", "--quick", "--compile"]) == 1
    assert " FAIL " in capsys.readouterr().out


@pytest.mark.skipif(not NO_GPU, reason="checks the no-GPU behaviour")
def test_check_quick_without_gpu_says_so_first_and_skips_the_compile(capsys, monkeypatch):
    from gpu_softmax._cuda import compile_check as cc

    compiled = []
    monkeypatch.setattr(cc, "check_family", lambda family, arch: compiled.append(arch) or stand_in_report(family, arch))
    assert cli.main(["check", "--quick"]) == 0
    captured = capsys.readouterr()
    assert compiled == [] and "compiling" not in captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("backend: no NVIDIA GPU found")
    no_gpu = next(i for i, ln in enumerate(lines) if ln.startswith("No GPU: the CUDA kernels cannot run here"))
    assert "add --compile to also compile every kernel with NVRTC" in lines[no_gpu]
    assert no_gpu < next(i for i, ln in enumerate(lines) if ln.startswith("case "))  # before any result
    assert re.search(r"NVRTC compile of cuda_src\s+skip\s+not asked for \(check --compile runs it\)", captured.out)
    assert "0 failed" in captured.out
    assert "--compile" in subcommand_help("check")


def test_ticking_progress_speaks_during_a_long_step(capsys):
    import time

    progress = cli._TickingProgress(every_s=0.2)
    try:
        progress("compiling softmax for sm_90 with NVRTC")
        time.sleep(0.9)
    finally:
        progress.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "  compiling softmax for sm_90 with NVRTC"
    ticks = [ln for ln in err[1:] if re.fullmatch(r"  \.\.\. compiling softmax for sm_90 with NVRTC: \d+ s so far", ln)]
    assert len(ticks) >= 2 and len(ticks) == len(err) - 1, err
