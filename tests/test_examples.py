"""The training examples run a few epochs on the CPU and their loss falls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cupy_flavour_trains(capsys):
    pytest.importorskip("sklearn")
    result = load("train_digits_cupy").main(["--epochs", "3"])
    out = capsys.readouterr().out
    assert "computing with" in out and "test accuracy" in out
    assert len(result["losses"]) == 3
    assert result["losses"][-1] < result["losses"][0]
    assert result["accuracy"] > 0.8


def test_torch_flavour_trains(capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    result = load("train_digits_torch").main(["--epochs", "3"])
    out = capsys.readouterr().out
    assert "computing with" in out and "test accuracy" in out
    assert len(result["losses"]) == 3
    assert result["losses"][-1] < result["losses"][0]
    assert result["accuracy"] > 0.8
