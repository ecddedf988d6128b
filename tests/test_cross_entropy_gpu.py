"""GPU tests of the fused cross-entropy kernels against the NumPy reference.

Each case draws fresh random logits, runs ours on CuPy and the reference on the
same values (copied back to the host), and compares the loss, the gradient and the
row logsumexp. Freshly allocated outputs are poisoned: the memory pool is filled
with blocks of 0xFF bytes (NaN in every float format) of the output's size just
before the call, so an element the kernel never writes shows as NaN. Gradient
entries are held to floors from their own terms (gpu_softmax.testing.ce_grad_atol).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import gpu_softmax as gs
from gpu_softmax import reference
from gpu_softmax._checks import result_dtype
from gpu_softmax.testing import assert_close, ce_grad_atol, poison_pool, tolerance

from conftest import GPU_TEST_MAX_ELEMENTS

# The option specs are the emulated suites' (tests/emulator/ce_cases.py, NumPy only).
sys.path.insert(0, str(Path(__file__).resolve().parent / "emulator"))
from ce_cases import draw_options, options_alone  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = ["float32", "float16", "float64"]
CLASSES = [2, 10, 1000, 32000, 50257, 128256, 151936, 262144]
ROWS = [1, 7, 4096]


def _logits(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _targets(rng, rows, classes, ignore_frac=0.1, ignore_index=-100, dtype=np.int64):
    t = rng.integers(0, classes, size=rows)
    t[rng.random(rows) < ignore_frac] = ignore_index
    return t.astype(dtype)


def _compare(cp, x_np, t_np, dtype, what="", **kw):
    """Run ours (with grad, and loss only) and the reference; assert they agree."""
    x = cp.asarray(x_np)
    t = cp.asarray(t_np)
    kw_dev = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    poison_pool(cp, x.nbytes)
    loss, grad, lse = gs.cross_entropy_with_grad(x, t, return_logsumexp=True, validate=False, **kw_dev)
    ref_kw = {k: v for k, v in kw.items()}
    want_loss, want_grad, want_lse = reference.cross_entropy_with_grad(
        x_np, t_np, return_logsumexp=True, validate=False, **ref_kw)
    rdt = result_dtype(dtype)
    assert loss.dtype == rdt and grad.dtype == x.dtype and lse.dtype == rdt
    assert grad.shape == x.shape and loss.shape == want_loss.shape
    rtol, _ = tolerance(dtype)
    lrtol, _ = tolerance(rdt)
    # Losses are lse - x_t: a float32 result carries an absolute error of about
    # rtol * |lse| from the cancellation, whatever the size of the loss itself.
    lse_scale = float(np.nanmax(np.abs(want_lse))) if np.isfinite(want_lse).any() else 1.0
    assert_close(cp.asnumpy(loss), want_loss, rdt, what=f"loss {what}", atol=lrtol * (1 + lse_scale))
    assert_close(cp.asnumpy(lse), want_lse, rdt, what=f"lse {what}", atol=lrtol * (1 + lse_scale))
    # Gradient elements are (p * sum(q) - q) * scale (+ z-loss, times the cap's
    # derivative): each one's floor is rtol times its own terms, capped at the old
    # row-wide floor rtol * max|grad| (no entry's bound loosens).
    g_scale = float(np.nanmax(np.abs(want_grad))) if np.isfinite(want_grad).any() else 1.0
    assert_close(cp.asnumpy(grad), want_grad, dtype, what=f"grad {what}",
                 atol=ce_grad_atol(x_np, t_np, rtol, at_most=rtol * g_scale, **kw))

    loss_only = gs.cross_entropy(x, t, validate=False, **{k: v for k, v in kw_dev.items() if k != "grad_output"})
    assert_close(cp.asnumpy(loss_only), want_loss if "grad_output" not in kw else
                 reference.cross_entropy(x_np, t_np, validate=False,
                                         **{k: v for k, v in kw.items() if k != "grad_output"}),
                 rdt, what=f"loss-only {what}", atol=lrtol * (1 + lse_scale))
    return loss, grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES)
@pytest.mark.parametrize("rows", ROWS)
def test_hard_labels_every_size(cp, rng, dtype, classes, rows):
    if rows * classes > GPU_TEST_MAX_ELEMENTS:
        rows = max(8, GPU_TEST_MAX_ELEMENTS // classes)  # keep the float64 reference affordable
    x = _logits(rng, (rows, classes), dtype)
    t = _targets(rng, rows, classes)
    _compare(cp, x, t, dtype, what=f"{rows}x{classes}")


OPTION_SETS = [
    *options_alone(),
    {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2, "logit_softcap": 4.0, "reduction": "mean"},
    {"weight": "w", "label_smoothing": 0.05, "reduction": "none", "grad_output": "rows"},
    {"label_smoothing": 1.0, "reduction": "sum"},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [10, 1000, 50257])
@pytest.mark.parametrize("opts", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "plain")
def test_options_alone_and_combined(cp, rng, dtype, classes, opts):
    rows = 37
    x = _logits(rng, (rows, classes), dtype)
    kw = draw_options(opts, rows, classes, dtype, rng, result_dtype(dtype))
    t = _targets(rng, rows, classes, ignore_index=kw.get("ignore_index", -100))
    _compare(cp, x, t, dtype, what=str(opts), **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [2, 1000, 32000, 151936])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "weight": "w", "z_loss": 1e-3},
                                  {"reduction": "none", "logit_softcap": 10.0}], ids=["plain", "smooth-w-z", "none-cap"])
def test_soft_labels(cp, rng, dtype, classes, opts):
    rows = 5
    x = _logits(rng, (rows, classes), dtype)
    t = rng.random((rows, classes))
    t = (t / t.sum(-1, keepdims=True)).astype(dtype)
    kw = draw_options(opts, rows, classes, dtype, rng, result_dtype(dtype))
    _compare(cp, x, t, dtype, what=f"soft {opts}", **kw)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_int32_targets_non_last_axis_and_unaligned_view(cp, rng, dtype):
    # (N, C, d) logits with the class axis 1, as torch lays them out
    x = _logits(rng, (3, 1000, 5), dtype)
    t = rng.integers(0, 1000, size=(3, 5)).astype(np.int32)
    _compare(cp, x, t, dtype, what="axis=1", axis=1)
    # rows that start one element past a 16-byte boundary
    buf = _logits(rng, (7 * 1001 + 1,), dtype)
    xv_np = buf[1:].reshape(7, 1001)
    tv = _targets(rng, 7, 1001)
    xv = cp.asarray(buf)[1:].reshape(7, 1001)
    loss, grad = gs.cross_entropy_with_grad(xv, cp.asarray(tv))
    want_loss, want_grad = reference.cross_entropy_with_grad(xv_np, tv)
    assert_close(cp.asnumpy(grad), want_grad, dtype, what="unaligned grad",
                 atol=ce_grad_atol(xv_np, tv, tolerance(dtype)[0], at_most=tolerance(dtype)[0]))
    assert_close(cp.asnumpy(loss), want_loss, "float32", what="unaligned loss", atol=1e-4)


@pytest.mark.parametrize("classes", [10, 4000, 128256])
def test_ignored_rows_and_all_ignored(cp, rng, classes):
    x = _logits(rng, (9, classes), "float32")
    t = np.full(9, -100)
    loss, grad = gs.cross_entropy_with_grad(cp.asarray(x), cp.asarray(t))
    assert np.isnan(float(loss)), "mean over all-ignored targets is NaN, as in PyTorch"
    assert float(cp.abs(grad).max()) == 0.0
    loss_sum = gs.cross_entropy(cp.asarray(x), cp.asarray(t), reduction="sum")
    assert float(loss_sum) == 0.0


@pytest.mark.memcheck
@pytest.mark.parametrize("classes", [10, 4000, 128256])
def test_invalid_targets_with_validate_false_give_nan_not_a_crash(cp, rng, classes):
    x = _logits(rng, (6, classes), "float32")
    t = np.array([0, classes, -5, 1, -100, 2**40])
    loss, grad = gs.cross_entropy_with_grad(cp.asarray(x), cp.asarray(t), validate=False, reduction="none")
    loss = cp.asnumpy(loss)
    grad = cp.asnumpy(grad)
    assert np.isnan(loss[[1, 2, 5]]).all() and np.isfinite(loss[[0, 3]]).all() and loss[4] == 0.0
    assert np.isnan(grad[[1, 2, 5]]).all() and np.isfinite(grad[[0, 3, 4]]).all()
    mean = gs.cross_entropy(cp.asarray(x), cp.asarray(t), validate=False)
    assert np.isnan(float(mean))
    with pytest.raises(ValueError, match="outside"):
        gs.cross_entropy(cp.asarray(x), cp.asarray(t))


@pytest.mark.memcheck
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [33, 8191, 131072])
def test_repeat_calls_are_bit_identical_and_inplace_matches(cp, rng, dtype, classes):
    x = cp.asarray(_logits(rng, (64, classes), dtype))
    t = cp.asarray(_targets(rng, 64, classes))
    l1, g1 = gs.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    l2, g2 = gs.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    assert cp.asnumpy(l1).tobytes() == cp.asnumpy(l2).tobytes()
    assert cp.array_equal(g1, g2)
    xi = x.copy()
    l3, g3 = gs.cross_entropy_with_grad(xi, t, label_smoothing=0.1, inplace=True)
    assert g3 is xi
    assert cp.asnumpy(l3).tobytes() == cp.asnumpy(l1).tobytes()
    assert cp.array_equal(g3, g1)


def test_inplace_bad_target_raises_before_writing(cp, rng):
    x = cp.asarray(_logits(rng, (4, 50), "float32"))
    before = x.copy()
    with pytest.raises(ValueError, match="outside"):
        gs.cross_entropy_with_grad(x, cp.asarray(np.array([0, 1, 50, 2])), inplace=True)
    assert cp.array_equal(x, before)


def test_nan_and_inf_rows(cp):
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf, -np.inf, -np.inf], [1.0, 2.0, -np.inf]],
                 dtype=np.float32)
    t = np.array([0, 1, 2, 0])
    for kw in ({}, {"label_smoothing": 0.1}, {"logit_softcap": 3.0}):
        loss, grad = gs.cross_entropy_with_grad(cp.asarray(x), cp.asarray(t), reduction="none", **kw)
        want_loss, want_grad = reference.cross_entropy_with_grad(x, t, reduction="none", **kw)
        assert_close(cp.asnumpy(loss), want_loss, "float32", what=f"loss {kw}")
        assert_close(cp.asnumpy(grad), want_grad, "float32", what=f"grad {kw}",
                     atol=ce_grad_atol(x, t, tolerance("float32")[0], at_most=1e-6, reduction="none", **kw))


def test_grad_output_on_device_needs_no_host_value(cp, rng):
    x = _logits(rng, (16, 300), "float32")
    t = _targets(rng, 16, 300)
    g = cp.asarray(np.float32(0.5))
    _, grad = gs.cross_entropy_with_grad(cp.asarray(x), cp.asarray(t), grad_output=g)
    _, want = reference.cross_entropy_with_grad(x, t, grad_output=0.5)
    assert_close(cp.asnumpy(grad), want, "float32", atol=ce_grad_atol(x, t, 1e-5, grad_output=0.5, at_most=1e-6))


def test_runs_on_a_non_default_stream(cp, rng):
    x = _logits(rng, (128, 32000), "float32")
    t = _targets(rng, 128, 32000)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        loss, grad = gs.cross_entropy_with_grad(cp.asarray(x), cp.asarray(t), validate=False)
        s.synchronize()
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t)
    assert_close(cp.asnumpy(grad), want_grad, "float32", atol=ce_grad_atol(x, t, 1e-5, at_most=1e-6))


def test_more_than_2_31_logits(cp, rng):
    rows, classes = 16448, 131072  # 2**31 + 2**22 float16 logits, 4 GiB
    free, _ = cp.cuda.Device().mem_info
    if free < 3 * rows * classes * 2 + (1 << 30):
        pytest.skip(f"needs ~{3 * rows * classes * 2 / 2**30:.0f} GiB free on the GPU, {free / 2**30:.1f} GiB free")
    x = cp.random.standard_normal((rows, classes), dtype=cp.float32).astype(cp.float16)
    t = cp.asarray(_targets(rng, rows, classes))
    loss, grad = gs.cross_entropy_with_grad(x, t, reduction="none", validate=False)
    for r in (0, rows // 2, rows - 1):  # check rows at both ends of the 2**31 boundary
        x_np = cp.asnumpy(x[r:r + 1])
        t_np = cp.asnumpy(t[r:r + 1])
        want_loss, want_grad = reference.cross_entropy_with_grad(x_np, t_np, reduction="none")
        assert_close(cp.asnumpy(grad[r:r + 1]), want_grad, "float16", what=f"row {r}",
                     atol=ce_grad_atol(x_np, t_np, 2e-3, reduction="none", at_most=2e-3 * np.abs(want_grad).max()))
        assert_close(cp.asnumpy(loss[r:r + 1]), want_loss, "float32", what=f"row {r}", atol=1e-4)


@pytest.mark.parametrize("classes", [7, 3000, 128256])
def test_dominating_target_keeps_relative_accuracy(cp, rng, classes):
    """The loss of a confidently right row is log(1 + tiny): no absolute floor."""
    x = (rng.standard_normal((5, classes)) - 20.0).astype(np.float32)
    x[:, 1] = rng.uniform(-1.0, 1.0, 5)
    t = np.ones(5, dtype=np.int64)
    loss = gs.cross_entropy(cp.asarray(x), cp.asarray(t), reduction="none")
    assert_close(cp.asnumpy(loss), reference.cross_entropy(x, t, reduction="none"), "float32")
