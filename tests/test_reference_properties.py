"""Property tests of the NumPy reference (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpu_softmax import reference as ref

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOATS = (np.float16, np.float32, np.float64)
WIDTH = {np.float16: 16, np.float32: 32, np.float64: 64}


def stat_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def float_arrays(dtype, lo, hi, min_dims=1, max_dims=3, max_side=9):
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side),
        elements=st.floats(float(dtype(lo)), float(dtype(hi)), allow_nan=False, allow_infinity=False,
                           width=WIDTH[dtype]),
    )


def an_axis(data, ndim):
    return data.draw(st.integers(-ndim, ndim - 1), label="axis")


# ----------------------------------------------------------------------------------
# softmax family


# Inputs k / 2**f with |k| bounded so that x and x + c (c an integer) are exact in the
# dtype: the shift then changes nothing but float64 rounding inside the reference.
_GRID = {np.float16: (6, 8, 16), np.float32: (10, 64, 256), np.float64: (20, 64, 1024)}


@pytest.mark.parametrize("dtype", FLOATS)
@SETTINGS
@given(data=st.data())
def test_shift_invariance(dtype, data):
    frac_bits, xmax, cmax = _GRID[dtype]
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8), label="shape")
    k = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-xmax << frac_bits, xmax << frac_bits)))
    x = (k / 2.0**frac_bits).astype(dtype)
    axis = an_axis(data, len(shape))
    cshape = list(shape)
    cshape[axis] = 1
    c = data.draw(hnp.arrays(np.int64, tuple(cshape), elements=st.integers(-cmax, cmax)), label="c")
    xs = (x.astype(np.float64) + c).astype(dtype)
    assert np.array_equal(xs.astype(np.float64), x.astype(np.float64) + c)  # the shift is exact
    eps = float(np.finfo(dtype).eps)
    tiny = 2 * float(np.finfo(dtype).smallest_subnormal)
    np.testing.assert_allclose(ref.softmax(xs, axis), ref.softmax(x, axis), rtol=2 * eps, atol=tiny)
    ly, lys = ref.log_softmax(x, axis).astype(np.float64), ref.log_softmax(xs, axis).astype(np.float64)
    np.testing.assert_allclose(lys, ly, rtol=2 * eps, atol=64 * eps)
    lse = ref.logsumexp(x, axis).astype(np.float64)
    lse_s = ref.logsumexp(xs, axis).astype(np.float64)
    seps = float(np.finfo(stat_dtype(dtype)).eps)
    np.testing.assert_allclose(lse_s, lse + np.squeeze(c, axis), rtol=2 * seps, atol=(cmax + xmax) * 4 * seps)


@pytest.mark.parametrize("dtype", FLOATS)
@SETTINGS
@given(data=st.data())
def test_rows_sum_to_one_and_bounds(dtype, data):
    x = data.draw(float_arrays(dtype, -50, 50), label="x")
    axis = an_axis(data, x.ndim)
    y = ref.softmax(x, axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert ((y >= 0) & (y <= 1)).all()
    C = x.shape[axis]
    s = y.astype(np.float64).sum(axis=axis)
    fi = np.finfo(dtype)
    tol = float(fi.eps) + C * float(fi.smallest_subnormal) + (1e-14 if dtype == np.float64 else 0)
    assert np.abs(s - 1).max() <= tol
    ly = ref.log_softmax(x, axis)
    assert (ly <= 0).all()
    lse = ref.logsumexp(x, axis)
    xmax = x.astype(np.float64).max(axis=axis)
    seps = float(np.finfo(stat_dtype(dtype)).eps)
    assert (lse.astype(np.float64) >= xmax - np.abs(xmax) * seps).all()  # lse >= max x
    assert (lse.astype(np.float64) <= xmax + np.log(C) + np.abs(xmax) * seps + seps).all()  # <= max + log C


@SETTINGS
@given(data=st.data())
def test_log_softmax_is_x_minus_logsumexp(data):
    x = data.draw(float_arrays(np.float64, -1e3, 1e3), label="x")
    axis = an_axis(data, x.ndim)
    ly = ref.log_softmax(x, axis)
    lse = ref.logsumexp(x, axis)
    expected = x - np.expand_dims(lse, axis)
    np.testing.assert_allclose(ly, expected, rtol=1e-12, atol=1e-12 * (1 + np.abs(x).max()))
    np.testing.assert_allclose(np.exp(ly), ref.softmax(x, axis), rtol=1e-11, atol=1e-300)


# float16 log-probabilities below -65504 round to -inf; the reference's final cast
@pytest.mark.parametrize("dtype,bound", [(np.float64, 1e300), (np.float32, 1e30), (np.float16, 6e4)])
@SETTINGS
@given(data=st.data())
def test_extreme_magnitudes_stay_finite(dtype, bound, data):
    x = data.draw(float_arrays(dtype, -bound, bound), label="x")
    axis = an_axis(data, x.ndim)
    y = ref.softmax(x, axis)
    assert np.isfinite(y).all()
    lse = ref.logsumexp(x, axis)
    assert np.isfinite(lse).all()
    ly = ref.log_softmax(x, axis)
    assert not np.isnan(ly).any()
    assert (ly <= 0).all()
    # log_softmax is finite wherever its exact value fits the dtype (in float16 a row
    # spanning +-6e4 has log-probabilities near -1.2e5, below float16's -65504).
    exact = x.astype(np.float64) - np.expand_dims(lse.astype(np.float64), axis)
    fits = exact > -0.999 * float(np.finfo(dtype).max)
    assert np.isfinite(ly[fits]).all()
    if dtype != np.float16:
        assert np.isfinite(ly).all()


@SETTINGS
@given(data=st.data())
def test_float16_half_range_log_softmax_finite(data):
    x = data.draw(float_arrays(np.float16, -3e4, 3e4), label="x")
    axis = an_axis(data, x.ndim)
    assert np.isfinite(ref.log_softmax(x, axis)).all()
    assert np.isfinite(ref.softmax(x, axis)).all()


@pytest.mark.parametrize("dtype", FLOATS)
@SETTINGS
@given(data=st.data())
def test_backward_rows_sum_to_zero(dtype, data):
    x = data.draw(float_arrays(dtype, -20, 20), label="x")
    gy = data.draw(hnp.arrays(dtype, x.shape, elements=st.floats(-10, 10, width=WIDTH[dtype])), label="gy")
    axis = an_axis(data, x.ndim)
    x64 = x.astype(np.float64)
    # softmax_backward: sum_j y_j (g_j - <g, y>) = 0 when sum y = 1; use float64 y so
    # the identity is exact up to rounding.
    y = ref.softmax(x64, axis)
    gx = ref.softmax_backward(gy.astype(np.float64), y, axis)
    gmax = float(np.abs(gy).max())
    assert np.abs(gx.sum(axis=axis)).max() <= 1e-12 * (1 + gmax)
    ly = ref.log_softmax(x64, axis)
    gx = ref.log_softmax_backward(gy.astype(np.float64), ly, axis)
    assert np.abs(gx.sum(axis=axis)).max() <= 1e-12 * (1 + gmax * x.shape[axis])
    # and in the input dtype, the result keeps it
    assert ref.softmax_backward(gy, ref.softmax(x, axis), axis).dtype == dtype


# ----------------------------------------------------------------------------------
# cross entropy


@st.composite
def ce_problem(draw, dtype=np.float64, soft=None):
    ndim = draw(st.integers(1, 3))
    shape = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=6))
    axis = draw(st.integers(-ndim, ndim - 1))
    C = shape[axis]
    logits = draw(hnp.arrays(dtype, shape, elements=st.floats(-30, 30, width=WIDTH[dtype])))
    if soft is None:
        soft = draw(st.booleans())
    reduced = shape[: axis % ndim] + shape[axis % ndim + 1:]
    if soft:
        raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
        total = raw.sum(axis=axis, keepdims=True)
        target = np.where(total > 0, raw / np.where(total > 0, total, 1), 1.0 / C)
    else:
        target = draw(hnp.arrays(np.int64, reduced, elements=st.integers(0, C - 1) | st.just(-100)))
    weight = draw(st.none() | hnp.arrays(np.float64, (C,), elements=st.floats(0.01, 5)))
    smoothing = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]) | st.floats(0, 1))
    return logits, target, axis, weight, smoothing


@SETTINGS
@given(problem=ce_problem(), reduction=st.sampled_from(["none", "mean", "sum"]))
def test_cross_entropy_grad_rows_sum_to_zero(problem, reduction):
    # p * sum(q) - q sums to 0 over classes for any q: holds with weights and
    # smoothing, not with z_loss or a softcap.
    logits, target, axis, weight, smoothing = problem
    loss, g = ref.cross_entropy_with_grad(logits, target, axis=axis, weight=weight,
                                          label_smoothing=smoothing, reduction=reduction)
    assert g.shape == logits.shape
    assert np.isfinite(g).all()
    w = 1.0 if weight is None else weight.max()
    assert np.abs(g.sum(axis=axis)).max() <= 1e-12 * w * logits.shape[axis]


@SETTINGS
@given(problem=ce_problem(), z=st.sampled_from([0.0, 1e-4, 0.1]), cap=st.sampled_from([None, 1.0, 30.0]))
def test_cross_entropy_loss_is_non_negative(problem, z, cap):
    logits, target, axis, weight, smoothing = problem
    kw = dict(axis=axis, weight=weight, label_smoothing=smoothing, z_loss=z, logit_softcap=cap)
    loss = ref.cross_entropy(logits, target, reduction="none", **kw)
    assert (loss >= 0).all()
    assert ref.cross_entropy(logits, target, reduction="sum", **kw) >= 0
    mean = ref.cross_entropy(logits, target, reduction="mean", **kw)
    assert np.isnan(mean) or mean >= 0
    if target.dtype.kind == "i":
        ignored = target == -100
        np.testing.assert_array_equal(loss[ignored], 0)
        if ignored.all():
            assert np.isnan(mean)
        else:
            assert np.isfinite(mean)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@SETTINGS
@given(data=st.data())
def test_cross_entropy_low_precision_loss_non_negative_and_finite(dtype, data):
    logits, target, axis, weight, smoothing = data.draw(ce_problem(dtype=dtype))
    loss, g = ref.cross_entropy_with_grad(logits, target, axis=axis, weight=weight,
                                          label_smoothing=smoothing, reduction="none")
    assert loss.dtype == np.float32 and g.dtype == dtype
    assert (loss >= 0).all() and np.isfinite(loss).all()
    assert np.isfinite(g).all()


@SETTINGS
@given(problem=ce_problem(soft=False), reduction=st.sampled_from(["none", "mean", "sum"]))
def test_hard_target_equals_one_hot_soft_target_without_weights(problem, reduction):
    # With no weights and no ignored rows a hard label is the one-hot soft label.
    logits, target, axis, _, smoothing = problem
    C = logits.shape[axis]
    target = np.where(target == -100, 0, target)
    onehot = np.moveaxis(np.eye(C)[target], -1, axis % logits.ndim)
    lh, gh = ref.cross_entropy_with_grad(logits, target, axis=axis, label_smoothing=smoothing, reduction=reduction)
    ls, gs = ref.cross_entropy_with_grad(logits, onehot, axis=axis, label_smoothing=smoothing, reduction=reduction)
    np.testing.assert_allclose(lh, ls, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gh, gs, rtol=1e-10, atol=1e-14)


@SETTINGS
@given(problem=ce_problem(soft=False), z=st.floats(0, 1), cap=st.none() | st.floats(0.5, 50))
def test_grad_output_scales_the_gradient_linearly(problem, z, cap):
    logits, target, axis, weight, smoothing = problem
    kw = dict(axis=axis, weight=weight, label_smoothing=smoothing, z_loss=z, logit_softcap=cap)
    for reduction in ("none", "mean", "sum"):
        l1, g1 = ref.cross_entropy_with_grad(logits, target, reduction=reduction, **kw)
        l2, g2 = ref.cross_entropy_with_grad(logits, target, reduction=reduction, grad_output=-2.5, **kw)
        np.testing.assert_array_equal(l1, l2)
        np.testing.assert_allclose(g2, -2.5 * g1, rtol=1e-12, atol=1e-14 * (np.abs(g1).max() + 1e-300))
