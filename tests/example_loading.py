"""Loading a script of examples/ as a module, to call its main() in-process (imported by the test modules beside it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str, monkeypatch):
    """examples/<name>.py, executed as a module named name."""
    # A script run as `python examples/x.py` finds its shared modules because its folder leads sys.path; loading
    # it from a file here needs the same.
    monkeypatch.syspath_prepend(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
