"""The framework's shape, checked on the CPU: options threaded as one object, the torch
bridge's layout, the host-overhead benchmark's JSON (its keys, not its speed)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_softmax.options import DEFAULT, OP_ARG_COUNT, OPTION_NAMES, CEOptions

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpu_softmax"
MAX_LABEL_SMOOTHING_FUNCTIONS = 10


def _functions_taking(name: str) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                if name in [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_few_functions_take_label_smoothing_by_name():
    # The public functions and CEOptions.checked; everything below them takes the options object.
    found = _functions_taking("label_smoothing")
    assert 0 < len(found) <= MAX_LABEL_SMOOTHING_FUNCTIONS, found


def test_op_args_round_trip_in_field_order():
    opts = CEOptions.checked(ignore_index=3, label_smoothing=0.25, reduction="sum", z_loss=1e-4,
                             logit_softcap=30.0, validate=False)
    assert len(opts.op_args()) == OP_ARG_COUNT == len(OPTION_NAMES)
    assert CEOptions.from_op_args(opts.op_args()) == opts
    assert CEOptions.from_op_args(DEFAULT.op_args()) == DEFAULT


def test_unknown_option_is_named():
    from gpu_softmax import reference

    import numpy as np

    with pytest.raises(TypeError, match=r"cross_entropy\(\) got unexpected option\(s\) label_smoothin\b"):
        reference.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), label_smoothin=0.1)


def test_torch_bridge_is_a_package_without_a_circle():
    torch_dir = PACKAGE / "torch"
    assert {p.name for p in torch_dir.glob("*.py")} >= {
        "__init__.py", "_bridge.py", "_ops.py", "_autograd.py", "functional.py", "modules.py", "linear.py",
        "parallel.py"}
    for path in torch_dir.glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                # `from . import x`: never the package itself re-exporting what imports it
                assert all(a.name != "__init__" for a in node.names), path


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if "_cuda" not in p.parts and p.name != "bench.py"
            and (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_host_overhead_writes_the_figures_as_json(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "host.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--calls", "3", "--fake-cupy",
                    "--json", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    figures = json.loads(out.read_text())
    for key in ("softmax_us", "torch_ce_fwd_bwd_us", "torch_reference_ce_fwd_bwd_us"):
        assert isinstance(figures[key], float) and figures[key] > 0, (key, figures.get(key))
