"""gpu-softmax command line (also python -m gpu_softmax).

    gpu-softmax bench [--op ...] [--dtype ...] [--shapes 4096x32768,...] [--quick] [--out DIR]
                      [--reps N] [--skip torch.compile,...] [--no-compile] [--no-baselines]
    gpu-softmax check [--quick] [--compile]
    gpu-softmax info [--json]
    gpu-softmax compile-check [--arch 80,90]

Every command says which backend ran: the CUDA kernels when CuPy sees a GPU, the
NumPy reference otherwise (and what the CUDA kernels need).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path



def _backend_banner() -> str:
    from gpu_softmax._cuda.info import device_name, gpu_status, install_hint

    ok, reason = gpu_status()
    if ok:
        import cupy

        return f"backend: CUDA kernels on {device_name(cupy.cuda.Device().id)} ({reason})"
    return f"backend: {reason}: using the NumPy reference on the CPU\n  {install_hint()}"


def _parse_shapes(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    shapes = []
    for part in text.split(","):
        try:
            r, c = part.lower().split("x")
            shapes.append((int(r), int(c)))
        except ValueError:
            raise SystemExit(f"bad --shapes entry {part!r}: expected ROWSxCOLS, e.g. 4096x32768")
        if shapes[-1][0] < 1 or shapes[-1][1] < 1:
            raise SystemExit(f"bad --shapes entry {part!r}: rows and columns must be at least 1")
    return shapes


def cmd_info(args) -> int:
    import gpu_softmax
    from gpu_softmax._cuda.compile_check import unsupported_note
    from gpu_softmax._cuda.info import cuda_version_warnings, cuda_versions, torch_bridge_status
    from gpu_softmax.bench.identity import package_versions

    info = gpu_softmax.backend_info()
    info["cuda_warnings"] = cuda_version_warnings(**cuda_versions())
    info["baseline_versions"] = package_versions()
    # Whether the bridge imports, not whether its file exists (it needs torch).
    bridge_ok, info["torch_bridge"] = torch_bridge_status()
    info["baseline_versions"]["gpu_softmax.torch"] = info["baseline_versions"]["torch"] if bridge_ok else None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(_backend_banner())
    for warning in info["cuda_warnings"]:
        print(f"  warning: {warning}")
    for k, v in info.items():
        if k in ("baselines", "baseline_versions", "devices", "cuda_warnings"):
            continue
        print(f"  {k:<15} {v}")
    for d in info.get("devices") or []:
        arch = int(d["compute_capability"].replace(".", ""))
        note = unsupported_note(arch)
        print(f"  device {d['index']:<8} {d['name']}, sm_{arch}, {d['multiprocessors']} SMs, {d['memory_gib']} GiB"
              + (f"; warning: {note}" if note else ""))
    print("  baselines and bench tools:")
    for name, ver in info["baseline_versions"].items():
        if name != "gpu_softmax.torch":  # listed above as torch_bridge
            print(f"    {name:<18} {ver or 'not installed'}")
    return 0


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _process_age_s() -> float:
    """Seconds since this process started (interpreter start and imports included); 0 where
    unknown or where the process is older than a command (main() called in-process)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        return 0.0
    return age if 0 <= age < 10 else 0.0


