#!/usr/bin/env python3
"""The project's one device-check script: run it, in one call, whenever a GPU is lent.

From the source tree, with no install and no registry (PYTHONPATH=. is set here). Steps,
each a subprocess with its own time limit (interrupted, then killed with its children
when it runs over), the results file rewritten after every step so a timeout or a crash
keeps what came before:

  device      the GPU, driver, CuPy/CUDA/NVRTC versions, baselines present (nvidia-smi
              with a timeout of its own)
  probe       compute-sanitizer on a tiny CuPy kernel, a few seconds: where the host
              refuses it (gVisor: "Device not supported", then error 999), the three
              sanitizer steps are recorded "not run: sanitizer unsupported on this host"
              and their time goes to the tests
  compile     both kernel families at once, warming CuPy's NVRTC cache for every later step
  tests       pytest -m gpu over pytest-xdist workers, each test under pytest-timeout
              (thread method: a hung test is named and its worker replaced), with a
              JUnit report (inputs checked on the CPU capped by --test-max-elements)
  selfcheck   gpu-softmax check --quick
  memcheck    compute-sanitizer memcheck over the `memcheck` test subset, with raw
              allocations (no CuPy or torch memory pool, whose sub-allocations hide an
              out-of-bounds access into a neighbouring block)
  racecheck   compute-sanitizer racecheck over benchmarks/gpu_cases.py --regimes
  synccheck   compute-sanitizer synccheck over the same cases
  huge        benchmarks/gpu_cases.py --huge: one input past 2**31 elements
  bench       gpu-softmax bench --quick (--full-bench: the full plan, and the
              vocabulary-parallel rows)

The sum of the step limits is the run's worst case; it fits the device tool's longest
command, 10 minutes, with a margin (`--plan` prints it; tests/test_device_check.py holds
it there). --budget caps the whole run and shortens the last steps' limits when earlier
ones ran long. Writes benchmarks/results/<gpu>-<date>.{json,md,png}, its log and the
tests' JUnit report, refreshes benchmarks/README.md's table (benchmarks/summarize.py)
and copies at most 8 files to $OUT (the device tool returns no more): the JSON, the
markdown, the log, the JUnit report, the README, the overview plot, and the per-panel
plots in one archive.

    python benchmarks/device_check.py [--plan] [--skip-tests] [--full-bench] [--skip-compile] [--budget S]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

# Seconds each step may run, re-derived 2026-12-04 (issue 24) from the H200 run of
# 2026-11-26 (warm caches: tests 79 s for 918 tests, selfcheck 8, memcheck 15, bench
# --quick 67 without torch.compile) and what changed since:
# - compile: cold NVRTC caches, about 54 s for the larger family at sm_90 on a 2-core
#   host; the two families compile side by side: 90.
# - tests: about 1,235 tests, 79 * 1235 / 918 = 106 s serial on warm caches; over 8
#   xdist workers the CPU reference (most of the time) runs 8 wide, leaving worker
#   start-up (torch and CuPy imports, about 10 s) and the longest single tests (a cold
#   Inductor/Triton start for torch.compile: up to a minute): 150, no test over
#   TEST_TIMEOUT_S. Where the sanitizer steps cannot run, their 125 s go here too.
# - memcheck: 15 s warm under the pool; raw allocations and memcheck's own start: 60.
# - selfcheck 30, racecheck 40, synccheck 25, huge 35 as measured or before; bench:
#   bench.cases.BUDGET_S["quick"] (50) + 35 for its start-up and a cold torch.compile.
STEP_LIMITS_S = {"probe": 20, "compile": 90, "tests": 150, "selfcheck": 30, "memcheck": 60, "racecheck": 40,
                 "synccheck": 25, "huge": 35, "bench": 85}
SANITIZER_STEPS = ("memcheck", "racecheck", "synccheck")
FULL_BENCH_LIMIT_S = 300  # --full-bench: the full plan (its own budget is 280 s)
VOCAB_PARALLEL_LIMIT_S = 30
FIXED_S = 20  # start-up, the device step (nvidia-smi at most NVIDIA_SMI_TIMEOUT_S), results, the summary
CALL_LIMIT_S = 600  # the device tool's longest command: 10 minutes
DEFAULT_BUDGET_S = 570  # the whole run, with 30 s to spare under CALL_LIMIT_S
NVIDIA_SMI_TIMEOUT_S = 10
TEST_WORKERS = 8  # pytest-xdist workers (the device machine has 16 cores)
TEST_TIMEOUT_S = 120  # any one GPU test (pytest-timeout)
MEMCHECK_TEST_TIMEOUT_S = 45  # any one test under memcheck
INTERRUPT_GRACE_S = 8  # a step over its limit gets SIGINT (pytest then writes its summary and JUnit file) first
MAX_OUT_FILES = 8  # what the device tool copies back from $OUT

NOT_RUN_UNSUPPORTED = "not run: sanitizer unsupported on this host"
NOT_RUN_ABSENT = "not run: compute-sanitizer not found"


def plan_steps(skip_tests: bool = False, full_bench: bool = False, sanitizer: bool = True) -> list[tuple[str, int]]:
    """(step, limit in seconds) in the order they run. sanitizer=False: compute-sanitizer
    is absent or the probe found it unsupported, and the tests get the sanitizer steps' time.
    The full benchmark takes a call of its own: full_bench leaves the tests out."""
    skip_tests = skip_tests or full_bench
    steps = []
    if not skip_tests:
        tests = STEP_LIMITS_S["tests"] + (0 if sanitizer else sum(STEP_LIMITS_S[s] for s in SANITIZER_STEPS))
        steps += [("probe", STEP_LIMITS_S["probe"]), ("compile", STEP_LIMITS_S["compile"]), ("tests", tests),
                  ("selfcheck", STEP_LIMITS_S["selfcheck"])]
        if sanitizer:
            steps += [(s, STEP_LIMITS_S[s]) for s in SANITIZER_STEPS]
        steps.append(("huge", STEP_LIMITS_S["huge"]))
    else:
        steps.append(("compile", STEP_LIMITS_S["compile"]))
    if full_bench:
        steps += [("bench", FULL_BENCH_LIMIT_S), ("vocab_parallel", VOCAB_PARALLEL_LIMIT_S)]
    else:
        steps.append(("bench", STEP_LIMITS_S["bench"]))
    return steps


def worst_case_seconds(steps) -> int:
    return FIXED_S + sum(limit for _, limit in steps)


def plan_text(skip_tests: bool = False, full_bench: bool = False) -> str:
    """The steps with their limits and the sum, for --plan: as they run with a working
    compute-sanitizer, and where it is absent or unsupported."""
    lines = ["device check plan (limits in seconds; the sum is one run's worst case)"]
    variants = [(True, "with compute-sanitizer")] + ([] if skip_tests else [(False, "sanitizer absent or unsupported")])
    for sanitizer, title in variants:
        steps = plan_steps(skip_tests, full_bench, sanitizer)
        lines.append(f"{title}:")
        lines.append(f"  {'fixed':<15} {FIXED_S:>4}  start-up, device (nvidia-smi <= {NVIDIA_SMI_TIMEOUT_S} s), "
                     "results")
        lines += [f"  {name:<15} {limit:>4}" for name, limit in steps]
        lines.append(f"  {'total':<15} {worst_case_seconds(steps):>4}  of {CALL_LIMIT_S} "
                     "(the device tool's longest command)")
    lines.append(f"budget (--budget): {DEFAULT_BUDGET_S} s; any one test: {TEST_TIMEOUT_S} s "
                 f"({MEMCHECK_TEST_TIMEOUT_S} s under memcheck); at most {MAX_OUT_FILES} files to $OUT")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------
# reading the tools' output

_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b")
_PYTEST_SUMMARY = re.compile(r"\b\d+ (?:passed|failed|skipped|deselected|errors?)\b.* in \d+(?:\.\d+)?s\b")
_SANITIZER = re.compile(r"(?:ERROR SUMMARY: (\d+) errors?|RACECHECK SUMMARY: (\d+) hazards? displayed "
                        r"\((\d+) errors?, (\d+) warnings?\))")


def parse_pytest_summary(text: str) -> dict:
    """Counts from pytest's final summary line ("3 failed, 900 passed, ... in 79.04s").

    The last line matching that form, wherever it sits: under compute-sanitizer the
    output ends with the sanitizer's own "ERROR SUMMARY: 0 errors" line, which is not it.
    `found` is False when there is none (pytest was killed or never ran).
    """
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "deselected": 0, "found": False}
    lines = [ln for ln in text.splitlines() if _PYTEST_SUMMARY.search(ln)]
    if lines:
        counts["found"] = True
        for n, key in _PYTEST_COUNT.findall(lines[-1]):
            key = "errors" if key.startswith("error") else key
            if key in counts:
                counts[key] = int(n)
    return counts


def parse_sanitizer(text: str) -> dict:
    """compute-sanitizer's summaries: errors (memcheck, synccheck) or hazards (racecheck)."""
    errors = []
    for m in _SANITIZER.finditer(text):
        if m.group(1) is not None:
            errors.append(int(m.group(1)))
        else:
            errors.append(int(m.group(2)) + int(m.group(3)) + int(m.group(4)))
    return {"summaries": len(errors), "errors": sum(errors)}


