"""Messages for the mistakes a new user makes first, on every front end that shares the check."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import gpu_softmax as gs
from gpu_softmax import reference

FLOAT_IDS = r"a float target is read as class probabilities, and class probabilities must have logits' shape, \(4, 10\)"


@pytest.mark.parametrize("fn", [gs.cross_entropy, reference.cross_entropy, gs.cross_entropy_with_grad])
def test_float_class_ids_are_told_to_be_integers_with_the_cast(fn):
    logits = np.zeros((4, 10), np.float32)
    ids_as_floats = np.array([3.0, 1.0, 0.0, 9.0])  # labels loaded as float64: the common case
    with pytest.raises(ValueError, match=FLOAT_IDS) as exc:
        fn(logits, ids_as_floats)
    msg = str(exc.value)
    assert msg.startswith("target has shape (4,): ")
    assert "its shape is that of class indices: pass them as integers, target.astype(np.int64)" in msg
    # ... and the cast it names gives what was meant.
    fixed = fn(logits, ids_as_floats.astype(np.int64))
    loss = fixed[0] if isinstance(fixed, tuple) else fixed
    assert np.isclose(float(loss), np.log(10.0))  # uniform logits over 10 classes


def test_float_target_of_another_shape_still_says_indices_must_be_integers():
    with pytest.raises(ValueError, match=FLOAT_IDS) as exc:
        gs.cross_entropy(np.zeros((4, 10)), np.zeros((4, 3)))
    assert "class indices must be integers: pass them as integers" in str(exc.value)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_bridge_float_class_ids_get_the_same_message_with_torch_cast():
    import torch

    import gpu_softmax.torch as gst

    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.zeros(4, 10, dtype=dtype, requires_grad=True)
        with pytest.raises(ValueError, match=FLOAT_IDS) as exc:
            gst.cross_entropy(logits, torch.tensor([3.0, 1.0, 0.0, 9.0], dtype=dtype))
        assert "(torch: target.long())" in str(exc.value)
    assert torch.isfinite(gst.cross_entropy(torch.zeros(4, 10), torch.tensor([3.0, 1.0, 0.0, 9.0]).long()))


def test_importing_the_torch_bridge_without_torch_says_what_to_install(tmp_path):
    """Issue 25 item 9: no bare ModuleNotFoundError; the message names torch and the install."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    probe = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def no_torch(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = no_torch\n"
        "try:\n"
        "    import gpu_softmax.torch\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, '|', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, check=True).stdout
    name, text = out.split("|", 1)
    assert name.strip() == "torch"
    assert "needs PyTorch" in text and 'pip install "torch>=2.4"' in text
