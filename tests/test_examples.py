"""The training examples run a few epochs on the CPU and their loss falls; their extra installs what they need."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from example_loading import EXAMPLES, load_example

ROOT = Path(__file__).resolve().parent.parent


def example_scripts() -> list[Path]:
    """The runnable examples; a leading underscore marks a module they share, not an example."""
    return sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("name, needs", [("train_digits_cupy", ["sklearn"]), ("train_digits_torch", ["sklearn", "torch"])])
def test_digits_example_trains(name, needs, capsys, monkeypatch):
    for module in needs:
        pytest.importorskip(module)
    result = load_example(name, monkeypatch).main(["--epochs", "3"])
    out = capsys.readouterr().out
    assert "computing with" in out and "test accuracy" in out
    assert len(result["losses"]) == 3
    assert result["losses"][-1] < result["losses"][0]
    assert result["accuracy"] > 0.8


@pytest.mark.parametrize("script", [p.name for p in example_scripts() if p.name.startswith("train_digits")])
def test_digits_example_runs_as_a_script_from_another_folder(script, tmp_path):
    # --help is enough to show the script found its shared module (imported before argparse runs) without
    # examples/ being the working directory.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--label-smoothing" in done.stdout


# Import name -> the distribution that provides it, for what the examples import.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "torch": "torch", "cupy": "cupy-cuda12x", "numpy": "numpy"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    local = {p.stem for p in EXAMPLES.glob("*.py")}
    return names - set(sys.stdlib_module_names) - {"__future__", "gpu_softmax"} - local


def extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return meta["optional-dependencies"] | {"": meta["dependencies"]}


def test_examples_extra_installs_what_the_examples_import():
    ex = extras()
    have = {re.match(r"[\w\-]+", req).group(0) for req in ex["examples"] + ex[""] + ex["cuda12x"]}
    for path in sorted(EXAMPLES.glob("*.py")):  # the shared modules too: a script needs what they import
        for mod in imported_modules(path):
            assert DISTRIBUTIONS.get(mod) in have, f"{path.name} imports {mod}: add it to the examples extra"


def test_readme_says_how_to_run_every_example():
    readme = (ROOT / "README.md").read_text()
    install = re.search(r'pip install (?:-e )?"\.\[([\w,]+)\]"', readme[readme.index("## Examples"):])
    assert install and "examples" in install.group(1).split(","), "README installs the examples extra"
    for path in example_scripts():
        assert f"python examples/{path.name}" in readme, path.name
