"""The NumPy reference against PyTorch (CPU), loss and autograd gradient.

Skipped where torch is not installed. Everything is compared in float64 unless a
test says otherwise. z_loss and logit_softcap are not torch options: for them the
torch side builds the same loss from torch ops (tanh cap, torch.logsumexp) and lets
autograd differentiate it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import gpu_softmax  # noqa: E402
from gpu_softmax import reference as ref  # noqa: E402
from closeness import assert_close  # noqa: E402
from torch_z_loss import add_z_loss  # noqa: E402

FLOATS = (np.float16, np.float32, np.float64)


def stat_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def torch_ce(logits, target, *, axis=-1, weight=None, ignore_index=-100, label_smoothing=0.0,
             reduction="mean", z_loss=0.0, logit_softcap=None, grad_output=1.0):
    """(loss, grad) from torch autograd; the class axis is moved to torch's dim 1."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    axis = axis % x.ndim
    cdim = 0 if x.ndim == 1 else 1
    xm = torch.movedim(x, axis, cdim)
    if logit_softcap is not None:
        xm = logit_softcap * torch.tanh(xm / logit_softcap)
    soft = np.asarray(target).dtype.kind == "f"
    t = torch.tensor(target)
    if soft:
        t = torch.movedim(t.to(torch.float64), axis, cdim)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    loss = F.cross_entropy(xm, t, weight=w, ignore_index=ignore_index, label_smoothing=label_smoothing,
                           reduction=reduction)
    if z_loss:
        lse = torch.logsumexp(xm, dim=cdim)
        valid = torch.ones_like(lse, dtype=torch.bool) if soft else (t != ignore_index)
        loss = add_z_loss(loss, lse, valid, z_loss, reduction)
    go = torch.as_tensor(np.asarray(grad_output, dtype=np.float64))
    (loss * go).sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def assert_matches_torch(logits, target, grad_output=1.0, **kw):
    """The reference's loss and gradient against torch autograd's, at the float64 tolerances of these tests."""
    exp_loss, exp_grad = torch_ce(logits, target, grad_output=grad_output, **kw)
    loss, grad = ref.cross_entropy_with_grad(logits, target, grad_output=grad_output, **kw)
    assert_close(loss, exp_loss, 1e-12, 1e-14, "loss")
    assert_close(grad, exp_grad, 1e-10, 1e-14, "grad")


def make_problem(rng, shape, axis, kind, n_ignored, ignore_index=-100, weighted=False):
    axis = axis % len(shape)
    C = shape[axis]
    logits = rng.standard_normal(shape) * 3.0
    reduced = shape[:axis] + shape[axis + 1:]
    if kind == "soft":
        p = rng.dirichlet(np.ones(C), size=reduced or None)
        target = np.moveaxis(np.asarray(p).reshape(reduced + (C,)), -1, axis).copy()
    else:
        target = rng.integers(0, C, size=reduced, dtype=np.int64)
        if n_ignored:
            flat = target.reshape(-1)
            flat[rng.choice(flat.size, size=min(n_ignored, flat.size), replace=False)] = ignore_index
            target = flat.reshape(reduced)
    weight = rng.uniform(0.2, 2.0, size=C) if weighted else None
    return logits, np.asarray(target), weight


SHAPES = [
    pytest.param((6, 7), -1, id="2d"),
    pytest.param((7, 6), 0, id="2d-axis0"),
    pytest.param((5,), 0, id="1d"),
    pytest.param((3, 5, 4), 1, id="3d-axis1"),
    pytest.param((2, 4, 3, 2), 1, id="4d-axis1"),
]