def sanitizer_verdict(step: dict) -> str:
    """'clean' only when the tool ran to its end and every summary and count is clean."""
    if step.get("timed_out"):
        return "incomplete (timed out)"
    if not step.get("summaries"):
        return "incomplete (no sanitizer summary)"
    if step["errors"]:
        return f"{step['errors']} error(s)"
    if step.get("returncode") != 0:
        return f"failed (exit {step.get('returncode')})"
    if "passed" in step and (not step.get("found") or step["failed"] or step["errors_pytest"] or not step["passed"]):
        return "tests failed or did not run"
    if "cases_done" in step and not step["cases_done"]:
        return "cases did not finish"
    return "clean"


def parse_gpu_cases(text: str) -> dict:
    m = re.findall(r"gpu cases done: (\d+) cases, (\d+) mismatched", text)
    return {"cases_done": bool(m), "cases": int(m[-1][0]) if m else 0, "mismatched": int(m[-1][1]) if m else None,
            "failures": re.findall(r"^(?:FAIL|ERROR|MISMATCH) (.+)$", text, re.MULTILINE)[:50]}


def parse_selfcheck(text: str) -> dict:
    m = re.findall(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", text, re.MULTILINE)
    out = {"passed": 0, "failed": 0, "skipped": 0, "found": bool(m)}
    if m:
        out.update(passed=int(m[-1][0]), failed=int(m[-1][1]), skipped=int(m[-1][2]))
    out["failures"] = [ln.strip() for ln in text.splitlines() if "  FAIL  " in ln][:100]
    return out


# ----------------------------------------------------------------------------------
# running


def run_command(cmd: list[str], limit_s: float, log, env: dict | None = None) -> dict:
    """Run `cmd` in its own process group, output to the log. Past `limit_s` the group gets
    SIGINT (pytest writes its summary and JUnit report on it), then SIGKILL after a grace;
    whatever the group left running when the command ends is killed too."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    # The steps import the package from this source tree. Set for the child only: importing
    # this module (the tests do) must not change what later subprocesses import.
    child_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=child_env)
    grace = min(INTERRUPT_GRACE_S, limit_s / 4)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, limit_s - grace))
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal_group(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=max(0.5, grace))
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    _signal_group(proc.pid, signal.SIGKILL)  # spawned ranks, xdist workers, sanitizer children
    out = out or ""
    log.write(f"\n$ {' '.join(cmd)}\n{out}\n")
    log.flush()
    print(out[-4000:], flush=True)
    return {"returncode": proc.returncode, "timed_out": timed_out, "limit_s": round(limit_s),
            "seconds": round(time.perf_counter() - t0, 1), "output": out}


def _signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/compute-sanitizer")
    return str(default) if default.exists() else None


def have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# A tiny CuPy kernel: the probe asks only whether compute-sanitizer can run on this host.
PROBE_CODE = ("import cupy; x = cupy.arange(1024, dtype=cupy.float32); "
              "assert float((x * 2).sum()) == 1047552.0; print('sanitizer probe ok', flush=True)")

# One process per family, all at once: cupy.RawModule.compile() goes through CuPy's
# on-disk cache, which every later step (and every xdist worker) then reads.
COMPILE_ONE = ("import sys, time; t0 = time.perf_counter(); import cupy; from gpu_softmax._cuda import loader; "
               "fam = sys.argv[1]; loader.get_module(fam).compile(); "
               "print(f'compiled {fam} for sm_{cupy.cuda.Device().compute_capability} "
               "in {time.perf_counter() - t0:.1f} s', flush=True)")

# The memcheck step's pytest: every CuPy array its own cudaMalloc (set_allocator(None)),
# and torch's caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING, in its environment).
RAW_ALLOC_PYTEST = ("import sys, cupy; cupy.cuda.set_allocator(None); cupy.cuda.set_pinned_memory_allocator(None); "
                    "import pytest; sys.exit(pytest.main(sys.argv[1:]))")
RAW_ALLOC_ENV = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}


def compile_families() -> int:
    """The compile step (run as `device_check.py --compile-step`): every family at once."""
    from gpu_softmax._cuda import loader

    procs = {fam: subprocess.Popen([sys.executable, "-c", COMPILE_ONE, fam]) for fam in loader.families()}
    bad = [fam for fam, p in procs.items() if p.wait() != 0]
    print(f"compile step: {len(procs) - len(bad)} of {len(procs)} families compiled"
          + (f"; failed: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


def pytest_flags(junit: Path | None, workers: int, test_timeout: int) -> list[str]:
    """xdist workers and a per-test timeout where those plugins are installed (both are on
    the device image), and a JUnit report: a killed or hung test is still named."""
    flags = ["-q", "-rfE", "-p", "no:cacheprovider"]
    if workers > 1 and have_module("xdist"):
        flags += ["-n", str(workers), "--dist", "loadgroup"]
    if have_module("pytest_timeout"):
        # thread: a test stuck in a CUDA call never returns to Python, so no signal reaches it
        flags += ["--timeout", str(test_timeout), "--timeout-method", "thread"]
    if junit is not None:
        flags += ["--junitxml", str(junit)]
    return flags


def step_command(name: str, args, sanitizer: str | None, work: Path) -> list[str]:
    """The step's command line; `work` is the run's scratch folder (the bench output, the
    JUnit report)."""
    py = sys.executable
    tests = str(ROOT / "tests")
    cases = [py, str(ROOT / "benchmarks" / "gpu_cases.py")]
    san = [sanitizer or "compute-sanitizer", "--error-exitcode", "99", "--target-processes", "all"]
    if name == "probe":
        return san + ["--tool", "memcheck", py, "-c", PROBE_CODE]
    if name == "compile":
        return [py, str(Path(__file__).resolve()), "--compile-step"]
    if name == "tests":
        return [py, "-m", "pytest", tests, "-m", "gpu"] + pytest_flags(work / "tests-junit.xml", TEST_WORKERS,
                                                                        TEST_TIMEOUT_S)
    if name == "selfcheck":
        return [py, "-m", "gpu_softmax", "check", "--quick"]
    if name == "memcheck":
        return san + ["--tool", "memcheck", py, "-c", RAW_ALLOC_PYTEST, tests, "-m", "gpu and memcheck"] \
            + pytest_flags(None, 1, MEMCHECK_TEST_TIMEOUT_S)
    if name in ("racecheck", "synccheck"):
        return san + ["--tool", name] + cases + ["--regimes"]
    if name == "huge":
        return cases + ["--huge"]
    if name == "bench":
        cmd = [py, "-m", "gpu_softmax", "bench", "--out", str(work / "bench")]
        cmd += [] if args.full_bench else ["--quick"]
        return cmd + (["--no-compile"] if args.skip_compile else [])
    if name == "vocab_parallel":
        return [py, "-c", "import json, sys; from gpu_softmax.bench.vocab_parallel import vocab_parallel_rows; "
                          "json.dump(vocab_parallel_rows([(4096, 128256)]), sys.stdout, default=float)"]
    raise ValueError(name)


def step_env(name: str) -> dict | None:
    return RAW_ALLOC_ENV if name == "memcheck" else None


def probe_verdict(res: dict) -> str:
    """'supported', or why not: compute-sanitizer ran the tiny kernel to a clean summary."""
    out = res.get("output", "")
    if res.get("timed_out"):
        return f"unsupported: the probe did not finish in {res.get('limit_s')} s"
    if "not supported" in out.lower():  # gVisor: "Device not supported", then error 999
        return "unsupported: " + next(ln.strip(" =") for ln in out.splitlines() if "not supported" in ln.lower())
    san = parse_sanitizer(out)
    if res.get("returncode") != 0 or "sanitizer probe ok" not in out or not san["summaries"] or san["errors"]:
        return f"unsupported: exit {res.get('returncode')}, {san['summaries']} summaries, {san['errors']} errors"
    return "supported"


def parse_compile(text: str) -> dict:
    done = dict(re.findall(r"^compiled (\w+) for sm_\d+ in ([\d.]+) s$", text, re.MULTILINE))
    return {"families": {k: float(v) for k, v in done.items()}}


def parse_junit(path: Path) -> dict:
    """Counts and failed test ids from a JUnit report (pytest's), or {} when there is none."""
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"junit_error": str(exc)}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return {"junit": total, "junit_failed": failed[:200]}


def record_step(doc: dict, name: str, res: dict, work: Path) -> None:
    """Fold one step's outcome into the results document."""
    out = res.pop("output")
    step = dict(res)
    if name == "probe":
        step["verdict"] = probe_verdict(dict(res, output=out))
        step["log_tail"] = out[-1500:]
    if name == "compile":
        step.update(parse_compile(out))
        step["verdict"] = "compiled" if res["returncode"] == 0 and not res["timed_out"] else "FAILED or incomplete"
    if name in ("tests", "memcheck"):
        counts = parse_pytest_summary(out)
        step.update(counts)
        step["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+(?: \S+)*?)(?: - |$)", out, re.MULTILINE)[:200]
        step["log_tail"] = out[-3000:]
    if name == "tests":
        step.update(parse_junit(work / "tests-junit.xml"))
    if name == "memcheck":
        step["errors_pytest"] = step.pop("errors")
        step.update(parse_sanitizer(out))
    if name in ("racecheck", "synccheck"):
        step.update(parse_gpu_cases(out))
        step.update(parse_sanitizer(out))
    if name in SANITIZER_STEPS:
        step["verdict"] = sanitizer_verdict(step)
    if name == "huge":
        step.update(parse_gpu_cases(out))
        step["verdict"] = "all right" if step["cases_done"] and step["mismatched"] == 0 and not res["timed_out"] \
            else "FAILED or incomplete"
    if name == "selfcheck":
        step.update(parse_selfcheck(out))
    if name == "bench":
        path = work / "bench" / "results.json"
        if path.is_file():
            bench = json.loads(path.read_text())
            for key in ("rows", "notes", "copy_gbps", "read_gbps", "l2_bytes", "timing", "versions", "device_info",
                        "compile_seconds", "empty_launch_ms", "budget_s"):
                if key in bench:
                    doc[key] = bench[key]
            step["elapsed_s"] = bench.get("elapsed_s")
        else:
            step["log_tail"] = out[-3000:]
    if name == "vocab_parallel":
        try:
            doc["rows"] = doc.get("rows", []) + json.loads(out.strip().splitlines()[-1])
        except Exception as exc:
            step["error"] = f"{type(exc).__name__}: {exc}"
            step["log_tail"] = out[-2000:]
    doc["steps"][name] = step
    if name in ("tests", "selfcheck", "memcheck"):  # the keys benchmarks/summarize.py reads
        doc[name] = step


# ----------------------------------------------------------------------------------
# writing

_copied_out: set[str] = set()  # names this run put in $OUT (a later write may fold some into the archive)


def out_files(paths: list[Path], stem: str, scratch: Path) -> list[Path]:
    """At most MAX_OUT_FILES files for $OUT, in order of worth: what is past the limit
    (the per-panel plots of a full benchmark) travels as one archive, the last file."""
    order = {".json": 0, ".md": 1, ".log": 2, ".xml": 3}
    ranked = sorted(dict.fromkeys(paths), key=lambda p: (order.get(p.suffix, 5 if p.name != f"{stem}.png" else 4),
                                                         p.name))
    if len(ranked) <= MAX_OUT_FILES:
        return ranked
    keep, rest = ranked[:MAX_OUT_FILES - 1], ranked[MAX_OUT_FILES - 1:]
    archive = scratch / f"{stem}-more.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in rest:
            tar.add(p, arcname=p.name)
    return keep + [archive]


def copy_out(files: list[Path], out_dir: Path) -> None:
    names = {p.name for p in files}
    for stale in _copied_out - names:  # folded into the archive since the last write
        (out_dir / stale).unlink(missing_ok=True)
    for p in files:
        shutil.copy(p, out_dir / p.name)
    _copied_out.clear()
    _copied_out.update(names)


def write(doc: dict, stem: str, log_path: Path, work: Path, extra: tuple[Path, ...] = ()) -> list[Path]:
    from gpu_softmax.bench import report

    doc["total_seconds"] = round(time.perf_counter() - T_START, 1)
    paths = report.write_results(doc, RESULTS_DIR, stem) if doc.get("rows") else []
    if not paths:  # no bench rows yet: the JSON alone
        p = RESULTS_DIR / f"{stem}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        paths = [p]
    junit = work / "tests-junit.xml"
    if junit.is_file():
        paths.append(RESULTS_DIR / f"{stem}-junit.xml")
        shutil.copy(junit, paths[-1])
    if os.environ.get("OUT"):
        copy_out(out_files(paths + [log_path, *extra], stem, work), Path(os.environ["OUT"]))
    return paths


# ----------------------------------------------------------------------------------
# the run


def device_report() -> dict:
    """nvidia-smi's view of the GPU, with a timeout: a wedged driver must not hang the run."""
    if not shutil.which("nvidia-smi"):
        return {"verdict": "nvidia-smi not found"}
    cmd = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"verdict": f"nvidia-smi timed out after {NVIDIA_SMI_TIMEOUT_S} s"}
    print(p.stdout + p.stderr, flush=True)
    return {"verdict": f"exit {p.returncode}", "output": (p.stdout + p.stderr)[-2000:]}


