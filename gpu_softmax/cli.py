"""`gpu-softmax` command line (also `python -m gpu_softmax`).

    gpu-softmax bench [--op ...] [--dtype ...] [--shapes 4096x32768,...] [--quick] [--out DIR]
    gpu-softmax check
    gpu-softmax info
    gpu-softmax compile-check [--arch 80,90]

Every command says which backend ran: the CUDA kernels when CuPy sees a GPU, the
NumPy reference otherwise (with the line to install the GPU one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def _backend_banner() -> str:
    from gpu_softmax._cuda.info import INSTALL_HINT, device_name, gpu_status

    ok, reason = gpu_status()
    if ok:
        import cupy

        return f"backend: CUDA kernels on {device_name(cupy.cuda.Device().id)} ({reason})"
    return f"backend: NumPy reference on the CPU -- no GPU found: {reason}.\n  {INSTALL_HINT}"


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
    return shapes


def cmd_info(args) -> int:
    import gpu_softmax

    info = gpu_softmax.backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(_backend_banner())
    for k, v in info.items():
        print(f"  {k:<15} {v}")
    return 0


def cmd_bench(args) -> int:
    from gpu_softmax import bench

    print(_backend_banner(), flush=True)
    ops = args.op.split(",") if args.op else (["softmax", "log_softmax", "cross_entropy_with_grad"])
    unknown = [o for o in ops if o not in bench.OPS]
    if unknown:
        raise SystemExit(f"unknown --op {unknown}; choose from {', '.join(bench.OPS)}")
    dtypes = args.dtype.split(",") if args.dtype else ["float32", "float16"]
    for d in dtypes:
        if d not in ("float16", "float32", "float64"):
            raise SystemExit(f"unknown --dtype {d!r}; choose from float16, float32, float64")

    progress = _progress_printer()
    doc = bench.run(ops, dtypes, _parse_shapes(args.shapes), quick=args.quick, progress=progress)
    progress.close()
    paths = bench.write_results(doc, Path(args.out))
    print(bench.markdown_table(doc))
    print("wrote " + ", ".join(str(p) for p in paths))
    if doc["backend"] == "numpy":
        from gpu_softmax._cuda.info import INSTALL_HINT

        print(f"note: these are NumPy reference timings on the CPU, not GPU numbers; {INSTALL_HINT}")
    bad = [r for r in doc["rows"] if r["matched"] is False]
    return 1 if bad else 0


def _progress_printer():
    class P:
        def __init__(self):
            self.bar = None
            try:
                from rich.console import Console

                self.console = Console(stderr=True)
                self.status = self.console.status("benchmarking")
                self.status.start()
            except Exception:
                self.console = None

        def __call__(self, msg: str):
            if self.console is not None:
                self.status.update(f"benchmarking {msg}")
            else:
                print(f"  ... {msg}", file=sys.stderr, flush=True)

        def close(self):
            if self.console is not None:
                self.status.stop()

    return P()


def cmd_check(args) -> int:
    """Ours against the reference on many shapes and dtypes; exit 1 on any failure."""
    from gpu_softmax import selfcheck

    print(_backend_banner(), flush=True)
    results = selfcheck.run(quick=args.quick)
    print(selfcheck.format_table(results))
    failed = [r for r in results if r.status == "FAIL"]
    print(f"{sum(r.status == 'pass' for r in results)} passed, {len(failed)} failed, "
          f"{sum(r.status == 'skip' for r in results)} skipped")
    return 1 if failed else 0


def cmd_compile_check(args) -> int:
    from gpu_softmax._cuda import compile_check as cc

    archs = tuple(int(a) for a in args.arch.split(","))
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
    return 1 if probs else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-softmax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time our kernels against the baselines present")
    b.add_argument("--op", help="comma-separated ops (default softmax,log_softmax,cross_entropy_with_grad)")
    b.add_argument("--dtype", help="comma-separated dtypes (default float32,float16)")
    b.add_argument("--shapes", help="comma-separated ROWSxCOLS (default: the issue's goal shapes)")
    b.add_argument("--quick", action="store_true", help="few shapes, few repetitions")
    b.add_argument("--out", default="bench-results", help="directory for results.json/.md/.png")
    b.set_defaults(func=cmd_bench)
    c = sub.add_parser("check", help="correctness self-test against the reference")
    c.add_argument("--quick", action="store_true")
    c.set_defaults(func=cmd_check)
    i = sub.add_parser("info", help="device, CUDA, CuPy, NVRTC, cache, baselines")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    k = sub.add_parser("compile-check", help="compile every kernel with NVRTC; report registers and spills")
    k.add_argument("--arch", default="80,90")
    k.set_defaults(func=cmd_compile_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