def _ignored_count(shape, axis):
    rows = int(np.prod(shape)) // shape[axis]
    return 0 if rows == 1 else max(1, rows // 3)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("ignore", [False, True], ids=["noignore", "ignore"])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_hard_labels_vs_torch(rng, shape, axis, ignore, weighted, label_smoothing, reduction):
    n_ign = _ignored_count(shape, axis) if ignore else 0
    logits, target, weight = make_problem(rng, shape, axis, "hard", n_ign, weighted=weighted)
    kw = dict(axis=axis, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    exp_loss, exp_grad = torch_ce(logits, target, **kw)
    loss = ref.cross_entropy(logits, target, **kw)
    assert_close(loss, exp_loss, 1e-12, 1e-14, "loss")
    loss2, grad = ref.cross_entropy_with_grad(logits, target, **kw)
    assert_close(loss2, exp_loss, 1e-12, 1e-14, "loss (with grad)")
    assert_close(grad, exp_grad, 1e-10, 1e-14, "grad")
    np.testing.assert_array_equal(gpu_softmax.cross_entropy(logits, target, **kw), loss)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_soft_labels_vs_torch(rng, shape, axis, weighted, label_smoothing, reduction):
    logits, target, weight = make_problem(rng, shape, axis, "soft", 0, weighted=weighted)
    kw = dict(axis=axis, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    assert_matches_torch(logits, target, **kw)
    # soft targets need not be normalised; torch takes them as given
    scaled = target * rng.uniform(0.3, 3.0)
    exp_loss, exp_grad = torch_ce(logits, scaled, **kw)
    loss, grad = ref.cross_entropy_with_grad(logits, scaled, **kw)
    assert_close(loss, exp_loss, 1e-12, 1e-14, "loss (unnormalised)")
    assert_close(grad, exp_grad, 1e-10, 1e-14, "grad (unnormalised)")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("kind", ["hard", "soft"])
@pytest.mark.parametrize("z_loss,cap", [(1e-2, None), (0.0, 3.0), (0.05, 2.0)], ids=["z", "cap", "z+cap"])
@pytest.mark.parametrize("shape,axis", [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_z_loss_and_softcap_vs_torch_autograd(rng, shape, axis, z_loss, cap, kind, reduction):
    n_ign = _ignored_count(shape, axis) if kind == "hard" else 0
    logits, target, weight = make_problem(rng, shape, axis, kind, n_ign, weighted=True)
    kw = dict(axis=axis, weight=weight, label_smoothing=0.1, reduction=reduction, z_loss=z_loss, logit_softcap=cap)
    assert_matches_torch(logits, target, **kw)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_grad_output_vs_torch(rng, reduction):
    shape, axis = (3, 6, 2), 1
    logits, target, weight = make_problem(rng, shape, axis, "hard", 2, weighted=True)
    gos = [float(rng.uniform(-3, 3))]
    if reduction == "none":
        gos.append(rng.uniform(-2, 2, size=(3, 2)))
    for go in gos:
        kw = dict(axis=axis, weight=weight, label_smoothing=0.05, reduction=reduction, z_loss=0.01)
        assert_matches_torch(logits, target, grad_output=go, **kw)


@pytest.mark.parametrize("ignore_index", [-1, 0, 3])
def test_custom_ignore_index_vs_torch(rng, ignore_index):
    logits, target, weight = make_problem(rng, (8, 5), -1, "hard", 3, ignore_index=ignore_index, weighted=True)
    for reduction, ls in itertools.product(["none", "mean", "sum"], [0.0, 0.1]):
        kw = dict(weight=weight, ignore_index=ignore_index, label_smoothing=ls, reduction=reduction)
        assert_matches_torch(logits, target, **kw)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_all_ignored_vs_torch(rng, reduction):
    logits = rng.standard_normal((4, 5))
    target = np.full(4, -100)
    exp_loss, exp_grad = torch_ce(logits, target, reduction=reduction)
    loss, grad = ref.cross_entropy_with_grad(logits, target, reduction=reduction)
    assert_close(loss, exp_loss, 0, 0, "loss")
    if reduction == "mean":
        assert np.isnan(loss)
    np.testing.assert_array_equal(grad, np.zeros_like(logits))
    assert_close(grad, exp_grad, 0, 0, "grad")
    # 1-D logits with an ignored 0-d target
    exp_loss, exp_grad = torch_ce(logits[0], np.array(-100), reduction=reduction)
    loss, grad = ref.cross_entropy_with_grad(logits[0], np.array(-100), reduction=reduction)
    assert_close(loss, exp_loss, 0, 0, "1-d loss")
    assert_close(grad, exp_grad, 0, 0, "1-d grad")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_low_precision_cross_entropy_vs_torch_float64(rng, dtype):
    logits, target, weight = make_problem(rng, (6, 33), -1, "hard", 2, weighted=True)
    logits = logits.astype(dtype)
    for reduction in ("none", "mean", "sum"):
        kw = dict(weight=weight, label_smoothing=0.1, reduction=reduction)
        exp_loss, exp_grad = torch_ce(logits.astype(np.float64), target, **kw)
        loss, grad = ref.cross_entropy_with_grad(logits, target, **kw)
        assert loss.dtype == np.float32 and grad.dtype == dtype
        e32 = float(np.finfo(np.float32).eps)
        assert_close(loss, exp_loss, 2 * e32, 1e-30, "loss")
        fi = np.finfo(dtype)
        assert_close(grad, exp_grad, 2 * float(fi.eps), 2 * float(fi.smallest_subnormal), "grad")


# ----------------------------------------------------------------------------------
# special values in cross entropy


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_special_rows_vs_torch(rng, reduction, label_smoothing):
    nan, inf = np.nan, np.inf
    logits = rng.standard_normal((7, 5)) * 2
    logits[0, 1] = nan
    logits[1, 2] = inf
    logits[2, :] = -inf
    logits[3, 4] = -inf  # partly -inf, not the target
    logits[4, 0] = inf
    logits[4, 1] = -inf
    target = np.array([0, 1, 2, 0, 3, 4, 1])
    kw = dict(label_smoothing=label_smoothing, reduction=reduction)
    assert_matches_torch(logits, target, **kw)


def test_ignored_nan_row_gradient_is_zero_unlike_torch(rng):
    # torch back-propagates NaN through an ignored row whose logits are NaN; we give
    # the documented exact 0. The other rows agree.
    logits = rng.standard_normal((4, 5))
    logits[1, 3] = np.nan
    target = np.array([0, -100, 2, 4])
    for reduction in ("none", "mean", "sum"):
        exp_loss, exp_grad = torch_ce(logits, target, reduction=reduction)
        loss, grad = ref.cross_entropy_with_grad(logits, target, reduction=reduction)
        assert_close(loss, exp_loss, 1e-12, 1e-14, "loss")
        np.testing.assert_array_equal(grad[1], np.zeros(5))
        keep = [0, 2, 3]
        assert_close(grad[keep], exp_grad[keep], 1e-10, 1e-14, "grad of other rows")


# ----------------------------------------------------------------------------------
# softmax family vs torch


def _special_rows(rng, C):
    x = rng.standard_normal((8, C)) * 3
    x[0, C // 2] = np.nan
    x[1, C // 3] = np.inf
    x[2, :] = -np.inf
    x[3, ::2] = -np.inf
    x[4, 0] = np.inf
    x[4, -1] = -np.inf
    x[5] += 1e4
    return x


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("C", [1, 2, 31, 33, 1025])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_family_vs_torch(rng, dtype, C, axis):
    x = _special_rows(rng, C)
    if axis == 0:
        x = np.ascontiguousarray(x.T)
    x = x.astype(dtype)
    tx = torch.tensor(x.astype(np.float64))
    fi = np.finfo(dtype)
    if dtype == np.float64:
        rtol, atol = 1e-13, 1e-14
    else:
        rtol, atol = float(fi.eps), 2 * float(fi.smallest_subnormal)
    assert_close(ref.softmax(x, axis), torch.softmax(tx, axis).numpy(), rtol, atol, "softmax")
    assert_close(ref.log_softmax(x, axis), torch.log_softmax(tx, axis).numpy(), rtol, atol, "log_softmax")
    s_eps = float(np.finfo(stat_dtype(dtype)).eps)
    lse = ref.logsumexp(x, axis)
    assert lse.dtype == stat_dtype(dtype)
    assert_close(lse, torch.logsumexp(tx, axis).numpy(), 1e-13 if dtype == np.float64 else s_eps, 1e-14,
                 "logsumexp")
    if dtype != np.float16:
        # and torch computing in the same dtype: float32 torch rounds in float32, and its
        # exp's relative error grows with |x - max| (about 20 here): allow 1e-5.
        tt = torch.tensor(x)
        r = 1e-13 if dtype == np.float64 else 1e-5
        assert_close(ref.softmax(x, axis), torch.softmax(tt, axis).numpy(), r, 4 * float(fi.tiny), "softmax same dtype")
        assert_close(ref.log_softmax(x, axis), torch.log_softmax(tt, axis).numpy(), r, r, "log_softmax same dtype")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,axis", [((4, 9), -1), ((9, 4), 0), ((2, 7, 3), 1), ((33,), 0)])
def test_softmax_backward_vs_torch_autograd(rng, dtype, shape, axis):
    x = rng.standard_normal(shape) * 3
    gy = rng.standard_normal(shape)
    x = x.astype(dtype)
    gy = gy.astype(dtype)
    fi = np.finfo(dtype)
    for fwd, bwd, tfwd in [
        (ref.softmax, ref.softmax_backward, torch.softmax),
        (ref.log_softmax, ref.log_softmax_backward, torch.log_softmax),
    ]:
        y = fwd(x, axis)
        # torch differentiates at the same y: recover the float64 input as log(y)
        # for softmax would lose precision, so differentiate at x and compare with
        # our backward applied to our (rounded) y, within the dtype's tolerance.
        tx = torch.tensor(x.astype(np.float64), requires_grad=True)
        tfwd(tx, axis).backward(torch.tensor(gy.astype(np.float64)))
        got = bwd(gy, y, axis)
        assert got.dtype == dtype
        scale = float(np.abs(tx.grad.numpy()).max()) + 1.0
        tol = 1e-13 if dtype == np.float64 else 8 * float(fi.eps)
        assert_close(got, tx.grad.numpy(), tol, tol * scale * x.shape[axis] ** 0.5, bwd.__name__)


@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((0,), 0)])
def test_empty_softmax_family_vs_torch(shape, axis):
    x = np.ones(shape)
    tx = torch.tensor(x)
    assert_close(ref.softmax(x, axis), torch.softmax(tx, axis).numpy(), 0, 0, "softmax")
    assert_close(ref.log_softmax(x, axis), torch.log_softmax(tx, axis).numpy(), 0, 0, "log_softmax")
    assert_close(ref.logsumexp(x, axis), torch.logsumexp(tx, axis).numpy(), 0, 0, "logsumexp")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_no_rows_vs_torch(reduction):
    x = np.ones((0, 5))
    t = np.zeros(0, dtype=np.int64)
    exp_loss, exp_grad = torch_ce(x, t, reduction=reduction)
    loss, grad = ref.cross_entropy_with_grad(x, t, reduction=reduction)
    assert_close(loss, exp_loss, 0, 0, "loss")
    assert_close(grad, exp_grad, 0, 0, "grad")
