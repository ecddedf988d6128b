"""benchmarks/device_check.py on the CPU: its parsing, its time plan, and that it keeps
what it has when a step hangs. (On the H200 it read memcheck's last line, the sanitizer's
"ERROR SUMMARY", as pytest's summary and called a clean run "errors or incomplete".)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import device_check as dc  # noqa: E402
import gpu_cases  # noqa: E402

# Output as the H200 run printed it (benchmarks' device_check.log, racecheck.log, synccheck.log).
MEMCHECK_OUT = """========= COMPUTE-SANITIZER
..........................................                               [100%]
42 passed, 2754 deselected in 7.37s
========= ERROR SUMMARY: 0 errors
"""
TESTS_OUT = """FAILED tests/test_torch_gpu.py::test_softmax_family_cuda[softmax-(64, 1000)--1-torch.float32] - AttributeError
FAILED tests/test_torch_gpu.py::test_softmax_family_cuda[logsumexp-(1000,)-0-torch.float32]
13 failed, 903 passed, 2 skipped, 1878 deselected, 28 warnings in 79.04s (0:01:19)
"""
RACECHECK_OUT = """========= COMPUTE-SANITIZER
gpu cases done: 38 cases, 0 mismatched
========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)
"""
SYNCCHECK_OUT = """========= COMPUTE-SANITIZER
gpu cases done: 38 cases, 0 mismatched
========= ERROR SUMMARY: 0 errors
"""


def test_pytest_summary_is_not_the_sanitizers_last_line():
    counts = dc.parse_pytest_summary(MEMCHECK_OUT)
    assert counts["found"] and counts["passed"] == 42 and counts["failed"] == 0 and counts["deselected"] == 2754
    assert "passed" not in MEMCHECK_OUT.splitlines()[-1]  # what the old parser read
    t = dc.parse_pytest_summary(TESTS_OUT)
    assert (t["failed"], t["passed"], t["skipped"], t["deselected"]) == (13, 903, 2, 1878)
    assert dc.parse_pytest_summary("killed mid-run\n.....")["found"] is False


def test_memcheck_verdicts(tmp_path):
    def verdict(out, rc=0, timed_out=False):
        dc.record_step(doc := {"steps": {}}, "memcheck", {"returncode": rc, "timed_out": timed_out, "output": out},
                       tmp_path)
        return doc["steps"]["memcheck"]["verdict"]

    assert verdict(MEMCHECK_OUT) == "clean"
    assert verdict(MEMCHECK_OUT.replace("0 errors", "3 errors"), rc=99) == "3 error(s)"
    assert verdict(MEMCHECK_OUT.replace("42 passed", "40 passed, 2 failed"), rc=1) != "clean"
    assert verdict("========= COMPUTE-SANITIZER\n....", rc=-9, timed_out=True).startswith("incomplete")


def test_racecheck_and_synccheck_summaries(tmp_path):
    doc = {"steps": {}}
    for name, out in (("racecheck", RACECHECK_OUT), ("synccheck", SYNCCHECK_OUT)):
        dc.record_step(doc, name, {"returncode": 0, "timed_out": False, "output": out}, tmp_path)
        assert doc["steps"][name]["verdict"] == "clean" and doc["steps"][name]["cases"] == 38
    assert dc.parse_sanitizer(RACECHECK_OUT.replace("0 hazards displayed (0 errors", "2 hazards displayed (2 errors"))["errors"] == 4
    cut = RACECHECK_OUT.replace("gpu cases done: 38 cases, 0 mismatched\n", "")
    dc.record_step(doc, "racecheck", {"returncode": 0, "timed_out": False, "output": cut}, tmp_path)
    assert doc["steps"]["racecheck"]["verdict"] == "cases did not finish"


def test_failed_test_ids_keep_their_spaces(tmp_path):
    doc = {"steps": {}}
    dc.record_step(doc, "tests", {"returncode": 1, "timed_out": False, "output": TESTS_OUT}, tmp_path)
    assert doc["tests"]["failures"][0] == \
        "tests/test_torch_gpu.py::test_softmax_family_cuda[softmax-(64, 1000)--1-torch.float32]"


def test_step_plan_fits_one_ten_minute_call_with_a_margin():
    for kw in ({}, {"skip_tests": True, "full_bench": True}, {"sanitizer": False}, {"full_bench": True}):
        steps = dc.plan_steps(**kw)
        assert dc.worst_case_seconds(steps) <= dc.CALL_LIMIT_S - 30, (kw, steps)
    assert dc.CALL_LIMIT_S == 600  # the device tool's longest command
    names = [n for n, _ in dc.plan_steps()]
    assert names == ["probe", "compile", "tests", "selfcheck", "memcheck", "racecheck", "synccheck", "huge", "bench"]
    assert dc.worst_case_seconds(dc.plan_steps()) <= dc.DEFAULT_BUDGET_S <= dc.CALL_LIMIT_S - 30
    # the bench step's limit leaves room above the quick benchmark's own budget
    from gpu_softmax.bench import cases

    assert dict(dc.plan_steps())["bench"] >= cases.BUDGET_S["quick"] + 15
    assert dict(dc.plan_steps(full_bench=True))["bench"] >= cases.BUDGET_S["full"] + 15
    # a per-test timeout below the tests step's limit: a hung test is named before the step is killed
    assert dc.TEST_TIMEOUT_S + dc.INTERRUPT_GRACE_S < dict(dc.plan_steps())["tests"]
    assert dc.MEMCHECK_TEST_TIMEOUT_S + dc.INTERRUPT_GRACE_S < dict(dc.plan_steps())["memcheck"]


def test_without_the_sanitizer_its_time_goes_to_the_tests():
    with_san, without = dict(dc.plan_steps()), dict(dc.plan_steps(sanitizer=False))
    assert not set(dc.SANITIZER_STEPS) & set(without)
    assert without["tests"] == with_san["tests"] + sum(with_san[s] for s in dc.SANITIZER_STEPS)
    assert dc.worst_case_seconds(dc.plan_steps(sanitizer=False)) == dc.worst_case_seconds(dc.plan_steps())


def _plan_readback(*flags):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--plan", *flags],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    plans, cur = [], None
    for line in p.stdout.splitlines():
        m = re.match(r"^  (\w+)\s+(\d+)\b", line)
        if line.endswith(":") and not line.startswith(" "):
            cur = {}
            plans.append(cur)
        elif m and cur is not None:
            cur[m.group(1)] = int(m.group(2))
    return plans, p.stdout


def test_plan_prints_the_steps_their_limits_and_their_sum():
    plans, text = _plan_readback()
    assert len(plans) == 2, text  # with the sanitizer, and where it is absent or unsupported
    for plan, sanitizer in zip(plans, (True, False)):
        total = plan.pop("total")
        assert total == sum(plan.values()) <= 600, text
        steps = dc.plan_steps(sanitizer=sanitizer)
        assert plan == {"fixed": dc.FIXED_S, **dict(steps)}, text
        assert total == dc.worst_case_seconds(steps)
    assert list(plans[0])[1:3] == ["probe", "compile"]  # the probe and the compile step come first
    (full,), text = _plan_readback("--skip-tests", "--full-bench")
    assert full.pop("total") == sum(full.values()) <= 600 and "vocab_parallel" in full and "tests" not in full


def test_a_hanging_step_is_killed_with_its_children(tmp_path):
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); print('started', flush=True); time.sleep(60)"
    t0 = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        res = dc.run_command([sys.executable, "-c", code], 2, log)
    assert res["timed_out"] and time.perf_counter() - t0 < 15
    assert "started" in res["output"]


def _fake_gpu(monkeypatch, tmp_path, outputs, sanitizer=None):
    """main() on the CPU: a fake GPU, each step's command a Python one-liner from `outputs`."""
    from gpu_softmax._cuda import info

    monkeypatch.setattr(dc, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(info, "gpu_status", lambda: (True, "fake"))
    monkeypatch.setattr(info, "backend_info", lambda: {
        "devices": [{"name": "Fake GPU"}], "cupy": "x", "cuda_runtime": 1, "cuda_driver": 1, "nvrtc": "x",
        "baselines": {}})
    monkeypatch.setattr(dc, "find_sanitizer", lambda: sanitizer)
    monkeypatch.setattr(dc.shutil, "which", lambda name: None)
    import summarize

    monkeypatch.setattr(summarize, "main", lambda argv: 0)
    ran = []

    def command(name, *a):
        ran.append(name)
        return [sys.executable, "-c", outputs.get(name, "print('ok')")]

    monkeypatch.setattr(dc, "step_command", command)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GPU_SOFTMAX_TEST_MAX_ELEMENTS", "1")
    (tmp_path / "out").mkdir()
    return ran


def test_results_are_written_after_every_step_even_when_one_times_out(tmp_path, monkeypatch):
    outputs = {"compile": "print('compiled softmax for sm_90 in 1.0 s')",
               "tests": "print('5 passed, 1 skipped in 1.00s')", "selfcheck": "print('9 passed, 0 failed, 0 skipped')",
               "huge": "import time; time.sleep(30)", "bench": "print('no results')"}
    _fake_gpu(monkeypatch, tmp_path, outputs)
    monkeypatch.setitem(dc.STEP_LIMITS_S, "huge", 2)
    # Imported long before (as in a full test run): the budget still counts from main()'s start.
    monkeypatch.setattr(dc, "T_START", time.perf_counter() - 10 * dc.DEFAULT_BUDGET_S)
    rc = dc.main([])
    doc = json.loads(next((tmp_path / "results").glob("Fake-GPU-*.json")).read_text())
    assert rc == 1  # the huge step did not finish
    assert doc["tests"]["passed"] == 5 and doc["selfcheck"]["passed"] == 9
    assert doc["steps"]["huge"]["timed_out"] and doc["steps"]["huge"]["verdict"] == "FAILED or incomplete"
    assert "bench" in doc["steps"] and doc["steps"]["memcheck"]["verdict"] == dc.NOT_RUN_ABSENT
    assert doc["steps"]["tests"]["limit_s"] == dict(dc.plan_steps(sanitizer=False))["tests"]
    assert {"commit", "cuda_src_tree", "plan"} <= set(doc)
    assert (tmp_path / "out" / next((tmp_path / "results").glob("*.json")).name).is_file()


def test_gpu_cases_cover_every_regime_and_the_huge_input():
    names = [n for n, _ in gpu_cases.regime_cases()]
    assert any("forced stream" in n for n in names) and any("forced split" in n for n in names)
    assert any(n.startswith("cross entropy soft") for n in names) and any("float16" in n for n in names)
    assert gpu_cases.HUGE[0] * gpu_cases.HUGE[1] > 2**31
    huge = [n for n, _ in gpu_cases.huge_cases()]  # only builds the cases: nothing runs here
    assert len(huge) == 4 and any("in place" in n for n in huge) and any("logsumexp" in n for n in huge)


class _NumpyAsCupy:
    """Just enough of CuPy for gpu_cases on the CPU: arrays stay NumPy, so gpu_softmax
    runs the reference and each case's comparison and bookkeeping code runs for real."""

    import numpy as _np

    asarray = staticmethod(_np.asarray)
    asnumpy = staticmethod(_np.asarray)


def test_gpu_cases_run_on_the_reference(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _NumpyAsCupy)
    cases = gpu_cases.regime_cases()
    assert sum(run() for _, run in cases[:: max(1, len(cases) // 12)]) == 0


def test_importing_the_device_check_leaves_the_environment_alone():
    # Its steps get PYTHONPATH=<checkout> as their own environment; set at import, it leaked
    # into every later subprocess of the importing process (a wheel test then imported the checkout).
    import subprocess

    code = ("import os, sys; sys.path.insert(0, 'benchmarks'); before = dict(os.environ); "
            "import device_check; assert dict(os.environ) == before")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(dc.__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr


# ----------------------------------------------------------------------------------
# issue 24: the probe, the compile step, the tests' flags, raw allocations, the files out

GVISOR_PROBE_OUT = """========= COMPUTE-SANITIZER
========= Error: Device not supported. Please refer to the "Supported Devices" section of the sanitizer documentation
========= Error: Target application returned an error
Traceback (most recent call last):
cupy_backends.cuda.api.runtime.CUDARuntimeError: cudaErrorUnknown: unknown error (999)
========= ERROR SUMMARY: 1 error
"""
GOOD_PROBE_OUT = """========= COMPUTE-SANITIZER
sanitizer probe ok
========= ERROR SUMMARY: 0 errors
"""


def test_probe_verdicts():
    res = {"returncode": 0, "timed_out": False, "limit_s": 20}
    assert dc.probe_verdict(dict(res, output=GOOD_PROBE_OUT)) == "supported"
    gv = dc.probe_verdict(dict(res, returncode=99, output=GVISOR_PROBE_OUT))
    assert gv.startswith("unsupported: Error: Device not supported"), gv
    assert dc.probe_verdict(dict(res, timed_out=True, returncode=-9, output="")).startswith("unsupported: the probe")
    assert dc.probe_verdict(dict(res, output="sanitizer probe ok\n")).startswith("unsupported")  # no summary
    cmd = dc.step_command("probe", None, "/x/compute-sanitizer", Path("/tmp"))
    assert cmd[:1] == ["/x/compute-sanitizer"] and "memcheck" in cmd and cmd[-1] == dc.PROBE_CODE


def test_an_unsupported_sanitizer_is_recorded_and_its_time_goes_to_the_tests(tmp_path, monkeypatch):
    probe = f"import sys; print({GVISOR_PROBE_OUT!r}); sys.exit(99)"
    ran = _fake_gpu(monkeypatch, tmp_path, {"probe": probe, "tests": "print('5 passed in 1.00s')",
                                            "selfcheck": "print('9 passed, 0 failed, 0 skipped')",
                                            "huge": "print('gpu cases done: 4 cases, 0 mismatched')"},
                    sanitizer="/fake/compute-sanitizer")
    rc = dc.main(["--budget", "590"])
    doc = json.loads(next((tmp_path / "results").glob("Fake-GPU-*.json")).read_text())
    assert ran == ["probe", "compile", "tests", "selfcheck", "huge", "bench"]
    assert doc["steps"]["probe"]["verdict"].startswith("unsupported: Error: Device not supported")
    for name in dc.SANITIZER_STEPS:
        assert doc["steps"][name]["verdict"] == "not run: sanitizer unsupported on this host"
    assert doc["steps"]["tests"]["limit_s"] == dict(dc.plan_steps(sanitizer=False))["tests"]
    assert doc["plan"]["steps"] == [list(s) for s in dc.plan_steps(sanitizer=False)]
    assert rc == 0, dc.closing_line(doc)  # the host's refusal is no failure of ours
    assert "memcheck: not run: sanitizer unsupported on this host" in dc.closing_line(doc)


def test_a_supported_sanitizer_runs_all_three_steps(tmp_path, monkeypatch):
    ran = _fake_gpu(monkeypatch, tmp_path, {"probe": f"print({GOOD_PROBE_OUT!r})"}, sanitizer="/fake/cs")
    dc.main([])
    assert ran == ["probe", "compile", "tests", "selfcheck", "memcheck", "racecheck", "synccheck", "huge", "bench"]


def test_at_most_eight_files_go_out_also_with_the_full_bench(tmp_path, monkeypatch):
    from gpu_softmax.bench import report

    def many_files(doc, out_dir, stem):  # what write_results gives for a full benchmark: 14 files
        out_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{stem}.json", f"{stem}.md", f"{stem}.png"] + [f"{stem}-op{i}-float32.png" for i in range(11)]
        for n in names:
            (out_dir / n).write_text(n)
        return [out_dir / n for n in names]

    monkeypatch.setattr(report, "write_results", many_files)
    monkeypatch.setattr(report, "markdown_table", lambda doc: "")
    rows = json.dumps({"rows": [{"op": "softmax"}], "elapsed_s": 1.0})
    bench_cmd = ("import os, pathlib, sys; d = pathlib.Path(os.environ['GS_BENCH_DIR']); d.mkdir(exist_ok=True); "
                 f"(d / 'results.json').write_text({rows!r})")
    _fake_gpu(monkeypatch, tmp_path, {"bench": bench_cmd})
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(dc.tempfile, "mkdtemp", lambda prefix: str(work))
    monkeypatch.setenv("GS_BENCH_DIR", str(work / "bench"))
    dc.main(["--full-bench"])
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    stem = next((tmp_path / "results").glob("Fake-GPU-*.json")).stem
    assert len(out) <= dc.MAX_OUT_FILES, out
    assert {f"{stem}.json", f"{stem}.md", f"{stem}.png", f"{stem}-device_check.log", f"{stem}-more.tar.gz",
            "benchmarks-README.md"} <= set(out), out
    import tarfile

    with tarfile.open(tmp_path / "out" / f"{stem}-more.tar.gz") as tar:
        in_archive = set(tar.getnames())
    assert len(in_archive | set(out)) >= 14 + 2  # every file went out: alone or in the archive


def test_out_files_rank_and_archive(tmp_path):
    stem = "G-2026-12-04"
    files = [tmp_path / n for n in ([f"{stem}-p{i}.png" for i in range(9)] + [f"{stem}.png", f"{stem}.json",
                                    f"{stem}.md", f"{stem}-device_check.log", f"{stem}-junit.xml"])]
    for p in files:
        p.write_text(p.name)
    picked = dc.out_files(files, stem, tmp_path)
    assert len(picked) == dc.MAX_OUT_FILES and picked[-1].name == f"{stem}-more.tar.gz"
    assert [p.name for p in picked[:5]] == [f"{stem}.json", f"{stem}.md", f"{stem}-device_check.log",
                                            f"{stem}-junit.xml", f"{stem}.png"]
    assert dc.out_files(files[9:], stem, tmp_path) == sorted(files[9:], key=lambda p: picked.index(p))
    out = tmp_path / "out"
    out.mkdir()
    dc.copy_out(files[:3], out)  # an earlier write put three plots out one by one ...
    dc.copy_out(picked, out)  # ... a later one folds them into the archive: no stale copies stay
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in picked)


def test_tests_step_flags_name_a_hung_test(monkeypatch):
    monkeypatch.setattr(dc, "have_module", lambda name: True)
    cmd = dc.step_command("tests", None, None, Path("/w"))
    i = cmd.index("-n")
    assert cmd[i + 1] == str(dc.TEST_WORKERS) and cmd[i + 2:i + 4] == ["--dist", "loadgroup"]
    assert cmd[cmd.index("--timeout") + 1] == str(dc.TEST_TIMEOUT_S)
    assert cmd[cmd.index("--timeout-method") + 1] == "thread"
    assert cmd[cmd.index("--junitxml") + 1] == "/w/tests-junit.xml" and cmd[cmd.index("gpu") - 1] == "-m"
    mem = dc.step_command("memcheck", None, "cs", Path("/w"))
    assert "-n" not in mem and mem[mem.index("--timeout") + 1] == str(dc.MEMCHECK_TEST_TIMEOUT_S)
    monkeypatch.setattr(dc, "have_module", lambda name: False)  # plugins missing: plain pytest, still a report
    cmd = dc.step_command("tests", None, None, Path("/w"))
    assert "-n" not in cmd and "--timeout" not in cmd and "--junitxml" in cmd


def test_junit_report_is_read_back(tmp_path):
    xml = tmp_path / "tests-junit.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3" failures="1" errors="1" '
                   'skipped="0"><testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad[x]"><failure message="m"/></testcase>'
                   '<testcase classname="tests.test_b" name="test_hung"><error message="Timeout"/></testcase>'
                   '</testsuite></testsuites>')
    got = dc.parse_junit(xml)
    assert got["junit"] == {"tests": 3, "failures": 1, "errors": 1, "skipped": 0}
    assert got["junit_failed"] == ["tests.test_a::test_bad[x]", "tests.test_b::test_hung"]
    assert dc.parse_junit(tmp_path / "none.xml") == {}


def test_an_overrunning_step_is_interrupted_before_it_is_killed(tmp_path):
    # pytest writes its summary and JUnit report on SIGINT: the step gets it before SIGKILL
    code = ("import time\ntry:\n    print('started', flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n    print('3 passed, 1 failed in 2.00s (interrupted)', flush=True)")
    with open(tmp_path / "log", "w") as log:
        res = dc.run_command([sys.executable, "-c", code], 4, log)
    assert res["timed_out"] and "interrupted" in res["output"]
    assert dc.parse_pytest_summary(res["output"])["passed"] == 3


def test_memcheck_runs_pytest_with_raw_allocations(tmp_path):
    cmd = dc.step_command("memcheck", None, "/x/cs", Path("/w"))
    assert cmd[cmd.index("-c") + 1] == dc.RAW_ALLOC_PYTEST and "gpu and memcheck" in cmd
    assert dc.step_env("memcheck") == {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} and dc.step_env("tests") is None
    # the snippet itself: a stand-in cupy records the allocators; a test sees them off
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("from . import cuda\n")
    (fake / "cuda.py").write_text("allocator = pinned = 'pool'\n"
                                  "def set_allocator(a):\n    global allocator; allocator = a\n"
                                  "def set_pinned_memory_allocator(a):\n    global pinned; pinned = a\n")
    (tmp_path / "test_raw.py").write_text("import cupy\n\ndef test_raw():\n"
                                          "    assert cupy.cuda.allocator is None and cupy.cuda.pinned is None\n")
    p = subprocess.run([sys.executable, "-c", dc.RAW_ALLOC_PYTEST, "-q", "-p", "no:cacheprovider",
                        str(tmp_path / "test_raw.py")], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path / "fake")})
    assert p.returncode == 0 and "1 passed" in p.stdout, p.stdout + p.stderr


def test_nvidia_smi_has_a_timeout(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nsleep 30\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(dc, "NVIDIA_SMI_TIMEOUT_S", 1)
    t0 = time.perf_counter()
    assert dc.device_report()["verdict"] == "nvidia-smi timed out after 1 s"
    assert time.perf_counter() - t0 < 10


def test_compile_step_builds_the_families_side_by_side(monkeypatch, capfd):
    from gpu_softmax._cuda import loader

    fams = loader.families()
    assert len(fams) >= 2
    monkeypatch.setattr(dc, "COMPILE_ONE", "import sys, time; time.sleep(2); "
                                           "print(f'compiled {sys.argv[1]} for sm_90 in 2.0 s', flush=True)")
    t0 = time.perf_counter()
    assert dc.compile_families() == 0
    assert time.perf_counter() - t0 < 2 * len(fams) - 0.5  # not one after the other
    out = capfd.readouterr().out
    assert dc.parse_compile(out)["families"] == {f: 2.0 for f in fams}
    assert dc.step_command("compile", None, None, Path("/w"))[-1] == "--compile-step"
    monkeypatch.setattr(dc, "COMPILE_ONE", "import sys; sys.exit(sys.argv[1] == %r)" % fams[0])
    assert dc.compile_families() == 1


def test_docs_state_the_plan_the_script_has():
    text = (ROOT / "docs" / "gpu_checks.md").read_text()
    rows = dict(re.findall(r"^\| ([\w, ]+) \| .* \| ([\d, ]+) \|$", text, re.MULTILINE))
    limits = {"fixed": dc.FIXED_S, **dc.STEP_LIMITS_S}
    for names, values in rows.items():
        for name, value in zip(names.split(", "), values.split(", ")):
            assert limits[name] == int(value), (name, value)
    assert set(limits) <= {n for names in rows for n in names.split(", ")}
    total = dc.worst_case_seconds(dc.plan_steps())
    assert f"worst case is {total} s" in text and f"budget {dc.DEFAULT_BUDGET_S} s" in text
    assert f"({total} s in all" in (ROOT / "benchmarks" / "README.md").read_text()
