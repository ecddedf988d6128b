#!/usr/bin/env python3
"""The project's one device-check script: run it, in one call, whenever a GPU is lent.

From the source tree, with no install and no registry (PYTHONPATH=. is set here). Steps,
each a subprocess with its own time limit (killed with its children when it runs over),
the results file rewritten after every step so a timeout or a crash keeps what came before:

  device      the GPU, driver, CuPy/CUDA/NVRTC versions, baselines present
  tests       pytest -m gpu (inputs checked on the CPU capped by --test-max-elements)
  selfcheck   gpu-softmax check --quick
  memcheck    compute-sanitizer memcheck over the `memcheck` test subset (every forced regime)
  racecheck   compute-sanitizer racecheck over benchmarks/gpu_cases.py --regimes
  synccheck   compute-sanitizer synccheck over the same cases
  huge        benchmarks/gpu_cases.py --huge: one input past 2**31 elements
  bench       gpu-softmax bench --quick (--full-bench: the full plan, and the
              vocabulary-parallel rows)

The sum of the step limits is the run's worst case: STEP_LIMITS_S fits one 8-minute call
with a margin (checked by tests/test_device_check.py); --budget caps the whole run and
shortens the last steps' limits when earlier ones ran long. Writes
benchmarks/results/<gpu>-<date>.{json,md,png}, its log, refreshes benchmarks/README.md's
table (benchmarks/summarize.py) and copies all of them to $OUT.

    python benchmarks/device_check.py [--skip-tests] [--full-bench] [--with-compile] [--budget S]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

# Seconds each step may run (H200 actuals, 2026-11-26, warm caches: tests 79, selfcheck 8,
# memcheck 15, bench --quick 3 cases without torch.compile 67 (the host reference then)).
STEP_LIMITS_S = {"tests": 130, "selfcheck": 35, "memcheck": 45, "racecheck": 40, "synccheck": 25, "huge": 35,
                 "bench": 70}
FULL_BENCH_LIMIT_S = 300  # --full-bench: the full plan (its own budget is 280 s)
VOCAB_PARALLEL_LIMIT_S = 30
FIXED_S = 15  # start-up, the device step, writing results, the summary
CALL_LIMIT_S = 480  # the device tool's longest call: 8 minutes
DEFAULT_BUDGET_S = 400


def plan_steps(skip_tests: bool = False, full_bench: bool = False, sanitizer: bool = True) -> list[tuple[str, int]]:
    """(step, limit in seconds) in the order they run."""
    steps = []
    if not skip_tests:
        steps += [("tests", STEP_LIMITS_S["tests"]), ("selfcheck", STEP_LIMITS_S["selfcheck"])]
        if sanitizer:
            steps += [(s, STEP_LIMITS_S[s]) for s in ("memcheck", "racecheck", "synccheck")]
        steps.append(("huge", STEP_LIMITS_S["huge"]))
    if full_bench:
        steps += [("bench", FULL_BENCH_LIMIT_S), ("vocab_parallel", VOCAB_PARALLEL_LIMIT_S)]
    else:
        steps.append(("bench", STEP_LIMITS_S["bench"]))
    return steps


def worst_case_seconds(steps) -> int:
    return FIXED_S + sum(limit for _, limit in steps)


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


def run_command(cmd: list[str], limit_s: float, log) -> dict:
    """Run `cmd` in its own process group; kill the group past `limit_s`. Output to the log."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    # The steps import the package from this source tree. Set for the child only: importing
    # this module (the tests do) must not change what later subprocesses import.
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, limit_s))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    out = out or ""
    log.write(f"\n$ {' '.join(cmd)}\n{out}\n")
    log.flush()
    print(out[-4000:], flush=True)
    return {"returncode": proc.returncode, "timed_out": timed_out, "limit_s": round(limit_s),
            "seconds": round(time.perf_counter() - t0, 1), "output": out}


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/compute-sanitizer")
    return str(default) if default.exists() else None


