"""Token log-probs and entropy (issue 21): the NumPy reference against an independent float64
torch formula for every option and combination, the torch bridges' gradients (gradcheck),
bad options refused before any compute, the special rows, the linear and vocab-parallel forms.
"""

from __future__ import annotations

import itertools
import math
import os
import socket

import numpy as np
import pytest

import gpu_softmax
from example_loading import load_example
from gpu_softmax import reference_rl
from gpu_softmax.rl_options import TokenLogprobOptions

torch = pytest.importorskip("torch")
from gpu_softmax.torch import rl as trl  # noqa: E402  (needs torch)

RTOL, ATOL = 1e-12, 1e-13  # float64 against float64, two ways of computing the same numbers

TEMPERATURES = [1.0, 0.6, 1.7]
SOFTCAPS = [None, 2.5]
TOP_KS = [None, 1, 3, 100]
TOP_PS = [None, 0.5, 0.9, 1.0]


# ----------------------------------------------------------------------------------
# the independent formula: a class kept by top_p when the mass of the classes with a
# strictly larger z is < top_p, written as a pairwise comparison (no sort, no cumsum)


def formula_mask(z, top_k, top_p):
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k is not None:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        keep = z >= kth
    if top_p is not None:
        q = torch.softmax(z.masked_fill(~keep, -math.inf), dim=-1)
        above = (z[:, None, :] > z[:, :, None]) & keep[:, None, :]  # [r, i, j]: j strictly above i
        mass = (q[:, None, :] * above).sum(-1)
        keep = keep & (mass < top_p)
    return keep


def formula(x, t, *, temperature=1.0, logit_softcap=None, top_k=None, top_p=None, ignore_index=-100):
    """(logp, entropy) of (R, C) float64 x as the issue states them, differentiable in x."""
    z = x if logit_softcap is None else logit_softcap * torch.tanh(x / logit_softcap)
    z = z / temperature
    keep = formula_mask(z.detach(), top_k, top_p)
    lp = torch.log_softmax(z.masked_fill(~keep, -math.inf), dim=-1)
    ignored = t == ignore_index
    safe_t = torch.where(ignored, 0, t)
    logp = lp.gather(1, safe_t[:, None])[:, 0]
    ent = -(lp.exp() * lp.masked_fill(~keep, 0.0)).sum(-1)
    zero = torch.zeros((), dtype=x.dtype)
    return torch.where(ignored, zero, logp), torch.where(ignored, zero, ent)


def rows_with_ties(rng, rows=6, cols=13):
    x = rng.standard_normal((rows, cols)) * 2.0
    x[0] = np.array([2, 2, 1, 1, 1, 0, 0, -1, -1, -1, -1, -3, 0.5])  # ties at the top and in the middle
    x[1, :] = 0.25  # one tie of every class
    return x


def tokens_for(x, rng):
    t = rng.integers(0, x.shape[1], x.shape[0])
    t[0] = 0
    t[-1] = -100
    return t


COMBOS = list(itertools.product(TEMPERATURES, SOFTCAPS, TOP_KS, TOP_PS))


@pytest.mark.parametrize("temperature,softcap,top_k,top_p", COMBOS)
def test_reference_matches_torch_formula(temperature, softcap, top_k, top_p):
    rng = np.random.default_rng(hash((temperature, softcap, top_k, top_p)) % 2**32)
    x = rows_with_ties(rng)
    t = tokens_for(x, rng)
    opts = dict(temperature=temperature, logit_softcap=softcap, top_k=top_k, top_p=top_p)
    logp, ent = gpu_softmax.token_logprobs(x, t, return_entropy=True, **opts)
    assert logp.dtype == np.float64 and logp.shape == (6,)
    want_logp, want_ent = formula(torch.from_numpy(x), torch.from_numpy(t), **opts)
    np.testing.assert_array_equal(np.isneginf(logp), np.isneginf(want_logp.numpy()))
    np.testing.assert_allclose(logp, want_logp.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ent, want_ent.numpy(), rtol=RTOL, atol=ATOL)
    only = gpu_softmax.token_logprobs(x, t, **opts)
    np.testing.assert_array_equal(only, logp)


