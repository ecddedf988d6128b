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
        assert xr.dtype == torch.float64 and xa.dtype == dtype
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


# ----------------------------------------------------------------------------------
# the cross-entropy gradient's floor (issue 24, item 1): what `gpu-softmax check`,
# gpu_cases.py and the bench's sampled check compare with (selfcheck.compare)


def _ce_inputs(dtype, cols, seed, rows=3):
    """As `gpu-softmax check` draws them (selfcheck._inputs): scale 4, 10% ignored."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 4).astype(dtype)
    t = rng.integers(0, cols, size=rows)
    t[1] = -100  # one ignored row in every case (the draw's 10% may leave none)
    return x, t


def _kernel_like_grad(x, t, dtype, label_smoothing=0.0, reduction="mean", z_loss=0.0, cap=None):
    """The gradient as the kernels form it, in float32 arithmetic: p = exp(xc - m) / s,
    (p * sum(q) - q) * scale + 2 z lse p * scale_z, times 1 - th**2 under a cap, then
    stored in `dtype`. Hard labels, no class weights. exp carries __expf's documented
    worst error (2 ulp + |arg| * 2**-24, relative), all of it one way."""
    f = np.float32
    xf = x.astype(f)
    th = np.tanh(xf / f(cap)) if cap else None
    xc = f(cap) * th if cap else xf
    m = xc.max(axis=1, keepdims=True)
    arg = xc - m
    e = np.exp(arg) * (f(1) + f(2 * 2.0**-23) + np.abs(arg) * f(2.0**-24))
    s = e.sum(axis=1, keepdims=True, dtype=f)
    p = e * (f(1) / s)
    lse = m + np.log(s)
    rows, cols = x.shape
    valid = t != -100
    eps = f(label_smoothing)
    q = np.zeros_like(p)
    q[np.flatnonzero(valid), t[valid]] = f(1) - eps
    q += eps / f(cols)
    qsum = (f(1) - eps) + eps
    n_valid = f(valid.sum())
    scale = f(1) / n_valid if reduction == "mean" else f(1)
    g = (p * qsum - q) * scale
    if z_loss:
        g += f(2 * z_loss) * lse * p * scale
    if cap:
        g *= f(1) - th * th
    g[~valid] = 0
    return g.astype(dtype)


def _small_zeroed(g, want, dtype):
    """Every entry under the old floor (rtol * max|grad|) set to zero."""
    bad = g.copy()
    bad[np.abs(want) < selfcheck.tolerance(dtype)[0] * np.abs(want).max()] = 0
    return bad


def _every_other_zeroed(g, want, dtype):
    bad = g.copy()
    bad[:, ::2] = 0
    return bad


def _wrong_inverse_sum_on_small(g, want, dtype):
    """The small entries (under the old floor) from a row sum 1% too small: p = e / (0.99 s)."""
    bad = g.astype(np.float64)
    small = (np.abs(want) < selfcheck.tolerance(dtype)[0] * np.abs(want).max()) & (want != 0)
    bad[small] /= 0.99
    return bad.astype(dtype)


PERTURBATIONS = [_every_other_zeroed, _small_zeroed, _wrong_inverse_sum_on_small]


@pytest.mark.parametrize("cols", [1000, 50257, 262144])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_check_accepts_a_kernel_quality_gradient(dtype, cols):
    x, t = _ce_inputs(dtype, cols, seed=cols)
    loss, want = reference.cross_entropy_with_grad(x, t, **selfcheck.CE_KW)  # float64, rounded to dtype
    assert want.dtype == np.dtype(dtype)
    selfcheck.compare("cross_entropy_with_grad", dtype, (x, t), (loss, want), selfcheck.CE_KW)
    ours = _kernel_like_grad(x, t, dtype, **selfcheck.CE_KW)
    selfcheck.compare("cross_entropy_with_grad", dtype, (x, t), (loss, ours), selfcheck.CE_KW)


@pytest.mark.parametrize("perturb", PERTURBATIONS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("cols", [1000, 50257, 262144])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_check_rejects_a_wrong_gradient(dtype, cols, perturb):
    x, t = _ce_inputs(dtype, cols, seed=cols)
    loss, want = reference.cross_entropy_with_grad(x, t, **selfcheck.CE_KW)
    bad = perturb(want, want.astype(np.float64), dtype)
    assert (bad != want).any()
    with pytest.raises(AssertionError, match="grad: .* elements off"):
        selfcheck.compare("cross_entropy_with_grad", dtype, (x, t), (loss, bad), selfcheck.CE_KW)


def test_the_old_floor_accepted_the_small_entries_zeroed():
    """Why the floor changed: at 3 x 262144 float32, rtol * max|grad| lies above almost
    every entry, so a gradient with all of those zeroed passed."""
    x, t = _ce_inputs("float32", 262144, seed=262144)
    _, want = reference.cross_entropy_with_grad(x, t, **selfcheck.CE_KW)
    bad = _small_zeroed(want, want.astype(np.float64), "float32")
    assert (bad == 0).mean() > 0.9
    old_floor = 1e-5 * float(np.abs(want.astype(np.float64)).max())
    assert_close(bad, want.astype(np.float64), "float32", atol=old_floor)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kw", [{"z_loss": 1e-2, "reduction": "mean"}, {"logit_softcap": 5.0, "reduction": "sum"},
                                {"z_loss": 1e-3, "logit_softcap": 4.0, "label_smoothing": 0.2, "reduction": "mean"}],
                         ids=["z_loss", "softcap", "all"])
def test_floor_with_z_loss_and_softcap(dtype, kw):
    x, t = _ce_inputs(dtype, 50257, seed=5)
    loss, want = reference.cross_entropy_with_grad(x, t, **kw)
    ours = _kernel_like_grad(x, t, dtype, kw.get("label_smoothing", 0.0), kw["reduction"], kw.get("z_loss", 0.0),
                             kw.get("logit_softcap"))
    selfcheck.compare("cross_entropy_with_grad", dtype, (x, t), (loss, ours), kw)
    with pytest.raises(AssertionError, match="grad"):
        selfcheck.compare("cross_entropy_with_grad", dtype, (x, t),
                          (loss, _small_zeroed(ours, want.astype(np.float64), dtype)), kw)


def test_floor_is_per_entry_and_zero_on_ignored_rows():
    from gpu_softmax.testing import ce_grad_atol

    x, t = _ce_inputs("float32", 1000, seed=1)
    floor = ce_grad_atol(x, t, 1e-5)
    _, want = reference.cross_entropy_with_grad(x.astype(np.float64), t)
    assert floor.shape == x.shape
    assert (floor[1] == np.finfo(np.float32).tiny).all()  # the ignored row: only the stored step
    valid = np.array([0, 2])
    non_target = np.ones_like(want, dtype=bool)
    non_target[valid, t[valid]] = False
    # p * sum(q) - q with q = 0 off the target: the floor is rtol times the entry itself
    np.testing.assert_allclose(floor[valid][non_target[valid]] - np.finfo(np.float32).tiny,
                               1e-5 * np.abs(want[valid][non_target[valid]]), rtol=1e-9)
    # axis=1 layouts: the floor comes back in the logits' own layout
    x3 = np.moveaxis(x.reshape(3, 1000, 1), 1, 1)
    f3 = ce_grad_atol(x3, t.reshape(3, 1), 1e-5, axis=1)
    np.testing.assert_array_equal(f3[:, :, 0], floor)


# ----------------------------------------------------------------------------------
# poison (issue 24, item 2)


def test_poison_is_nan_in_every_float_format():
    from gpu_softmax.testing import poisoned

    for dt in (np.float16, np.float32, np.float64):
        assert np.isnan(poisoned(np, (3, 5), dt)).all(), dt
    words = poisoned(np, 7, np.uint16)  # bfloat16 travels as 16-bit words
    assert np.isnan((words.astype(np.uint32) << 16).view(np.float32)).all()
    assert np.isnan(torch.from_numpy(words.view(np.int16)).view(torch.bfloat16).float().numpy()).all()
    assert (poisoned(np, 4, np.int64) == -1).all()
    # The old poison, a float32 NaN fill, is no poison for float16: half of it reads as 0.
    old = np.full(4, np.nan, dtype=np.float32).view(np.float16)
    assert not np.isnan(old).all()


def test_pool_poison_blocks_are_all_ones_bytes():
    from gpu_softmax.testing import poison_pool

    made = []

    class FakeCupy:
        uint8 = np.uint8

        @staticmethod
        def full(n, value, dtype):
            made.append(np.full(n, value, dtype=dtype))
            return made[-1]

    poison_pool(FakeCupy, 4096, copies=2)
    assert len(made) == 2 and all(b.nbytes == 4096 and (b == 0xFF).all() for b in made)
    assert np.isnan(made[0].view(np.float16)).all() and np.isnan(made[0].view(np.float32)).all()


# ----------------------------------------------------------------------------------
# the torch GPU tests' floors (issue 24, item 3)


def _torch_case(dtype, shape=(8, 50000), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2).to(dtype)


def _forward(op, x, dim=-1):
    """torch's float64 result, as the GPU tests take it, and ours as a kernel gives it
    (computed in float32, stored in x's dtype)."""
    theirs = getattr(torch, op)(x.double(), dim)
    ours = getattr(torch, op)(x.float(), dim).to(x.dtype)
    return ours, theirs


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_forward_floor_accepts_a_correct_result(op, dtype):
    x = _torch_case(dtype)
    ours, theirs = _forward(op, x)
    ttg.within(ours.float(), theirs.to(dtype).float(), ttg.TOL[dtype][0], ttg.forward_floor(op, x, -1), op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_torch_forward_floor_rejects_zeros_and_a_wrong_sum(dtype):
    x = _torch_case(dtype)
    ours, theirs = _forward("softmax", x)
    expected = theirs.to(dtype).float()
    floor = ttg.forward_floor("softmax", x, -1)
    zeros = torch.zeros_like(ours)
    if dtype == torch.bfloat16:  # the fixed floor of 4e-3 lay above 99.9 % of the entries
        assert (expected < ttg.TOL[dtype][1]).float().mean() > 0.999
    with pytest.raises(AssertionError, match="elements off"):
        ttg.within(zeros.float(), expected, ttg.TOL[dtype][0], floor, "softmax of zeros")
    # log_softmax with the row's lse off by 2 % of its size (a wrong row sum, e.g. a partial one)
    ours, theirs = _forward("log_softmax", x)
    lse = torch.logsumexp(x.double(), -1, keepdim=True)
    wrong = (x.double() - lse * 1.02).to(dtype)
    with pytest.raises(AssertionError, match="elements off"):
        ttg.within(wrong.float(), theirs.to(dtype).float(), ttg.TOL[dtype][0], ttg.forward_floor("log_softmax", x, -1),
                   "log_softmax, wrong lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1, "reduction": "sum"}, {"reduction": "none"}],
                         ids=["mean", "smooth-sum", "none"])
def test_torch_ce_grad_floor_accepts_a_kernel_and_rejects_zeroed_small_entries(dtype, kw):
    x = _torch_case(dtype)
    t = torch.randint(0, x.shape[1], (x.shape[0],), generator=torch.Generator().manual_seed(1))
    t[3] = -100
    red = kw.get("reduction", "mean")
    go = (torch.rand(x.shape[0]) + 0.5).to(dtype) if red == "none" else torch.ones((), dtype=dtype)
    expected = _torch_ce_grad(x, t, go, **kw)
    ours = _kernel_like_grad(x.float().numpy(), t.numpy(), np.float32, kw.get("label_smoothing", 0.0), red)
    if red == "none":
        ours = ours * go.float().numpy()[:, None]
    ours = torch.from_numpy(ours).to(dtype).float()
    floor = ttg.ce_grad_floor(x, t, go, **kw)
    rtol = ttg.TOL[dtype][0]
    ttg.within(ours, expected.to(dtype).float(), rtol, floor, "kernel-like grad")
    small = expected.abs() < rtol * expected.abs().max()
    with pytest.raises(AssertionError, match="elements off"):
        ttg.within(torch.where(small, 0.0, ours), expected.to(dtype).float(), rtol, floor, "small entries zeroed")


def _torch_ce_grad(x, t, go, **kw):
    """torch's float64 gradient of (F.cross_entropy * go).sum(), as ref_and_ours takes it."""
    xr = x.detach().double().requires_grad_()
    (torch.nn.functional.cross_entropy(xr, t, **kw) * go.double()).sum().backward()
    return xr.grad


# ----------------------------------------------------------------------------------
# no host sync (issue 24, item 4)


def test_no_host_sync_arms_cupys_guard_and_torchs_and_restores_both():
    cupyx = pytest.importorskip("cupyx")
    from cupy._core import syncdetect

    from gpu_softmax.testing import no_host_sync

    class FakeCuda:
        mode = 0
        calls: list = []

        def get_sync_debug_mode(self):
            return self.mode

        def set_sync_debug_mode(self, mode):
            self.calls.append(mode)
            self.mode = mode

    threads = []

    class FakeAutograd:
        @staticmethod
        @__import__("contextlib").contextmanager
        def set_multithreading_enabled(on):
            threads.append(on)
            yield
            threads.append("restored")

    fake_torch = type("FakeTorch", (), {"cuda": FakeCuda(), "autograd": FakeAutograd})()
    syncdetect._declare_synchronize()  # allowed outside
    with no_host_sync(cupyx, fake_torch):
        assert fake_torch.cuda.mode == "error" and threads == [False]  # backward on this thread, under the guard
        with pytest.raises(cupyx.DeviceSynchronized):
            syncdetect._declare_synchronize()  # what .get(), int(cupy scalar), asnumpy call first
    assert fake_torch.cuda.calls == ["error", 0] and threads == [False, "restored"]
    syncdetect._declare_synchronize()
    with pytest.raises(KeyError), no_host_sync(cupyx):  # restored on an error too
        raise KeyError("inside")
    syncdetect._declare_synchronize()


def test_graph_and_no_sync_gpu_tests_collect_and_skip_without_a_gpu():
    import subprocess
    import sys
    from pathlib import Path

    from conftest import GPU_SKIP_REASON

    if GPU_SKIP_REASON is None:
        pytest.skip("a GPU is here: these tests run for real")
    root = Path(__file__).resolve().parent.parent
    ids = ["tests/test_torch_gpu.py::test_no_host_sync_in_forward_and_backward",
           "tests/test_torch_gpu.py::test_cuda_graph_capture_and_replay_of_a_training_step",
           "tests/test_linear_cross_entropy_gpu.py::test_torch_cuda_no_host_sync",
           "tests/test_linear_cross_entropy_gpu.py::test_torch_cuda_graph_capture_and_replay_of_a_training_step"]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "5 skipped" in p.stdout and "error" not in p.stdout.lower(), p.stdout[-2000:]


# ----------------------------------------------------------------------------------
# the NCCL spawn's watchdog (issue 24, item 9)


def _rank_sleeps(rank, seconds):
    import time

    time.sleep(seconds if rank == 1 else 0)


def _rank_fails(rank):
    raise ValueError(f"rank {rank} failed")


@pytest.mark.slow
def test_spawn_watchdog_kills_hung_ranks_and_passes_errors_on():
    import time

    import torch.multiprocessing as mp

    from gpu_softmax.testing import spawn_with_watchdog

    spawn_with_watchdog(mp, _rank_sleeps, (0.0,), 2, timeout_s=60)  # both finish
    t0 = time.monotonic()
    # (each rank imports this module, torch with it, first: rank 0 is done well within 40 s)
    with pytest.raises(TimeoutError, match="1 of 2 spawned ranks still running after 40 s"):
        spawn_with_watchdog(mp, _rank_sleeps, (600.0,), 2, timeout_s=40)
    assert time.monotonic() - t0 < 90
    with pytest.raises(Exception, match="rank 0 failed"):
        spawn_with_watchdog(mp, _rank_fails, (), 1, timeout_s=60)