def step_command(name: str, args, sanitizer: str | None, bench_dir: Path) -> list[str]:
    py = sys.executable
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    cases = [py, str(ROOT / "benchmarks" / "gpu_cases.py")]
    san = [sanitizer or "compute-sanitizer", "--error-exitcode", "99", "--target-processes", "all"]
    if name == "tests":
        return pytest + ["-m", "gpu"]
    if name == "selfcheck":
        return [py, "-m", "gpu_softmax", "check", "--quick"]
    if name == "memcheck":
        return san + ["--tool", "memcheck"] + pytest + ["-m", "gpu and memcheck"]
    if name in ("racecheck", "synccheck"):
        return san + ["--tool", name] + cases + ["--regimes"]
    if name == "huge":
        return cases + ["--huge"]
    if name == "bench":
        cmd = [py, "-m", "gpu_softmax", "bench", "--out", str(bench_dir)]
        cmd += [] if args.full_bench else ["--quick"]
        return cmd + (["--no-compile"] if args.skip_compile else [])
    if name == "vocab_parallel":
        return [py, "-c", "import json, sys; from gpu_softmax.bench.vocab_parallel import vocab_parallel_rows; "
                          "json.dump(vocab_parallel_rows([(4096, 128256)]), sys.stdout, default=float)"]
    raise ValueError(name)


def record_step(doc: dict, name: str, res: dict, bench_dir: Path) -> None:
    """Fold one step's outcome into the results document."""
    out = res.pop("output")
    step = dict(res)
    if name in ("tests", "memcheck"):
        counts = parse_pytest_summary(out)
        step.update(counts)
        step["failures"] = re.findall(r"^(?:FAILED|ERROR) (\S+(?: \S+)*?)(?: - |$)", out, re.MULTILINE)[:200]
        step["log_tail"] = out[-3000:]
    if name == "memcheck":
        step["errors_pytest"] = step.pop("errors")
        step.update(parse_sanitizer(out))
    if name in ("racecheck", "synccheck"):
        step.update(parse_gpu_cases(out))
        step.update(parse_sanitizer(out))
    if name in ("memcheck", "racecheck", "synccheck"):
        step["verdict"] = sanitizer_verdict(step)
    if name == "huge":
        step.update(parse_gpu_cases(out))
        step["verdict"] = "all right" if step["cases_done"] and step["mismatched"] == 0 and not res["timed_out"] \
            else "FAILED or incomplete"
    if name == "selfcheck":
        step.update(parse_selfcheck(out))
    if name == "bench":
        path = bench_dir / "results.json"
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


def write(doc: dict, stem: str, log_path: Path) -> list[Path]:
    from gpu_softmax.bench.report import write_results

    doc["total_seconds"] = round(time.perf_counter() - T_START, 1)
    paths = write_results(doc, RESULTS_DIR, stem) if doc.get("rows") else []
    if not paths:  # no bench rows yet: the JSON alone
        p = RESULTS_DIR / f"{stem}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        paths = [p]
    if os.environ.get("OUT"):
        for p in paths + [log_path]:
            shutil.copy(p, Path(os.environ["OUT"]) / p.name)
    return paths


T_START = time.perf_counter()  # reset by main(): the budget counts from the run's start, not the import