@pytest.mark.parametrize("temperature,softcap,top_k,top_p", COMBOS[::3])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_backward_matches_torch_autograd_of_formula(temperature, softcap, top_k, top_p, with_entropy):
    rng = np.random.default_rng(abs(hash((temperature, softcap, top_k, top_p, with_entropy))) % 2**32)
    x = rows_with_ties(rng)
    t = tokens_for(x, rng)
    gl = rng.standard_normal(6)
    ge = rng.standard_normal(6) if with_entropy else None
    opts = dict(temperature=temperature, logit_softcap=softcap, top_k=top_k, top_p=top_p)
    grad = gpu_softmax.token_logprobs_backward(x, t, gl, ge, **opts)
    xt = torch.from_numpy(x).requires_grad_()
    logp, ent = formula(xt, torch.from_numpy(t), **opts)
    # documented: a token outside the kept set has log p = -inf and gives no gradient
    loss = (torch.from_numpy(gl) * torch.where(torch.isfinite(logp), logp, 0.0)).sum()
    if with_entropy:
        loss = loss + (torch.from_numpy(ge) * ent).sum()
    (want,) = torch.autograd.grad(loss, xt)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, want.numpy(), rtol=RTOL, atol=ATOL)


def test_reference_matches_formula_on_drawn_inputs():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    # small integers: many exact ties, the case where mask rules differ most
    rows = st.integers(1, 5)
    cols = st.integers(1, 12)

    @hypothesis.settings(max_examples=60, deadline=None,
                         suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(rows, cols, st.data(),
                      st.sampled_from(TEMPERATURES), st.sampled_from(SOFTCAPS),
                      st.one_of(st.none(), st.integers(1, 14)),
                      st.one_of(st.none(), st.sampled_from([0.05, 0.3, 0.6, 0.99, 1.0])))
    def check(r, c, data, temperature, softcap, top_k, top_p):
        x = np.array(data.draw(st.lists(st.integers(-4, 4), min_size=r * c, max_size=r * c)), float).reshape(r, c)
        t = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=r, max_size=r)))
        opts = dict(temperature=temperature, logit_softcap=softcap, top_k=top_k, top_p=top_p)
        logp, ent = gpu_softmax.token_logprobs(x, t, return_entropy=True, **opts)
        want_logp, want_ent = formula(torch.from_numpy(x), torch.from_numpy(t), **opts)
        np.testing.assert_array_equal(np.isneginf(logp), np.isneginf(want_logp.numpy()))
        np.testing.assert_allclose(logp, want_logp.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ent, want_ent.numpy(), rtol=RTOL, atol=ATOL)

    check()


def test_top_p_keeps_ties_whole_and_at_least_one_class():
    z = np.log(np.array([[0.4, 0.2, 0.2, 0.1, 0.1], [0.9, 0.05, 0.05, 0.03, 0.02]]))
    keep = reference_rl.kept_set(z, TokenLogprobOptions(top_p=0.5))
    # mass strictly above the two 0.2s is 0.4 < 0.5: both kept; above the 0.1s is 0.8: dropped
    np.testing.assert_array_equal(keep[0], [True, True, True, False, False])
    np.testing.assert_array_equal(keep[1], [True, False, False, False, False])
    keep = reference_rl.kept_set(z, TokenLogprobOptions(top_p=1e-9))
    assert keep.sum(axis=1).tolist() == [1, 1]


def test_top_k_keeps_ties_whole_and_k_beyond_classes_keeps_all():
    x = np.array([[3.0, 1.0, 1.0, 1.0, 0.0]])
    assert reference_rl.kept_set(x, TokenLogprobOptions(top_k=2)).tolist() == [[True, True, True, True, False]]
    assert reference_rl.kept_set(x, TokenLogprobOptions(top_k=50)).all()


def test_top_k_then_top_p_renormalises_over_what_top_k_kept():
    # p = (0.5, 0.3, 0.2): top_k=2 renormalises to (0.625, 0.375); top_p=0.6 then keeps only the first
    x = np.log(np.array([[0.5, 0.3, 0.2]]))
    keep = reference_rl.kept_set(x, TokenLogprobOptions(top_k=2, top_p=0.6))
    assert keep.tolist() == [[True, False, False]]
    keep = reference_rl.kept_set(x, TokenLogprobOptions(top_p=0.6))
    assert keep.tolist() == [[True, True, False]]  # without top_k: 0.5 < 0.6 above the second


def test_top_p_one_is_no_mask_even_for_negligible_classes():
    x = np.array([[0.0, -80.0, -800.0]])  # 1 - exp(-80) rounds to 1 in float64
    logp = gpu_softmax.token_logprobs(x, np.array([1]), top_p=1.0)
    np.testing.assert_allclose(logp, gpu_softmax.token_logprobs(x, np.array([1])), rtol=0)
    assert np.isfinite(logp).all()


def test_single_kept_class_gives_zero_logp_and_entropy():
    x = np.array([[0.3, 2.0, -1.0, 1.9]])
    logp, ent = gpu_softmax.token_logprobs(x, np.array([1]), top_k=1, return_entropy=True)
    assert logp.tolist() == [0.0] and ent.tolist() == [0.0]
    grad = gpu_softmax.token_logprobs_backward(x, np.array([1]), np.ones(1), np.ones(1), top_k=1)
    assert not grad.any()