def cmd_bench(args) -> int:
    t_command = time.perf_counter() - _process_age_s()  # the wall time the user waits, not the loop's alone
    from gpu_softmax._cuda.info import gpu_status, install_hint
    from gpu_softmax.bench import cases, estimate, report, runner

    ops = _split(args.op)
    if cases.LINEAR_CE_OP in ops:
        return _bench_linear_ce(args, ops)
    unknown = [o for o in ops if o not in cases.OPS]
    if unknown:
        raise SystemExit(f"unknown --op {unknown}; choose from {', '.join(cases.OPS)}")
    dtypes = _split(args.dtype)
    for d in dtypes:
        if d not in cases.DTYPES:
            raise SystemExit(f"unknown --dtype {d!r}; choose from {', '.join(cases.DTYPES)}")
    skip = _split(args.skip)
    bad = [s for s in skip if s not in cases.BASELINE_IMPLS + ("gpu_softmax.torch",)]
    if bad:
        raise SystemExit(f"unknown --skip {bad}; choose from {', '.join(cases.BASELINE_IMPLS)}, gpu_softmax.torch")
    if args.no_compile:
        skip.append("torch.compile")
    shapes = _parse_shapes(args.shapes)
    if args.reps is not None and args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    if args.dry_run:  # the GPU plan and what it should cost, whatever this machine has
        plan = cases.chosen_cases(ops, dtypes, shapes, args.quick, "cuda")
        present = () if args.no_baselines else tuple(b for b in cases.BASELINE_IMPLS if b not in skip)
        print(estimate.format_estimate(estimate.estimate(plan, args.reps, args.quick, present), plan))
        return 0

    print(_backend_banner(), flush=True)
    backend = "cuda" if gpu_status()[0] else "numpy"
    if backend == "numpy":
        print("No GPU: timing the NumPy reference on the CPU on small shapes instead (rows labelled "
              f"{cases.REFERENCE_IMPL!r}; these are not GPU numbers).", flush=True)
    progress = _progress()
    try:
        doc = runner.run(ops, dtypes, shapes, quick=args.quick, backend=backend, progress=progress,
                        with_baselines=not args.no_baselines, skip_impls=tuple(skip), reps=args.reps,
                        budget_s=args.budget)
    finally:
        progress.close()
    paths = report.write_results(doc, Path(args.out))
    _print_table(doc)
    for note in doc.get("notes", []):
        print(f"skipped: {note}")
    why = report.no_plot_reason(doc)
    if why:
        print(f"no plot: {why}")
    print("wrote " + ", ".join(str(p) for p in paths))
    print(f"elapsed {time.perf_counter() - t_command:.1f} s (the benchmark loop {doc['elapsed_s']:.1f} s)"
          + (f"; {report.compile_summary(doc)}" if doc.get("compile_seconds") else ""))
    if doc["backend"] == "numpy":
        print(f"note: these rows timed the NumPy reference on the CPU, not GPU kernels; {install_hint()}")
    bad_rows = [r for r in doc["rows"] if r["matched"] is False]
    for r in bad_rows:
        print(f"MISMATCH: {r['op']} {r['impl']} {r['dtype']} {r['shape'][0]}x{r['shape'][1]}: {r['note']}")
    return 1 if bad_rows else 0


def _bench_linear_ce(args, ops) -> int:
    """--op linear_cross_entropy: its own (N, H, V) training-step rows (GPU only), in OUT/linear_cross_entropy.*."""
    from gpu_softmax.bench import baselines, cases

    if ops != [cases.LINEAR_CE_OP]:
        raise SystemExit(f"--op {cases.LINEAR_CE_OP} runs alone (its rows are (N, H, V) training steps)")
    shapes = cases.QUICK_LINEAR_CE_SHAPES if args.quick else cases.LINEAR_CE_SHAPES
    try:
        doc = baselines.linear_ce_rows(shapes, reps=args.reps or 10, skip_impls=tuple(_split(args.skip)))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "linear_cross_entropy.json").write_text(json.dumps(doc, indent=1))
    text = baselines.linear_ce_markdown(doc)
    (out / "linear_cross_entropy.md").write_text(text + "\n")
    print(text)
    return 0


def _print_table(doc: dict) -> None:
    """The results on the terminal: a rich table when rich is installed, markdown otherwise."""
    from gpu_softmax.bench.goals import evaluate_goals
    from gpu_softmax.bench.report import markdown_table, table

    try:
        from rich.console import Console
        from rich.table import Table
    except Exception:
        print(markdown_table(doc))
        return
    console = Console(width=None if sys.stdout.isatty() else 220)
    t = Table(title=f"{doc.get('device')} ({doc.get('backend')} backend), copy {doc.get('copy_gbps', 0):.1f} GB/s, "
                    f"read {doc.get('read_gbps', 0):.1f} GB/s")
    header, cells_all = table(doc)  # without the columns no row fills
    for h in header:
        t.add_column(h, overflow="fold")
    for r, cells in zip(doc["rows"], cells_all):
        style = "red" if r["matched"] is False else ("bold" if r["impl"] == "gpu_softmax" else None)
        t.add_row(*cells, style=style)
    console.print(t)
    goals = evaluate_goals(doc) if doc.get("backend") == "cuda" else []
    if goals:
        g = Table(title="goals")
        for h in ("goal", "op", "dtype", "shape", "ours", "target", "met"):
            g.add_column(h)
        for x in goals:
            unit = "x" if x["metric"].startswith("speedup") else "%"
            val = "" if x["value"] is None else f"{x['value']:.2f}{unit}"
            met = "n/a" if x["met"] is None else ("yes" if x["met"] else "NO")
            g.add_row(x["goal"], x["op"], x["dtype"], f"{x['shape'][0]}x{x['shape'][1]}", val,
                      f"{x['target']:g}{unit}", met, style=None if x["met"] is not False else "red")
        console.print(g)