def main(argv=None) -> int:
    global T_START
    T_START = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-tests", action="store_true", help="no tests, self-check, sanitizers or huge case")
    ap.add_argument("--full-bench", action="store_true", help="the full benchmark plan (use with --skip-tests)")
    ap.add_argument("--skip-compile", action="store_true", help="leave torch.compile out of the benchmark")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run")
    ap.add_argument("--test-max-elements", type=int, default=1 << 22,
                    help="largest input a GPU test checks against the CPU reference (time box)")
    ap.add_argument("--quick", action="store_true", help="(the default plan; kept for old command lines)")
    ap.add_argument("--with-compile", action="store_true", help="(the default: torch.compile is timed)")
    ap.add_argument("--test-timeout", type=int, help="the tests step's limit in seconds")
    args = ap.parse_args(argv)
    if args.test_timeout:
        STEP_LIMITS_S["tests"] = args.test_timeout

    from gpu_softmax._cuda.info import backend_info, gpu_status
    from gpu_softmax.bench import identity, report

    print("\n=== device ===", flush=True)
    ok, reason = gpu_status()
    info = backend_info()
    print(json.dumps({k: info[k] for k in ("devices", "cupy", "cuda_runtime", "cuda_driver", "nvrtc", "baselines")},
                     indent=1))
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"])
    if not ok:
        print(f"device_check: no GPU ({reason}); nothing to do")
        return 2
    device = info["devices"][0]["name"]
    doc: dict = {
        "device": device, "backend": "cuda", "date": time.strftime("%Y-%m-%d"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **identity.source_identity(),
        "cupy": info["cupy"], "cuda": {"runtime": info["cuda_runtime"], "driver": info["cuda_driver"],
                                       "nvrtc": info["nvrtc"]},
        "device_info": identity.device_info(), "baselines_present": info["baselines"], "steps": {}, "rows": [],
    }
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-')}-{doc['date']}"
    log_path = RESULTS_DIR / f"{stem}-device_check.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sanitizer = find_sanitizer()
    steps = plan_steps(args.skip_tests, args.full_bench, sanitizer is not None)
    doc["plan"] = {"steps": steps, "worst_case_s": worst_case_seconds(steps), "budget_s": args.budget}
    if sanitizer is None and not args.skip_tests:
        doc["steps"]["sanitizers"] = {"verdict": "not run: compute-sanitizer not found"}
    os.environ["GPU_SOFTMAX_TEST_MAX_ELEMENTS"] = str(args.test_max_elements)
    bench_dir = Path(tempfile.mkdtemp(prefix="gs-bench-"))
    with open(log_path, "w") as log:
        for name, limit in steps:
            left = args.budget - (time.perf_counter() - T_START) - 10  # 10 s to write the results
            print(f"\n=== {name} (limit {min(limit, max(0, left)):.0f} s) ===", flush=True)
            if left < 5:
                doc["steps"][name] = {"verdict": f"not run: the {args.budget:.0f} s budget was spent"}
                continue
            res = run_command(step_command(name, args, sanitizer, bench_dir), min(limit, left), log)
            record_step(doc, name, res, bench_dir)
            write(doc, stem, log_path)
    try:  # the summary table of benchmarks/README.md, from every committed run plus this one
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import summarize

        summarize.main([])
        if os.environ.get("OUT"):
            shutil.copy(ROOT / "benchmarks" / "README.md", Path(os.environ["OUT"]) / "benchmarks-README.md")
    except BaseException as exc:  # never lose the results over the summary
        print(f"summarize failed: {type(exc).__name__}: {exc}")
    paths = write(doc, stem, log_path)
    print(report.markdown_table(doc) if doc.get("rows") else "(no benchmark rows)")
    print(closing_line(doc))
    print("wrote " + ", ".join(str(p) for p in paths + [log_path]))
    return 1 if failed(doc) else 0


def closing_line(doc: dict) -> str:
    s = doc["steps"]
    parts = []
    for name in ("tests", "selfcheck"):
        if name in s and "passed" in s[name]:
            parts.append(f"{name}: {s[name]['passed']} passed, {s[name]['failed']} failed"
                         + (" (TIMED OUT)" if s[name].get("timed_out") else ""))
    for name in ("memcheck", "racecheck", "synccheck", "huge"):
        if name in s:
            parts.append(f"{name}: {s[name].get('verdict')}")
    if "bench" in s:
        parts.append(f"bench: {s['bench'].get('elapsed_s')} s" + (" (TIMED OUT)" if s["bench"].get("timed_out") else ""))
    parts.append(f"total {doc.get('total_seconds')} s")
    return "; ".join(parts)


def failed(doc: dict) -> bool:
    s = doc["steps"]
    if any(s.get(n, {}).get("failed") or s.get(n, {}).get("timed_out") for n in ("tests", "selfcheck")):
        return True
    if any(n in s and s[n].get("verdict") not in ("clean", "all right") for n in ("memcheck", "racecheck", "synccheck", "huge")):
        return True
    return any(r.get("matched") is False for r in doc.get("rows", []))


if __name__ == "__main__":
    sys.exit(main())