def test_token_outside_kept_set_gets_minus_inf_and_no_logp_gradient():
    x = np.array([[3.0, 2.0, 0.0, -1.0], [0.0, 1.0, 2.0, 3.0]])
    t = np.array([3, 3])
    logp = gpu_softmax.token_logprobs(x, t, top_k=2)
    assert np.isneginf(logp[0]) and np.isfinite(logp[1])
    grad = gpu_softmax.token_logprobs_backward(x, t, np.ones(2), top_k=2)
    assert not grad[0].any()
    assert grad[1].any() and grad[1, :2].tolist() == [0.0, 0.0]  # zero outside the kept set
    # the entropy's gradient still flows on the row whose token is dropped
    g_ent = gpu_softmax.token_logprobs_backward(x, t, np.zeros(2), np.ones(2), top_k=2)
    assert g_ent[0, :2].any() and not g_ent[0, 2:].any()


def test_ignored_rows_are_zero_without_reading_logits():
    x = np.array([[np.nan, np.inf, 1.0], [0.0, 1.0, 2.0]])
    t = np.array([7, 2])
    logp, ent = gpu_softmax.token_logprobs(x, t, ignore_index=7, return_entropy=True, top_k=2, top_p=0.8)
    assert logp[0] == 0.0 and ent[0] == 0.0 and np.isfinite(logp[1])
    grad = gpu_softmax.token_logprobs_backward(x, t, np.full(2, np.nan), np.ones(2), ignore_index=7)
    assert grad[0].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("row", [[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [-np.inf, -np.inf, -np.inf]])
@pytest.mark.parametrize("mask", [{}, {"top_k": 2}, {"top_p": 0.7}])
def test_nan_plus_inf_and_all_minus_inf_rows_are_nan(row, mask):
    x = np.array([row, [0.0, 1.0, 2.0]])
    t = np.array([1, 1])
    logp, ent = gpu_softmax.token_logprobs(x, t, return_entropy=True, **mask)
    assert np.isnan(logp[0]) and np.isnan(ent[0])
    assert np.isfinite(logp[1]) and np.isfinite(ent[1])
    grad = gpu_softmax.token_logprobs_backward(x, t, np.ones(2), np.ones(2), **mask)
    assert np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()


def test_minus_inf_logits_and_softcapped_infinities():
    x = np.array([[-np.inf, 0.0, 1.0], [np.inf, -np.inf, 0.0]])
    t = np.array([0, 0])
    logp, ent = gpu_softmax.token_logprobs(x[:1], t[:1], return_entropy=True)
    assert np.isneginf(logp[0]) and np.isfinite(ent[0])
    # the soft-cap maps +-inf to +-cap: finite results, zero gradient at the infinities (tanh' = 0)
    logp, ent = gpu_softmax.token_logprobs(x, t, logit_softcap=4.0, return_entropy=True)
    assert np.isfinite(logp).all() and np.isfinite(ent).all()
    grad = gpu_softmax.token_logprobs_backward(x, t, np.ones(2), np.ones(2), logit_softcap=4.0)
    assert grad[1, 0] == 0.0 and grad[1, 1] == 0.0 and np.isfinite(grad).all()


def test_out_of_range_tokens_raise_or_give_nan():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"1 token value\(s\) \(e.g. 4\) outside \[0, 4\)"):
        gpu_softmax.token_logprobs(x, np.array([0, 4, -100]))
    with pytest.raises(ValueError, match="outside"):
        gpu_softmax.token_logprobs_backward(x, np.array([0, -1, 1]), np.ones(3))
    logp = gpu_softmax.token_logprobs(x, np.array([0, 4, -100]), validate=False)
    assert np.isnan(logp[1]) and logp[2] == 0.0 and np.isfinite(logp[0])
    grad = gpu_softmax.token_logprobs_backward(x, np.array([0, 4, -100]), np.ones(3), validate=False)
    assert np.isnan(grad[1]).all() and not np.isnan(grad[0]).any()


BAD_OPTIONS = [
    (dict(temperature=0.0), ValueError, "temperature must be a positive finite number"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature="1"), TypeError, "temperature must be a real number"),
    (dict(temperature=True), TypeError, "temperature"),
    (dict(top_k=0), ValueError, "top_k must be an integer >= 1"),
    (dict(top_k=-3), ValueError, "top_k"),
    (dict(top_k=2.0), TypeError, "top_k must be an integer"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=-0.1), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(logit_softcap=0.0), ValueError, "logit_softcap"),
    (dict(logit_softcap=float("nan")), ValueError, "logit_softcap"),
    (dict(ignore_index=1.5), TypeError, "ignore_index"),
    (dict(return_entropy="yes"), TypeError, "return_entropy"),
    (dict(validate=1), TypeError, "validate"),
]