class _PlainProgress:
    """Progress on stderr without rich or tqdm: one line per case."""

    def __init__(self):
        self.total = 0
        self.i = 0

    def start(self, total: int) -> None:
        self.total = total

    def __call__(self, msg: str) -> None:
        self.i += 1
        print(f"  [{self.i}/{self.total or '?'}] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _RichProgress(_PlainProgress):
    def __init__(self):
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
        self.task = None

    def start(self, total: int) -> None:
        self.total = total
        self.progress.start()
        self.task = self.progress.add_task("", total=total)

    def __call__(self, msg: str) -> None:
        if self.task is None:
            self.start(0)
        if self.i:
            self.progress.advance(self.task)
        self.i += 1
        self.progress.update(self.task, description=msg)

    def close(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.total)
            self.progress.stop()
            self.task = None


class _TqdmProgress(_PlainProgress):
    def __init__(self):
        super().__init__()
        import tqdm  # noqa: F401

        self.bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.total = total
        self.bar = tqdm(total=total, desc="bench", file=sys.stderr)

    def __call__(self, msg: str) -> None:
        if self.bar is None:
            self.start(0)
        if self.i:
            self.bar.update(1)
        self.i += 1
        self.bar.set_postfix_str(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
            self.bar = None


def _progress():
    """A progress bar: rich when installed, else tqdm, else one plain line per case
    (also when stderr is not a terminal, so logs stay readable)."""
    if sys.stderr.isatty():
        for cls in (_RichProgress, _TqdmProgress):
            try:
                return cls()
            except Exception:
                continue
    return _PlainProgress()


class _TickingProgress:
    """Progress lines on stderr, plus a line every `every_s` seconds while one step runs on
    (a single NVRTC compile can take half a minute), so that no silence reads as a hang."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.step = None
        self.step_started = self.last_line = 0.0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()

    def __call__(self, msg: str) -> None:
        with self.lock:
            self.step, self.step_started = msg, time.monotonic()
            self.last_line = self.step_started
            print(f"  {msg}", file=sys.stderr, flush=True)

    def _tick(self) -> None:
        while not self.done.wait(min(0.5, self.every_s / 4)):
            with self.lock:
                now = time.monotonic()
                if self.step is not None and now - self.last_line >= self.every_s:
                    print(f"  ... {self.step}: {now - self.step_started:.0f} s so far", file=sys.stderr, flush=True)
                    self.last_line = now

    def close(self) -> None:
        self.done.set()
        self.thread.join()


def cmd_check(args) -> int:
    """Ours against the reference on many shapes and dtypes; exit 1 on any failure."""
    from gpu_softmax import selfcheck
    from gpu_softmax._cuda import compile_check as cc
    from gpu_softmax._cuda.info import gpu_status

    print(_backend_banner(), flush=True)
    if not gpu_status()[0]:  # said before anything slow starts
        where = ", ".join(f"sm_{a}" for a in (cc.ARCHS[-1:] if args.quick else cc.ARCHS))
        compile_plan = ("compiling every kernel" if args.compile else "add --compile to also compile every kernel")
        print(f"No GPU: the CUDA kernels cannot run here, so this checks the NumPy reference only; {compile_plan} "
              f"with NVRTC for {where} (about 20-45 s per architecture).", flush=True)
    progress = _TickingProgress()
    try:
        results = selfcheck.run(quick=args.quick, progress=progress, compile_without_gpu=args.compile)
    finally:
        progress.close()
    print(selfcheck.format_table(results))
    failed = [r for r in results if r.status == "FAIL"]
    print(f"{sum(r.status == 'pass' for r in results)} passed, {len(failed)} failed, "
          f"{sum(r.status == 'skip' for r in results)} skipped")
    return 1 if failed else 0


def cmd_compile_check(args) -> int:
    from gpu_softmax._cuda import compile_check as cc

    try:
        archs = cc.parse_archs(args.arch)
    except ValueError as exc:
        raise SystemExit(f"compile-check: {exc}")
    notes = [note for note in map(cc.unsupported_note, archs) if note]
    for note in notes:
        print(f"note: {note}", flush=True)
    try:
        reports = cc.run_all(archs)
    except cc.NvrtcUnavailable as exc:
        print(f"compile-check: {exc}")
        return 1
    print(cc.format_table(reports))
    probs = [p for r in reports for p in cc.problems(r)]
    for p in probs:
        print("PROBLEM:", p)
    print("compile-check: " + ("clean" if not probs else f"{len(probs)} problem(s)"))
    if probs and notes:
        print("compile-check: " + "; ".join(notes))
    return 1 if probs else 0


def _shapes_help() -> str:
    from gpu_softmax.bench.cases import default_shapes

    def fmt(op: str, backend: str) -> str:
        return ", ".join(f"{r}x{c}" for r, c in default_shapes(op, backend, quick=False))

    return ("comma-separated ROWSxCOLS, each a 2-D input of ROWS rows of COLS classes (softmax over COLS), "
            f"e.g. 4096x32768,8x262144. Default on a GPU: the performance goals' shapes, {fmt('softmax', 'cuda')} "
            f"for the softmax family and {fmt('cross_entropy_with_grad', 'cuda')} for cross entropy (fewer with "
            f"--quick); without a GPU: {fmt('softmax', 'numpy')}")


def build_parser() -> argparse.ArgumentParser:
    from gpu_softmax import __version__
    from gpu_softmax._cuda.compile_check import SUPPORTED

    p = argparse.ArgumentParser(prog="gpu-softmax", description=f"{__doc__}\nSupported GPUs: {SUPPORTED}.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="{bench,check,info,compile-check}")
    b = sub.add_parser("bench", help="time our kernels against the baselines present")
    b.add_argument("--op", help="comma-separated ops (default softmax,log_softmax,cross_entropy_with_grad)")
    b.add_argument("--dtype", help="comma-separated dtypes: float32, float16, float64, bfloat16 (torch rows; "
                                   "ours through gpu_softmax.torch) (default float32,float16)")
    b.add_argument("--shapes", help=_shapes_help())
    b.add_argument("--quick", action="store_true",
                   help="three goal cases (softmax 4096x32768 and 8x262144, training-step cross entropy "
                        "4096x128256, float32) and 10 repetitions: about a minute on a GPU")
    b.add_argument("--out", default="bench-results", help="directory for results.json/.md/.png")
    b.add_argument("--reps", type=int, help="timed calls per row (default: 30 on a GPU, 10 with --quick; "
                                            "3 without a GPU, where the NumPy reference is timed)")
    b.add_argument("--skip", help="comma-separated baselines not to time: torch, torch.compile, cupyx, liger, quack")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes a while)")
    b.add_argument("--no-baselines", action="store_true", help="time ours only")
    b.add_argument("--budget", type=float, help="seconds after which no new case starts (default 50 with "
                                                "--quick, 280 without); later cases get a row saying so")
    b.add_argument("--dry-run", action="store_true",
                   help="print the GPU plan and its estimated time (counts of calls, bytes, compiles); run nothing")
    b.set_defaults(func=cmd_bench)
    c = sub.add_parser("check", help="correctness self-test against the reference")
    c.add_argument("--quick", action="store_true",
                   help="fewer cases (3-row inputs of 5 lengths); with --compile and no GPU, compile for one "
                        "architecture only")
    c.add_argument("--compile", action="store_true",
                   help="without a GPU, also compile every kernel with NVRTC (tens of seconds; skipped otherwise); "
                        "on a GPU the kernels are compiled and run anyway")
    c.set_defaults(func=cmd_check)
    i = sub.add_parser("info", help="device, CUDA, CuPy, NVRTC, cache, baselines")
    i.add_argument("--json", action="store_true", help="print the same as one JSON object")
    i.set_defaults(func=cmd_info)
    k = sub.add_parser("compile-check", help="compile every kernel with NVRTC; report registers and spills")
    k.add_argument("--arch", default="80,90", help=f"comma-separated SM architectures (default 80,90); the kernels "
                                                   f"support {SUPPORTED}")
    k.set_defaults(func=cmd_compile_check)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:  # no command: say what there is
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
