"""The command line every emulator runner shares: the suite, a replayable seed and the build directory."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


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