@pytest.mark.parametrize("opts,exc,msg", BAD_OPTIONS)
def test_bad_options_raise_before_any_compute(monkeypatch, opts, exc, msg):
    def must_not_run(*a, **k):
        raise AssertionError("computed before the options were checked")

    monkeypatch.setattr(reference_rl, "token_logprobs_checked", must_not_run)
    monkeypatch.setattr(reference_rl, "token_logprobs_backward_checked", must_not_run)
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(exc, match=msg):
        gpu_softmax.token_logprobs(x, t, **opts)
    with pytest.raises(exc, match=msg):
        gpu_softmax.token_logprobs_backward(x, t, np.ones(2), **opts)
    with pytest.raises(exc, match=msg):
        trl.token_logprobs(torch.zeros(2, 3), torch.tensor([0, 1]), **opts)
    with pytest.raises(exc, match=msg):
        trl.linear_token_logprobs(torch.zeros(2, 3), torch.zeros(4, 3), torch.tensor([0, 1]), **opts)


BAD_ARGS = [
    (lambda: (np.zeros((2, 3)), np.array([0.0, 1.0])), TypeError, "tokens must hold integer class indices"),
    (lambda: (np.zeros((2, 3)), np.array([0, 1, 2])), ValueError, r"tokens has shape \(3,\)"),
    (lambda: (np.zeros((2, 0)), np.array([0, 1])), ValueError, "empty class axis"),
    (lambda: (np.zeros((2, 3), dtype=np.int32), np.array([0, 1])), TypeError, "logits must be float16"),
    (lambda: (np.float64(1.0), np.array(0)), TypeError, "logits must be a NumPy or CuPy array"),
]


@pytest.mark.parametrize("make,exc,msg", BAD_ARGS)
def test_bad_arrays_raise_clear_errors(make, exc, msg):
    x, t = make()
    with pytest.raises(exc, match=msg):
        gpu_softmax.token_logprobs(x, t)


def test_bad_backward_gradients_raise():
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=r"grad_logp has shape \(3,\)"):
        gpu_softmax.token_logprobs_backward(x, t, np.ones(3))
    with pytest.raises(ValueError, match="grad_entropy has shape"):
        gpu_softmax.token_logprobs_backward(x, t, np.ones(2), np.ones((2, 1)))
    with pytest.raises(TypeError, match="grad_logp must be float16"):
        gpu_softmax.token_logprobs_backward(x, t, np.ones(2, dtype=np.int64))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        gpu_softmax.token_logprobs(x, t, axis=2)


def test_other_axis_and_dtypes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 4))  # classes along axis 1
    t = rng.integers(0, 7, (3, 4))
    opts = dict(temperature=0.8, top_k=3, return_entropy=True)
    logp, ent = gpu_softmax.token_logprobs(x, t, axis=1, **opts)
    last_logp, last_ent = gpu_softmax.token_logprobs(np.moveaxis(x, 1, -1).copy(), t, **opts)
    np.testing.assert_array_equal(logp, last_logp)
    np.testing.assert_array_equal(ent, last_ent)
    grad = gpu_softmax.token_logprobs_backward(x, t, np.ones((3, 4)), axis=1, top_k=3, temperature=0.8)
    last = gpu_softmax.token_logprobs_backward(np.moveaxis(x, 1, -1).copy(), t, np.ones((3, 4)), top_k=3,
                                               temperature=0.8)
    np.testing.assert_array_equal(grad, np.moveaxis(last, -1, 1))
    for dtype, out in [(np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64)]:
        xs = x.astype(dtype)
        assert gpu_softmax.token_logprobs(xs, t, axis=1).dtype == out
        assert gpu_softmax.token_logprobs_backward(xs, t, np.ones((3, 4), dtype), axis=1).dtype == dtype


def test_empty_batches():
    opts = dict(top_k=2, top_p=0.5, return_entropy=True)
    logp, ent = gpu_softmax.token_logprobs(np.zeros((0, 5)), np.zeros(0, dtype=np.int64), **opts)
    assert logp.shape == ent.shape == (0,)
    assert gpu_softmax.token_logprobs_backward(np.zeros((0, 5)), np.zeros(0, dtype=np.int64), np.zeros(0)).shape == (0, 5)
    x = torch.zeros(0, 5, requires_grad=True)
    logp, ent = trl.token_logprobs(x, torch.zeros(0, dtype=torch.long), **opts)
    (logp.sum() + ent.sum()).backward()
    assert x.grad.shape == (0, 5)
    h = torch.zeros(0, 4, requires_grad=True)
    logp = trl.linear_token_logprobs(h, torch.randn(5, 4), torch.zeros(0, dtype=torch.long))
    logp.sum().backward()
    assert logp.shape == (0,) and h.grad.shape == (0, 4)


