"""Starting an emulator runner (tests/emulator/run*.py) as every emulated test does: in a fresh interpreter, since
the runner installs a fake `cupy`, on the session's shared build directory (imported by the test modules beside it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EMULATOR = Path(__file__).resolve().parent / "emulator"


def assert_runner_ok(script: str, *args: str, build_dir: Path, ok: str, timeout: int = 1200) -> str:
    """The output of tests/emulator/<script> run with args; fails with its tail unless it exits 0 and prints ok."""
    p = subprocess.run([sys.executable, str(EMULATOR / script), *args, "--build-dir", str(build_dir)],
                       capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    assert ok in out, out[-8000:]
    return out
