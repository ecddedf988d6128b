"""The command line every emulator runner shares: the suite, a replayable seed and the build directory; then one
suite run against the kernels built there, ending in the `OK <label> <suite> <n> checks` line the tests look for."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import harness  # the runners put this folder on sys.path before importing this module


def parse_runner_args(ap: argparse.ArgumentParser, argv):
    """(args, rng): ap's own arguments, then suite, --seed and --build-dir.

    The seed is printed before anything runs so that a failing run can be repeated with --seed.
    """
    ap.add_argument("suite")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "gs-emu"))
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**32)
    print(f"seed {seed}", flush=True)
    return args, np.random.default_rng(seed)


def run_suite(args, rng, family: str, make_suites, label: str, check_kernels=None) -> int:
    """Runs args.suite of make_suites(cp, module, rng, emu) on family's emulated kernels and prints the kernels it
    launched, then the OK line; check_kernels(sorted kernel names) may refuse the run before that line. Returns 0,
    the process's exit status (a failed check raises)."""
    t0 = time.time()
    cp, mod, emu = harness.setup(family, Path(args.build_dir))
    n = make_suites(cp, mod, rng, emu)[args.suite]()
    kernels = sorted({name for name, _, _ in emu.launches})
    if check_kernels is not None:
        check_kernels(kernels)
    print(f"kernels: {' '.join(kernels)}")
    print(f"OK {label} {args.suite} {n} checks in {time.time() - t0:.1f} s")
    return 0


def runner_main(argv, family: str, label: str, suites, check_kernels=None) -> int:
    """main() of a runner with the shared command line alone, whose suites(cp, module, rng) need no emulator handle."""
    args, rng = parse_runner_args(argparse.ArgumentParser(), argv)
    return run_suite(args, rng, family, lambda cp, mod, rng, _emu: suites(cp, mod, rng), label, check_kernels)