def test_reference_is_batch_invariant_bitwise():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((37, 301)) * 3
    t = rng.integers(0, 301, 37)
    opts = dict(temperature=0.7, logit_softcap=5.0, top_k=40, top_p=0.9, return_entropy=True)
    logp, ent = gpu_softmax.token_logprobs(x, t, **opts)
    grad = gpu_softmax.token_logprobs_backward(x, t, np.ones(37), np.ones(37), **{**opts, "return_entropy": False})
    for r in (0, 17, 36):
        lp1, e1 = gpu_softmax.token_logprobs(x[r : r + 1], t[r : r + 1], **opts)
        g1 = gpu_softmax.token_logprobs_backward(x[r : r + 1], t[r : r + 1], np.ones(1), np.ones(1),
                                                 **{**opts, "return_entropy": False})
        assert lp1.tobytes() == logp[r : r + 1].tobytes() and e1.tobytes() == ent[r : r + 1].tobytes()
        assert g1.tobytes() == grad[r : r + 1].tobytes()


class _CupyStandIn:
    """Reports itself as cupy.ndarray (the checks dispatch on the type's name and module) and
    has what the checks read: shape, dtype, ndim, device."""

    def __init__(self, a):
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim
        self.device = type("Device", (), {"id": 0})()


_CupyStandIn.__name__ = "ndarray"
_CupyStandIn.__module__ = "cupy"


def test_cupy_arrays_go_to_the_cuda_launchers_after_the_checks(monkeypatch):
    from gpu_softmax._cuda import token_logprobs as launchers

    calls = []
    monkeypatch.setattr(launchers, "token_logprobs", lambda a: calls.append(("fwd", a)) or "logp")
    monkeypatch.setattr(launchers, "token_logprobs_backward", lambda a: calls.append(("bwd", a)) or "grad")
    x = _CupyStandIn(np.zeros((2, 3)))
    t = _CupyStandIn(np.array([0, 1]))
    assert gpu_softmax.token_logprobs(x, t, top_k=2) == "logp"
    assert gpu_softmax.token_logprobs_backward(x, t, _CupyStandIn(np.ones(2))) == "grad"
    assert [(d, a.kind) for d, a in calls] == [("fwd", "cupy"), ("bwd", "cupy")]
    assert calls[0][1].opts.top_k == 2 and calls[1][1].grad_logp is not None
    # the checks run first: no launcher call for a bad option
    with pytest.raises(ValueError, match="top_k"):
        gpu_softmax.token_logprobs(x, t, top_k=0)
    assert len(calls) == 2


# ----------------------------------------------------------------------------------
# torch bridge: logits form


GRADCHECK_OPTS = [
    dict(temperature=0.7),
    dict(logit_softcap=2.0),
    dict(temperature=1.3, logit_softcap=3.0, top_k=4),
    dict(temperature=0.9, top_p=0.8),
    dict(temperature=0.6, logit_softcap=2.5, top_k=5, top_p=0.9),
]


@pytest.mark.parametrize("opts", GRADCHECK_OPTS)
@pytest.mark.parametrize("axis", [-1, 0])
def test_torch_gradcheck_both_outputs(opts, axis):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(9, 5, generator=g, dtype=torch.float64) * 2).movedim(0, axis).contiguous()
    t = x.argmax(axis)  # kept by every mask: its log p is finite and differentiable
    t[1] = -100
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: trl.token_logprobs(x, t, return_entropy=True, axis=axis, **opts), (x,))
    assert torch.autograd.gradcheck(lambda x: trl.token_logprobs(x, t, axis=axis, **opts), (x,))


def test_torch_matches_numpy_reference_and_entropy_only_backward():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 11))
    t = tokens_for(x, rng)
    opts = dict(temperature=0.8, top_k=6, top_p=0.95, logit_softcap=4.0)
    xt = torch.from_numpy(x).requires_grad_()
    logp, ent = trl.token_logprobs(xt, torch.from_numpy(t), return_entropy=True, **opts)
    want = gpu_softmax.token_logprobs(x, t, return_entropy=True, **opts)
    np.testing.assert_array_equal(logp.detach().numpy(), want[0])
    np.testing.assert_array_equal(ent.detach().numpy(), want[1])
    ent.sum().backward()
    np.testing.assert_array_equal(
        xt.grad.numpy(), gpu_softmax.token_logprobs_backward(x, t, np.zeros(5), np.ones(5), **opts))


