"""benchmarks/device_check.py on the CPU: its parsing, its time plan, and that it keeps
what it has when a step hangs. (On the H200 it read memcheck's last line, the sanitizer's
"ERROR SUMMARY", as pytest's summary and called a clean run "errors or incomplete".)"""

from __future__ import annotations

import json
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


def test_step_plan_fits_one_eight_minute_call_with_a_margin():
    for kw in ({}, {"skip_tests": True, "full_bench": True}, {"sanitizer": False}):
        steps = dc.plan_steps(**kw)
        assert dc.worst_case_seconds(steps) <= dc.CALL_LIMIT_S - 60, (kw, steps)
    names = [n for n, _ in dc.plan_steps()]
    assert names == ["tests", "selfcheck", "memcheck", "racecheck", "synccheck", "huge", "bench"]
    assert dc.DEFAULT_BUDGET_S <= dc.CALL_LIMIT_S - 60
    # the bench step's limit leaves room above the quick benchmark's own budget
    from gpu_softmax.bench import cases

    assert dict(dc.plan_steps())["bench"] >= cases.BUDGET_S["quick"] + 15
    assert dict(dc.plan_steps(full_bench=True))["bench"] >= cases.BUDGET_S["full"] + 15


def test_a_hanging_step_is_killed_with_its_children(tmp_path):
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); print('started', flush=True); time.sleep(60)"
    t0 = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        res = dc.run_command([sys.executable, "-c", code], 2, log)
    assert res["timed_out"] and time.perf_counter() - t0 < 15
    assert "started" in res["output"]


def test_results_are_written_after_every_step_even_when_one_times_out(tmp_path, monkeypatch):
    from gpu_softmax._cuda import info

    monkeypatch.setattr(dc, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(info, "gpu_status", lambda: (True, "fake"))
    monkeypatch.setattr(info, "backend_info", lambda: {
        "devices": [{"name": "Fake GPU"}], "cupy": "x", "cuda_runtime": 1, "cuda_driver": 1, "nvrtc": "x",
        "baselines": {}})
    monkeypatch.setattr(dc, "find_sanitizer", lambda: None)
    monkeypatch.setattr(dc.shutil, "which", lambda name: None)
    import summarize

    monkeypatch.setattr(summarize, "main", lambda argv: 0)
    outputs = {"tests": "print('5 passed, 1 skipped in 1.00s')", "selfcheck": "print('9 passed, 0 failed, 0 skipped')",
               "huge": "import time; time.sleep(30)", "bench": "print('no results')"}
    monkeypatch.setattr(dc, "step_command", lambda name, *a: [sys.executable, "-c", outputs[name]])
    monkeypatch.setitem(dc.STEP_LIMITS_S, "huge", 2)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GPU_SOFTMAX_TEST_MAX_ELEMENTS", "1")  # main() sets it: restored after the test
    # Imported long before (as in a full test run): the budget still counts from main()'s start.
    monkeypatch.setattr(dc, "T_START", time.perf_counter() - 10 * dc.DEFAULT_BUDGET_S)
    (tmp_path / "out").mkdir()
    rc = dc.main([])
    doc = json.loads(next((tmp_path / "results").glob("Fake-GPU-*.json")).read_text())
    assert rc == 1  # the huge step did not finish
    assert doc["tests"]["passed"] == 5 and doc["selfcheck"]["passed"] == 9
    assert doc["steps"]["huge"]["timed_out"] and doc["steps"]["huge"]["verdict"] == "FAILED or incomplete"
    assert "bench" in doc["steps"] and doc["steps"]["sanitizers"]["verdict"].startswith("not run")
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