T_START = time.perf_counter()  # reset by main(): the budget counts from the run's start, not the import


def run_steps(doc: dict, args, sanitizer: str | None, stem: str, log_path: Path, work: Path) -> None:
    """Every step in order, results written after each. The plan is fixed by the probe:
    with compute-sanitizer absent or unsupported, the tests get the sanitizer steps' time."""
    steps = plan_steps(args.skip_tests, args.full_bench, sanitizer is not None)
    doc["plan"]["steps"] = steps
    if sanitizer is None and not args.skip_tests:
        doc["steps"]["probe"] = {"verdict": NOT_RUN_ABSENT}
        doc["steps"].update({s: {"verdict": NOT_RUN_ABSENT} for s in SANITIZER_STEPS})
    with open(log_path, "w") as log:
        for i, (name, limit) in enumerate(steps):
            if name == "probe" and sanitizer is None:
                continue
            if name in SANITIZER_STEPS and doc["steps"].get(name, {}).get("verdict") == NOT_RUN_UNSUPPORTED:
                continue
            left = args.budget - (time.perf_counter() - T_START) - 10  # 10 s to write the results
            if name == "tests":  # the sanitizer steps' time, where the probe said they cannot run
                limit = dict(doc["plan"]["steps"])["tests"]
            print(f"\n=== {name} (limit {min(limit, max(0, left)):.0f} s) ===", flush=True)
            if left < 5:
                doc["steps"][name] = {"verdict": f"not run: the {args.budget:.0f} s budget was spent"}
                continue
            res = run_command(step_command(name, args, sanitizer, work), min(limit, left), log, step_env(name))
            record_step(doc, name, res, work)
            if name == "probe" and doc["steps"]["probe"]["verdict"] != "supported":
                doc["steps"].update({s: {"verdict": NOT_RUN_UNSUPPORTED} for s in SANITIZER_STEPS})
                doc["plan"]["steps"] = plan_steps(args.skip_tests, args.full_bench, sanitizer=False)
            write(doc, stem, log_path, work)