def test_torch_float32_and_bfloat16_outputs():
    x = torch.randn(3, 6)
    t = torch.tensor([0, 1, 2])
    assert trl.token_logprobs(x, t).dtype == torch.float32
    xb = x.bfloat16().requires_grad_()
    lp = trl.token_logprobs(xb, t)
    assert lp.dtype == torch.float32
    lp.sum().backward()
    assert xb.grad.dtype == torch.bfloat16


def test_torch_vocab_parallel_refuses_cuda_tensors(monkeypatch):
    monkeypatch.setattr(trl._bridge, "device_kind", lambda t: "cuda")
    with pytest.raises(NotImplementedError, match="vocab_parallel_token_logprobs has no CUDA kernel yet"):
        trl._require_cpu(torch.zeros(2, 3), "vocab_parallel_token_logprobs")


def test_torch_exports_and_operators():
    import gpu_softmax.torch as gst

    for name in ("token_logprobs", "linear_token_logprobs", "vocab_parallel_token_logprobs"):
        assert name in gst.__all__ and getattr(gst, name) is getattr(trl, name)
    x = torch.randn(4, 7, dtype=torch.float64)
    t = torch.tensor([0, 3, -100, 6])
    opts = TokenLogprobOptions.checked(top_k=3, temperature=0.8)
    logp, ent, rec = torch.ops.gpu_softmax.token_logprobs(x, t, *opts.op_args())
    assert logp.shape == ent.shape == (4,) and rec.shape == (4, trl.RECORD_WIDTH)
    want = gpu_softmax.token_logprobs(x.numpy(), t.numpy(), return_entropy=True, top_k=3, temperature=0.8)
    np.testing.assert_array_equal(logp.numpy(), want[0])
    np.testing.assert_array_equal(ent.numpy(), want[1])


def test_torch_compile_traces_the_operators_without_graph_breaks():
    x = torch.randn(5, 9, dtype=torch.float32, requires_grad=True)
    t = torch.tensor([1, 2, 3, 4, -100])

    def step(x):
        logp, ent = trl.token_logprobs(x, t, return_entropy=True, temperature=0.7, top_p=0.9)
        return (logp * 2 + ent).sum()

    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    loss = compiled(x)
    loss.backward()
    g = x.grad.clone()
    x.grad = None
    step(x).backward()
    torch.testing.assert_close(g, x.grad, rtol=0, atol=0)
    assert counter.frame_count == 1


