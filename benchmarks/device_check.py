#!/usr/bin/env python3
"""The project's one device-check script: run it, in one call, whenever a GPU is lent.

From the source tree, with no install and no registry (PYTHONPATH=. is set here):
  1. prints the device;
  2. runs the GPU tests (`pytest -m gpu`) and counts passed/failed/skipped;
  3. runs the correctness self-test (`gpu-softmax check --quick`);
  4. runs compute-sanitizer memcheck on the short `memcheck` test subset, if present;
  5. benchmarks ours against the baselines present (PyTorch eager, cupyx, Liger-Kernel,
     QuACK; torch.compile with --with-compile) on the goal shapes, with the copy and read
     bandwidth of the same run, peak memory for the fused cross-entropy rows, and bfloat16
     rows through the torch bridge gpu_softmax.torch when it imports (skipped with a note
     otherwise);
  6. writes benchmarks/results/<gpu>-<date>.{json,md,png} (plus one <gpu>-<date>-<op>-<dtype>.png
     per (op, dtype)), refreshes the table of benchmarks/README.md (benchmarks/summarize.py)
     and copies all of them to $OUT.

Budget: well under 6 minutes on an H100 with an empty CuPy kernel cache; each step has
its own time limit so a hang in one still leaves the others' results.

    python benchmarks/device_check.py [--quick] [--with-compile] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")

# (op, dtypes, shapes): the shapes named in the kernel issues' goals, trimmed to fit.
BENCH_PLAN = [
    ("softmax", ["float32", "float16"], [(32768, 4096), (4096, 32768), (1024, 131072), (256, 262144), (8, 262144), (1, 1048576)]),
    ("log_softmax", ["float32"], [(4096, 32768), (1024, 131072), (8, 262144)]),
    ("softmax_backward", ["float32"], [(4096, 32768)]),
    ("cross_entropy_with_grad", ["float32", "float16"], [(8192, 32000), (4096, 128256), (2048, 262144)]),
    ("cross_entropy", ["float32"], [(4096, 128256)]),
    # torch-tensor rows: ours through gpu_softmax.torch; skipped with a note without torch or the bridge
    ("softmax", ["bfloat16"], [(4096, 32768), (8, 262144)]),
    ("cross_entropy_with_grad", ["bfloat16"], [(4096, 128256)]),
]
QUICK_PLAN = [
    ("softmax", ["float32"], [(4096, 32768), (8, 262144)]),
    ("cross_entropy_with_grad", ["float32"], [(4096, 128256)]),
]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def cuda_src_tree() -> str:
    tree = git("rev-parse", "HEAD:cuda_src")
    dirty = git("status", "--porcelain", "--", "cuda_src")
    return tree + ("-dirty" if dirty and dirty != "unknown" else "")


def step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run_pytest(marker: str, timeout: int, extra: list[str] | None = None, prefix: list[str] | None = None) -> dict:
    junit = Path(os.environ.get("TMPDIR", "/tmp")) / f"gs-junit-{marker.replace(' ', '_')}.xml"
    cmd = [*(prefix or []), sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}", str(ROOT / "tests"), *(extra or [])]
    print(" ".join(cmd), flush=True)
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "timed_out": False}
    failures: list[str] = []
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=timeout, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        counts["returncode"] = proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        counts["timed_out"] = True
    print(out[-6000:], flush=True)
    for key in ("passed", "failed", "skipped", "errors", "error"):
        m = re.search(rf"(\d+) {key}\b", out.splitlines()[-1] if out.strip() else "")
        if m:
            counts["errors" if key == "error" else key] = int(m.group(1))
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.MULTILINE)
    counts["failures"] = failures[:200]
    counts["log_tail"] = out[-3000:]
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller benchmark plan")
    ap.add_argument("--with-compile", action="store_true", help="also time torch.compile (slow to compile)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--test-timeout", type=int, default=210)
    ap.add_argument("--test-max-elements", type=int, default=1 << 22,
                    help="largest input a GPU test checks against the CPU reference (time box)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    import numpy as np

    from gpu_softmax import bench, selfcheck
    from gpu_softmax._cuda.info import backend_info, gpu_status

    t = step("device")
    ok, reason = gpu_status()
    info = backend_info()
    print(json.dumps({k: info[k] for k in ("devices", "cupy", "cuda_runtime", "cuda_driver", "nvrtc", "baselines")}, indent=1))
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"])
    if not ok:
        print(f"device_check: no GPU ({reason}); nothing to do")
        return 2
    device = info["devices"][0]["name"]
    doc: dict = {
        "device": device,
        "date": time.strftime("%Y-%m-%d"),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git("rev-parse", "HEAD"),
        "cuda_src_tree": cuda_src_tree(),
        "cupy": info["cupy"],
        "cuda": {"runtime": info["cuda_runtime"], "driver": info["cuda_driver"], "nvrtc": info["nvrtc"]},
        "numpy": np.__version__,
        "baselines_present": info["baselines"],
    }

    if args.skip_tests:
        doc["tests"] = {"passed": 0, "failed": 0, "skipped": 0, "note": "--skip-tests"}
    else:
        t = step("pytest -m gpu")
        os.environ["GPU_SOFTMAX_TEST_MAX_ELEMENTS"] = str(args.test_max_elements)
        doc["tests"] = run_pytest("gpu", args.test_timeout)
        doc["tests"]["max_elements"] = args.test_max_elements
        doc["tests"]["seconds"] = round(time.perf_counter() - t, 1)

    t = step("gpu-softmax check --quick")
    results = selfcheck.run(quick=True)
    print(selfcheck.format_table([r for r in results if r.status != "pass"]) or "all passed")
    doc["selfcheck"] = {
        "passed": sum(r.status == "pass" for r in results),
        "failed": sum(r.status == "FAIL" for r in results),
        "skipped": sum(r.status == "skip" for r in results),
        "failures": [f"{r.case}: {r.detail}" for r in results if r.status == "FAIL"][:100],
        "seconds": round(time.perf_counter() - t, 1),
    }
    print({k: v for k, v in doc["selfcheck"].items() if k != "failures"})

    sanitizer = shutil.which("compute-sanitizer") or (
        "/usr/local/cuda/bin/compute-sanitizer" if Path("/usr/local/cuda/bin/compute-sanitizer").exists() else None
    )
    if sanitizer and not args.skip_tests:
        t = step("compute-sanitizer memcheck (pytest -m 'gpu and memcheck')")
        r = run_pytest("gpu and memcheck", 90, prefix=[sanitizer, "--tool", "memcheck", "--error-exitcode", "99",
                                                        "--target-processes", "all"])
        errors = re.findall(r"ERROR SUMMARY: (\d+) error", r.get("log_tail", ""))
        doc["memcheck"] = {
            "returncode": r.get("returncode"),
            "error_summary": [int(e) for e in errors],
            "passed": r["passed"], "failed": r["failed"], "timed_out": r["timed_out"],
            "verdict": "clean" if r.get("returncode") == 0 and not r["timed_out"] and r["passed"] else "errors or incomplete",
        }
    else:
        doc["memcheck"] = {"verdict": "not run", "why": "compute-sanitizer not found" if not sanitizer else "--skip-tests"}

    t = step("benchmark")
    plan = QUICK_PLAN if args.quick else BENCH_PLAN
    rows = []
    notes: set[str] = set()
    copy = None
    for op, dtypes, shapes in plan:
        sub = bench.run([op], dtypes, shapes, quick=args.quick, backend="cuda", bandwidth=copy,
                        skip_impls=() if args.with_compile else ("torch.compile",),
                        progress=lambda m: print("  bench", m, flush=True))
        copy = copy or {"copy_gbps": sub["copy_gbps"], "read_gbps": sub["read_gbps"]}
        rows += sub["rows"]
        notes.update(sub.get("notes", []))
        for k in ("l2_bytes", "timing", "versions"):
            doc.setdefault(k, sub.get(k))
    if not args.quick:
        try:  # issue 7's row: one rank's share of the vocabulary-parallel loss against the one-GPU loss
            print("  bench vocab_parallel_cross_entropy", flush=True)
            rows += bench.vocab_parallel_rows([(4096, 128256)], bandwidth=copy)
        except Exception as exc:
            notes.add(f"vocab_parallel_cross_entropy: {type(exc).__name__}: {str(exc)[:200]}")
    doc.update(copy or {})
    doc["notes"] = sorted(notes)
    doc["backend"] = "cuda"
    doc["rows"] = rows
    doc["bench_seconds"] = round(time.perf_counter() - t, 1)
    doc["total_seconds"] = round(time.perf_counter() - t_start, 1)

    safe = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")
    stem = f"{safe}-{doc['date']}"
    out_dir = ROOT / "benchmarks" / "results"
    paths = bench.write_results(doc, out_dir, stem)
    try:  # the summary table of benchmarks/README.md, from every committed run plus this one
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import summarize

        summarize.main([])
        readme = ROOT / "benchmarks" / "README.md"
    except BaseException as exc:  # never lose the results over the summary
        print(f"summarize failed: {type(exc).__name__}: {exc}")
        readme = None
    if os.environ.get("OUT"):
        for p in paths:
            shutil.copy(p, Path(os.environ["OUT"]) / p.name)
        if readme is not None and readme.is_file():
            shutil.copy(readme, Path(os.environ["OUT"]) / "benchmarks-README.md")
    print(bench.markdown_table(doc))
    print(f"tests: {doc['tests'].get('passed')} passed, {doc['tests'].get('failed')} failed, "
          f"{doc['tests'].get('skipped')} skipped; selfcheck: {doc['selfcheck']['passed']} passed, "
          f"{doc['selfcheck']['failed']} failed; memcheck: {doc['memcheck']['verdict']}; "
          f"copy {doc.get('copy_gbps', 0):.0f} GB/s; total {doc['total_seconds']} s")
    print("wrote " + ", ".join(str(p) for p in paths))
    failed = doc["tests"].get("failed", 0) or doc["selfcheck"]["failed"] or doc["tests"].get("errors", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