def main(argv=None) -> int:
    global T_START
    T_START = time.perf_counter()
    _copied_out.clear()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="print the steps, their limits and their sum; run nothing")
    ap.add_argument("--skip-tests", action="store_true", help="no tests, self-check, sanitizers or huge case")
    ap.add_argument("--full-bench", action="store_true",
                    help="the full benchmark plan, in a call of its own (implies --skip-tests)")
    ap.add_argument("--skip-compile", action="store_true", help="leave torch.compile out of the benchmark")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    ap.add_argument("--test-max-elements", type=int, default=1 << 22,
                    help="largest input a GPU test checks against the CPU reference (time box)")
    ap.add_argument("--quick", action="store_true", help="(the default plan; kept for old command lines)")
    ap.add_argument("--with-compile", action="store_true", help="(the default: torch.compile is timed)")
    ap.add_argument("--test-timeout", type=int, help="the tests step's limit in seconds")
    ap.add_argument("--compile-step", action="store_true", help=argparse.SUPPRESS)  # the compile step itself
    args = ap.parse_args(argv)
    args.skip_tests = args.skip_tests or args.full_bench
    if args.plan:
        print(plan_text(args.skip_tests, args.full_bench))
        return 0
    if args.compile_step:
        return compile_families()
    if args.test_timeout:
        STEP_LIMITS_S["tests"] = args.test_timeout

    from gpu_softmax.bench import identity, report
    from gpu_softmax._cuda.info import backend_info, gpu_status

    print("\n=== device ===", flush=True)
    ok, reason = gpu_status()
    info = backend_info()
    print(json.dumps({k: info[k] for k in ("devices", "cupy", "cuda_runtime", "cuda_driver", "nvrtc", "baselines")},
                     indent=1))
    smi = device_report()
    if not ok:
        print(f"device_check: no GPU ({reason}); nothing to do")
        return 2
    device = info["devices"][0]["name"]
    doc: dict = {
        "device": device, "backend": "cuda", "date": time.strftime("%Y-%m-%d"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **identity.source_identity(),
        "cupy": info["cupy"], "cuda": {"runtime": info["cuda_runtime"], "driver": info["cuda_driver"],
                                       "nvrtc": info["nvrtc"]},
        "device_info": identity.device_info(), "baselines_present": info["baselines"], "nvidia_smi": smi,
        "steps": {}, "rows": [],
    }
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-')}-{doc['date']}"
    log_path = RESULTS_DIR / f"{stem}-device_check.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sanitizer = find_sanitizer()
    steps = plan_steps(args.skip_tests, args.full_bench, sanitizer is not None)
    doc["plan"] = {"steps": steps, "worst_case_s": worst_case_seconds(steps), "budget_s": args.budget}
    os.environ["GPU_SOFTMAX_TEST_MAX_ELEMENTS"] = str(args.test_max_elements)
    work = Path(tempfile.mkdtemp(prefix="gs-device-check-"))
    run_steps(doc, args, sanitizer, stem, log_path, work)
    extra = ()
    try:  # the summary table of benchmarks/README.md, from every committed run plus this one
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import summarize

        summarize.main([])
        readme = work / "benchmarks-README.md"
        shutil.copy(ROOT / "benchmarks" / "README.md", readme)
        extra = (readme,)
    except BaseException as exc:  # never lose the results over the summary
        print(f"summarize failed: {type(exc).__name__}: {exc}")
    paths = write(doc, stem, log_path, work, extra)
    print(report.markdown_table(doc) if doc.get("rows") else "(no benchmark rows)")
    print(closing_line(doc))
    print("wrote " + ", ".join(str(p) for p in paths + [log_path]))
    return 1 if failed(doc) else 0


def closing_line(doc: dict) -> str:
    s = doc["steps"]
    parts = []
    for name in ("probe", "compile"):
        if name in s:
            parts.append(f"{name}: {s[name].get('verdict')}")
    for name in ("tests", "selfcheck"):
        if name in s and "passed" in s[name]:
            parts.append(f"{name}: {s[name]['passed']} passed, {s[name]['failed']} failed"
                         + (" (TIMED OUT)" if s[name].get("timed_out") else ""))
    for name in (*SANITIZER_STEPS, "huge"):
        if name in s:
            parts.append(f"{name}: {s[name].get('verdict')}")
    if "bench" in s:
        parts.append(f"bench: {s['bench'].get('elapsed_s')} s"
                     + (" (TIMED OUT)" if s["bench"].get("timed_out") else ""))
    parts.append(f"total {doc.get('total_seconds')} s")
    return "; ".join(parts)


def failed(doc: dict) -> bool:
    """A check failed or did not finish. A sanitizer step the host cannot run (or that is
    not installed) is no failure of ours: its verdict says so."""
    s = doc["steps"]
    if any(s.get(n, {}).get("failed") or s.get(n, {}).get("timed_out") for n in ("tests", "selfcheck")):
        return True
    if s.get("compile", {}).get("verdict", "compiled") != "compiled":
        return True
    excused = (NOT_RUN_UNSUPPORTED, NOT_RUN_ABSENT)
    if any(n in s and s[n].get("verdict") not in ("clean", "all right", *excused)
           for n in (*SANITIZER_STEPS, "huge")):
        return True
    return any(r.get("matched") is False for r in doc.get("rows", []))


if __name__ == "__main__":
    sys.exit(main())