def test_torch_bad_tokens_raise():
    with pytest.raises(ValueError, match="outside"):
        trl.token_logprobs(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="tokens must hold integer"):
        trl.token_logprobs(torch.zeros(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        trl.token_logprobs(torch.zeros(2, 3), [0, 1])


# ----------------------------------------------------------------------------------
# torch bridge: linear form


def _linear_inputs(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 5, 8, generator=g, dtype=dtype)
    w = torch.randn(17, 8, generator=g, dtype=dtype) * 0.5
    b = torch.randn(17, generator=g, dtype=dtype)
    t = torch.randint(0, 17, (3, 5), generator=g)
    t[0, 0] = -100
    return h, w, b, t


@pytest.mark.parametrize("chunk_size", [1, 4, 7, None])
@pytest.mark.parametrize("opts", [dict(), dict(temperature=0.7, logit_softcap=3.0, top_k=5, top_p=0.9)])
def test_linear_form_matches_logits_form_and_autograd(chunk_size, opts):
    h, w, b, t = _linear_inputs()
    hs, ws, bs = (v.clone().requires_grad_() for v in (h, w, b))
    logp, ent = trl.linear_token_logprobs(hs, ws, t, linear_bias=bs, chunk_size=chunk_size, return_entropy=True,
                                          **opts)
    logits = (h.reshape(15, 8) @ w.T + b).numpy()
    want_logp, want_ent = gpu_softmax.token_logprobs(logits, t.reshape(15).numpy(), return_entropy=True, **opts)
    np.testing.assert_allclose(logp.detach().reshape(15).numpy(), want_logp, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ent.detach().reshape(15).numpy(), want_ent, rtol=RTOL, atol=ATOL)
    gl = torch.randn(3, 5, dtype=torch.float64)
    ge = torch.randn(3, 5, dtype=torch.float64)
    finite = torch.isfinite(logp)
    (torch.where(finite, logp, 0.0) * gl + ent * ge).sum().backward()
    ref = [v.clone().requires_grad_() for v in (h, w, b)]
    rl, re_ = formula((ref[0].reshape(15, 8) @ ref[1].T + ref[2]), t.reshape(15), **opts)
    (torch.where(torch.isfinite(rl), rl, 0.0) * gl.reshape(15) + re_ * ge.reshape(15)).sum().backward()
    for got, want in zip((hs, ws, bs), ref):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_linear_form_gradcheck():
    h, w, b, t = _linear_inputs(1)
    h, w, b = (v[..., :].clone().requires_grad_() for v in (h[:1, :3], w, b))
    t = t[:1, :3]
    for opts in [dict(temperature=0.8, logit_softcap=2.0), dict(top_k=16)]:
        assert torch.autograd.gradcheck(
            lambda h, w, b: trl.linear_token_logprobs(h, w, t, linear_bias=b, chunk_size=2, return_entropy=True,
                                                      **opts), (h, w, b))


def test_linear_form_never_builds_more_than_a_chunk_of_logits(monkeypatch):
    seen = []
    real = trl.F.linear

    def spy(x, w, b=None):
        seen.append(tuple(x.shape))
        return real(x, w, b)

    monkeypatch.setattr(trl.F, "linear", spy)
    h, w, b, t = _linear_inputs()
    h.requires_grad_()
    logp = trl.linear_token_logprobs(h, w, t, linear_bias=b, chunk_size=4)
    logp.sum().backward()
    assert seen and max(s[0] for s in seen) <= 4 and len(seen) == 2 * 4  # 15 rows: 4 chunks, forward + backward
    assert h.grad is not None and w.grad is None


def test_linear_form_bad_arguments():
    h, w, b, t = _linear_inputs()
    with pytest.raises(ValueError, match="hidden has 8 features"):
        trl.linear_token_logprobs(h, w[:, :7], t)
    with pytest.raises(ValueError, match=r"linear_bias has shape \(16,\)"):
        trl.linear_token_logprobs(h, w, t, linear_bias=b[:16])
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        trl.linear_token_logprobs(h, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="linear_weight has dtype"):
        trl.linear_token_logprobs(h, w.float(), t)
    with pytest.raises(ValueError, match="outside"):
        trl.linear_token_logprobs(h, w, torch.full((3, 5), 17))


# ----------------------------------------------------------------------------------
# torch bridge: vocabulary-parallel form over gloo ranks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VP_OPTIONS = [
    dict(),
    dict(temperature=0.7, logit_softcap=3.0),
    dict(temperature=1.2, top_k=5),
    dict(top_k=1, top_p=1.0),
    dict(top_k=200, logit_softcap=2.0, temperature=0.5),
    dict(top_k=8, top_p=0.7, temperature=0.9),
    dict(top_k=3, top_p=0.95, logit_softcap=2.5),
]


def _sharded(x, t, widths, opts):
    """The vocab-parallel steps over simulated shards (the collectives as np.stack), in rank order."""
    from gpu_softmax import vocab_parallel_rl as vprl

    o = TokenLogprobOptions.checked(**opts)
    vocab, starts = sum(widths), np.cumsum([0] + widths[:-1])
    zs = [vprl.local_scaled(x[:, s : s + w], o) for s, w in zip(starts, widths)]
    tau = None
    if o.top_k is not None:
        tops = np.stack([vprl.local_top_values(z, o.top_k) for z, _ in zs])
        tau = vprl.top_k_threshold(tops, o.top_k)
        if o.top_p is not None and o.top_p < 1.0:
            tau = vprl.top_p_threshold(tops, np.stack([vprl.tie_counts(z, tau) for z, _ in zs]), tau, o.top_p)
    records = np.stack([vprl.partial_stats(z, tau, t, s, vocab, o) for (z, _), s in zip(zs, starts)])
    merged = vprl.merge_stats(records, t, vocab, o)
    gl, ge = np.linspace(-1, 1, len(t)), np.linspace(2, -1, len(t))
    grad = np.concatenate([vprl.local_grad(z, d, tau, t, s, vocab, o, merged, gl, ge)
                           for (z, d), s in zip(zs, starts)], axis=1)
    return merged[0], merged[1], grad, (gl, ge)


@pytest.mark.parametrize("temperature,softcap,top_k,top_p", [c for c in COMBOS if c[3] is None or c[2]])
@pytest.mark.parametrize("widths", [[13], [4, 9], [5, 0, 6, 2]])
def test_vocab_parallel_steps_over_simulated_shards_equal_unsharded(temperature, softcap, top_k, top_p, widths):
    rng = np.random.default_rng(7)
    x = rows_with_ties(rng, rows=8)
    x[2, 4] = 5.0
    x[2, 10] = 5.0  # a tie at the top, across shards
    x[5, 3] = np.nan
    x[6, :] = -np.inf
    x[7, 1] = np.inf
    t = tokens_for(x, rng)
    opts = dict(temperature=temperature, logit_softcap=softcap, top_k=top_k, top_p=top_p)
    logp, ent, grad, (gl, ge) = _sharded(x, t, widths, opts)
    want_logp, want_ent = gpu_softmax.token_logprobs(x, t, return_entropy=True, **opts)
    want_grad = gpu_softmax.token_logprobs_backward(x, t, gl, ge, **opts)
    for got, want in [(logp, want_logp), (ent, want_ent), (grad, want_grad)]:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def _vp_rank_checks(rank: int, world: int) -> None:
    import torch.distributed as dist

    widths = {2: [7, 13], 4: [5, 0, 11, 4]}[world]
    vocab = sum(widths)
    start = sum(widths[:rank])
    rng = np.random.default_rng(99)
    x = rng.standard_normal((6, vocab)) * 2
    x[0, :] = 0.5  # a row of ties
    x[1, [2, 9, 15]] = 4.0  # ties at the top, across shards
    t = rng.integers(0, vocab, 6)
    t[3] = -100
    t[4] = 15
    for opts in VP_OPTIONS:
        local = torch.from_numpy(x[:, start : start + widths[rank]].copy()).requires_grad_()
        logp, ent = trl.vocab_parallel_token_logprobs(local, torch.from_numpy(t), vocab_start=start,
                                                      vocab_size=vocab, return_entropy=True, **opts)
        want_logp, want_ent = gpu_softmax.token_logprobs(x, t, return_entropy=True, **opts)
        np.testing.assert_array_equal(np.isneginf(logp.detach().numpy()), np.isneginf(want_logp))
        np.testing.assert_allclose(logp.detach().numpy(), want_logp, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(ent.detach().numpy(), want_ent, rtol=RTOL, atol=ATOL)
        gl, ge = rng.standard_normal(6), rng.standard_normal(6)
        (torch.where(torch.isfinite(logp), logp, 0.0) * torch.from_numpy(gl) + ent * torch.from_numpy(ge)).sum().backward()
        want = gpu_softmax.token_logprobs_backward(x, t, gl, ge, **opts)[:, start : start + widths[rank]]
        np.testing.assert_allclose(local.grad.numpy(), want, rtol=RTOL, atol=ATOL)
    empty = torch.zeros(0, widths[rank], dtype=torch.float64, requires_grad=True)
    logp, ent = trl.vocab_parallel_token_logprobs(empty, torch.zeros(0, dtype=torch.long), vocab_start=start,
                                                  vocab_size=vocab, top_k=2, top_p=0.5, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    assert logp.shape == (0,) and empty.grad.shape == (0, widths[rank])
    with pytest.raises(NotImplementedError, match="top_p only together with top_k"):
        trl.vocab_parallel_token_logprobs(local, torch.from_numpy(t), vocab_start=start, vocab_size=vocab, top_p=0.9)
    with pytest.raises(ValueError, match="outside"):
        trl.vocab_parallel_token_logprobs(local, torch.full((6,), vocab), vocab_start=start, vocab_size=vocab)
    with pytest.raises(ValueError, match="do not lie inside the vocabulary"):
        trl.vocab_parallel_token_logprobs(local, torch.from_numpy(t), vocab_start=vocab + 1, vocab_size=vocab)
    dist.barrier()


def _vp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _vp_rank_checks(rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_over_gloo_ranks_equals_unsharded(world):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_vp_worker, args=(world, _free_port()), nprocs=world, join=True)


def test_vocab_parallel_needs_an_initialised_process_group():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
        trl.vocab_parallel_token_logprobs(torch.zeros(2, 3), torch.tensor([0, 1]), vocab_start=0, vocab_size=3)


# ----------------------------------------------------------------------------------
# docstrings and the worked example


def test_docstring_examples():
    import doctest
    import sys

    result = doctest.testmod(sys.modules["gpu_softmax.rl"], optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


def test_ppo_example_ratio_starts_at_one_and_reward_rises(capsys, monkeypatch):
    result = load_example("ppo_token_logprobs_torch", monkeypatch).main(["--rounds", "8", "--batch", "64", "--epochs", "3"])
    assert "mean reward" in capsys.readouterr().out
    # old and new log-probs come from the sampler's distribution: bitwise the same before an update
    assert result["first_ratio_error"] == 0.0
    assert len(result["rewards"]) == 8
    assert np.mean(result["rewards"][-2:]) > np.mean(result["rewards"][:2])
