"""The GPU checks' own helpers, on the CPU: defects that hid or faked GPU failures.

- tests/test_torch_gpu.py made x itself the float32 reference leaf, so ours was not a
  leaf and its .grad was None (grad_leaves);
- its bfloat16 log_softmax gradient tolerance was too tight for 50000-long rows
  (grad_tolerance, from the dtype's epsilon and the row sums);
- `gpu-softmax check` compared float64 softmax_backward results, which cancel, with no
  absolute floor (testing.backward_atol).

The "kernel" here is simulated: the same formulas with the rounding a kernel does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpu_softmax import reference, selfcheck
from gpu_softmax.testing import assert_close, backward_atol

torch = pytest.importorskip("torch")
import test_torch_gpu as ttg  # noqa: E402  (importable without a GPU: its tests skip one by one)


def test_grad_leaves_are_separate_leaves_for_float32():
    x = torch.randn(4, 7)
    # What the test used to do: x.float() is x, so x becomes the leaf and the clone is not one.
    xr_old = x.float().requires_grad_()
    assert x.clone().requires_grad_().is_leaf is False and xr_old is x
    x = torch.randn(4, 7)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        xr, xa = ttg.grad_leaves(xd)
        assert xr.is_leaf and xa.is_leaf and xr is not xa and xa is not xd and not xd.requires_grad
        assert xr.dtype == torch.float32 and xa.dtype == dtype
        torch.softmax(xr, -1).square().sum().backward()
        torch.softmax(xa.float(), -1).square().sum().backward()
        assert xr.grad is not None and xa.grad is not None


def _simulated_grad(op, x, go, dtype, roll_rows=False):
    """Our bridge's gradient as a kernel computes it: from y rounded to dtype, summed in
    float32, the result rounded to dtype. roll_rows: a broken kernel using the next row's sum."""
    y = getattr(torch, op)(x.float(), -1).to(dtype).float()
    g = go.float()
    s = (g if op == "log_softmax" else g * y).sum(-1, keepdim=True)
    if roll_rows:
        s = s.roll(1, 0)
    gx = g - torch.exp(y) * s if op == "log_softmax" else y * (g - s)
    return gx.to(dtype).float(), y


def _grad_case(op, dtype, seed, roll_rows=False, shape=(8, 50000)):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    xr, _ = ttg.grad_leaves(x)
    e = getattr(torch, op)(xr, -1)
    go = torch.randn(e.shape, generator=gen).to(dtype)
    (e * go.float()).sum().backward()
    ours, y = _simulated_grad(op, x, go, dtype, roll_rows)
    return ours, xr.grad.to(dtype).float(), y, go


def _within(ours, expected, rtol, atol) -> bool:
    return bool(((ours - expected).abs() <= atol + rtol * expected.abs()).all())


def test_bf16_log_softmax_grad_tolerance_follows_epsilon_and_row_length():
    old_failures = 0
    # Seeds 1 and 8 of torch's CPU generator are two where the old tolerance fails.
    for seed in (0, 1, 2, 8):
        ours, expected, y, go = _grad_case("log_softmax", torch.bfloat16, seed)
        rtol, atol = ttg.TOL[torch.bfloat16]
        old_failures += not _within(ours, expected, rtol * 2, atol * 5)
        rtol, atol = ttg.grad_tolerance("log_softmax", y, go, torch.bfloat16, -1)
        assert _within(ours, expected, rtol, atol), f"seed {seed}"
    # The old fixed tolerance fails a correct bfloat16 kernel now and then (the H200's flake).
    assert old_failures >= 1
    # Not vacuous: a kernel that takes its row sum from the wrong row fails.
    ours, expected, y, go = _grad_case("log_softmax", torch.bfloat16, 0, roll_rows=True)
    assert not _within(ours, expected, *ttg.grad_tolerance("log_softmax", y, go, torch.bfloat16, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_grad_tolerance_passes_a_correct_kernel_and_fails_a_broken_one(op, dtype):
    for seed in range(3):
        ours, expected, y, go = _grad_case(op, dtype, seed, shape=(16, 5000))
        assert _within(ours, expected, *ttg.grad_tolerance(op, y, go, dtype, -1))
    ours, expected, y, go = _grad_case(op, dtype, 0, roll_rows=True, shape=(16, 5000))
    assert not _within(ours, expected, *ttg.grad_tolerance(op, y, go, dtype, -1))


def _fsum_softmax_backward(gy, y):
    """softmax_backward with the row sum added exactly (another order than NumPy's)."""
    s = np.array([[math.fsum(r)] for r in gy * y])
    return y * (gy - s)


def test_float64_softmax_backward_floor_from_the_row():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((16, 50257)) * 4
    gy = rng.standard_normal((16, 50257))
    y = reference.softmax(x)
    ours = _fsum_softmax_backward(gy, y)
    want = reference.softmax_backward(gy, y)
    with pytest.raises(AssertionError, match="elements off"):  # what `check --quick` did on the H200
        assert_close(ours, want, "float64")
    atol = backward_atol("softmax_backward", gy, y, rtol=1e-12)
    assert_close(ours, want, "float64", atol=atol)
    assert selfcheck.compare("softmax_backward", "float64", (gy, y), ours) < 1e-6
    # A real error of 1e-10 relative on one element of each row is still caught.
    bad = ours.copy()
    bad[:, 11] *= 1 + 1e-10
    with pytest.raises(AssertionError):
        selfcheck.compare("softmax_backward", "float64", (gy, y), bad)


def test_log_softmax_backward_floor_catches_a_wrong_sum():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 4096)) * 4
    gy = rng.standard_normal((8, 4096))
    y = reference.log_softmax(x)
    want = reference.log_softmax_backward(gy, y)
    s = np.array([[math.fsum(r)] for r in gy])
    ours = gy - np.exp(y) * s
    assert selfcheck.compare("log_softmax_backward", "float64", (gy, y), ours) < 1e-6
    with pytest.raises(AssertionError):
        selfcheck.compare("log_softmax_backward", "float64", (gy, y), gy - np.exp(y) * (s + 1e-9 * np.abs(s).max()))
    with pytest.raises(ValueError, match="not a backward op"):
        backward_atol("softmax", gy, y, 1e-12)


def test_check_quick_does_less_than_check():
    full, quick = selfcheck.cases(False), selfcheck.cases(True)
    assert set(quick) < set(full) and len(quick) <= len(full) // 3
    assert {c[0] for c in quick} == set(selfcheck.OPS) and {c[1] for c in quick} == set(selfcheck.DTYPES)


def test_check_quick_without_gpu_compiles_one_architecture_with_progress(monkeypatch):
    from gpu_softmax._cuda import compile_check as cc
    from gpu_softmax._cuda import info

    monkeypatch.setattr(info, "gpu_status", lambda: (False, "no GPU here (test)"))
    compiled = []

    def fake_check(family, arch):
        compiled.append((family, arch))
        return cc.FamilyReport(family=family, arch=arch, seconds=0.0, log="")

    monkeypatch.setattr(cc, "check_family", fake_check)
    said = []
    results = selfcheck.run(quick=True, progress=said.append)
    assert {a for _, a in compiled} == {cc.ARCHS[-1]} and len(said) == len(compiled) >= 3
    assert all(m.startswith("compiling ") for m in said)
    assert results[-1].status == "skip" and "no GPU" in results[-1].detail
    compiled.clear()
    selfcheck.run(quick=False)
    assert {a for _, a in compiled} == set(cc.ARCHS)
