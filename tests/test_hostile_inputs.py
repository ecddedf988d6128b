"""Hostile inputs (issue #15): each used to give a wrong answer or an unclear error.

Items 1-2 (label-smoothing overflow in the kernels, vocab-parallel cancellation) are
checked on the emulator (tests/emulator/run.py "overflow", run_vocab_parallel.py
"overflow") and in tests/test_vocab_parallel.py; items 6-7 (vocab-parallel misuse) in
tests/test_vocab_parallel.py with gloo ranks. Here: the NumPy/CuPy API and the torch
bridge.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpu_softmax as gs
from gpu_softmax import reference

MODULES = pytest.mark.parametrize("mod", [gs, reference], ids=["gpu_softmax", "reference"])
ALL_FNS = ("softmax", "log_softmax", "logsumexp", "cross_entropy", "cross_entropy_with_grad")


def _call(mod, fn, x):
    if fn.startswith("cross_entropy"):
        return getattr(mod, fn)(x, np.zeros(x.shape[0], np.int64))
    return getattr(mod, fn)(x)


# ----------------------------------------------------------------------------------
# item 3: NumPy array subclasses (masked arrays, np.matrix) were accepted and wrong


@MODULES
@pytest.mark.parametrize("fn", ALL_FNS)
def test_masked_array_is_refused(mod, fn):
    x = np.ma.masked_array([[0.0, 1.0, 2.0]], mask=[[True, False, False]])
    with pytest.raises(TypeError, match=r"numpy\.ma\.MaskedArray, a NumPy array subclass .*mask would be ignored"):
        _call(mod, fn, x)


@MODULES
@pytest.mark.parametrize("fn", ALL_FNS)
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_matrix_is_refused(mod, fn):
    with pytest.raises(TypeError, match=r"x is a numpy\.matrix|logits is a numpy\.matrix"):
        _call(mod, fn, np.matrix(np.zeros((4, 5))))


@MODULES
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_subclass_refused_for_every_array_argument(mod):
    x = np.zeros((4, 5))
    t = np.zeros(4, np.int64)
    with pytest.raises(TypeError, match="target is a numpy.ma.MaskedArray"):
        mod.cross_entropy(x, np.ma.masked_array(t))
    with pytest.raises(TypeError, match="weight is a numpy.ma.MaskedArray"):
        mod.cross_entropy(x, t, weight=np.ma.masked_array(np.ones(5)))
    if mod is gs:
        with pytest.raises(TypeError, match="out is a numpy.matrix"):
            mod.softmax(x, out=np.matrix(np.zeros((4, 5))))


def test_memmap_still_accepted(tmp_path):
    m = np.memmap(tmp_path / "x.bin", dtype=np.float64, mode="w+", shape=(3, 4))
    m[:] = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(gs.logsumexp(m), reference.logsumexp(np.asarray(m)))


# ----------------------------------------------------------------------------------
# item 8: big-endian floats were rejected as "got dtype >f4"


@MODULES
@pytest.mark.parametrize("fn", ALL_FNS)
@pytest.mark.parametrize("dt,fix", [(">f4", "=f4"), (">f8", "=f8"), (">f2", "=f2")])
def test_big_endian_float_names_the_fix(mod, fn, dt, fix):
    x = np.zeros((2, 3), dt)
    with pytest.raises(TypeError, match=rf"has dtype {dt}: big-endian float\d+ is not supported; use "
                                        rf"(x|logits)\.astype\('{fix}'\)"):
        _call(mod, fn, x)


@MODULES
def test_big_endian_soft_target_and_weight(mod):
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"target has dtype >f8: big-endian float64 is not supported"):
        mod.cross_entropy(x, np.full((2, 3), 1 / 3, ">f8"))
    with pytest.raises(TypeError, match=r"weight has dtype >f4: big-endian float32 is not supported"):
        mod.cross_entropy(x, np.zeros(2, np.int64), weight=np.ones(3, ">f4"))


# ----------------------------------------------------------------------------------
# item 11: logit_softcap had two rules and two messages (tests/test_errors.py has the
# full table); a cap of inf used to pass as "in [0, inf)" and give NaN


@MODULES
@pytest.mark.parametrize("cap", [0, -1, float("inf"), float("nan")])
def test_logit_softcap_one_message(mod, cap):
    with pytest.raises(ValueError, match=r"^logit_softcap must be a positive finite number \(or None"):
        mod.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), logit_softcap=cap)


# ----------------------------------------------------------------------------------
# item 4 (NumPy/CuPy API): inplace=True over logits whose elements share memory


def test_inplace_refuses_overlapping_logits():
    buf = np.random.default_rng(0).standard_normal(9)
    x = np.lib.stride_tricks.as_strided(buf, (4, 6), (8, 8))
    t = np.array([0, 1, 2, 3])
    before = buf.copy()
    with pytest.raises(ValueError, match=r"inplace=True .*needs logits whose elements do not share memory"):
        gs.cross_entropy_with_grad(x, t, inplace=True)
    np.testing.assert_array_equal(buf, before)
    z = np.lib.stride_tricks.as_strided(buf, (4, 6), (0, 8))  # every row the same memory
    with pytest.raises(ValueError, match="do not share memory"):
        gs.cross_entropy_with_grad(z, t, inplace=True)
    # out of place on the same views is fine and right
    loss, grad = gs.cross_entropy_with_grad(x, t)
    want = reference.cross_entropy_with_grad(np.ascontiguousarray(x), t)
    np.testing.assert_allclose(loss, want[0])
    np.testing.assert_allclose(grad, want[1])


def test_self_overlap_rule():
    from gpu_softmax._checks import may_self_overlap

    assert not may_self_overlap((4, 6), (48, 8), 8)  # C-contiguous float64
    assert not may_self_overlap((4, 6), (8, 32), 8)  # Fortran order
    assert not may_self_overlap((4, 3), (96, -16), 8)  # reversed, strided
    assert not may_self_overlap((1, 5), (0, 8), 8) and not may_self_overlap((0, 5), (0, 0), 8)
    assert may_self_overlap((4, 6), (8, 8), 8)
    assert may_self_overlap((4, 6), (0, 8), 8)
    assert may_self_overlap((3, 4), (24, 8), 8)  # rows 3 elements apart, 4 long
    assert may_self_overlap((2, 2), (6, 4), 8)  # strides not a multiple of the item size


# ----------------------------------------------------------------------------------
# item 1 on a GPU (the emulator runs the same cases on the CPU: "overflow" suites)


@pytest.mark.gpu
@pytest.mark.parametrize("cols", [5, 300, 4099, 40000], ids=lambda c: f"C{c}")  # warp, warp, block, stream
@pytest.mark.parametrize("dtype,big", [(np.float32, 1e36), (np.float64, 1e305), (np.float16, 6e4)])
def test_gpu_label_smoothing_at_huge_logits(cp, cols, dtype, big, rng):
    x = np.full((3, cols), big, dtype)
    t = rng.integers(0, cols, 3)
    w = rng.uniform(0.1, 2, cols).astype(dtype)
    tt = rng.random((3, cols))
    tt = (tt / tt.sum(-1, keepdims=True)).astype(dtype)
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    for target, kw in ((t, {"label_smoothing": 0.1}), (t, {"label_smoothing": 0.3, "weight": w}),
                       (tt, {"label_smoothing": 0.1})):
        want = reference.cross_entropy(x, target, reduction="none", **kw)
        kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        got = gs.cross_entropy(cp.asarray(x), cp.asarray(target), reduction="none", validate=False, **kwd)
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=rtol, err_msg=f"{dtype.__name__} {cols} {kw}")


# ----------------------------------------------------------------------------------
# the torch bridge: items 4, 5, 9, 10

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import gpu_softmax.torch as gst  # noqa: E402


def test_torch_inplace_backward_refuses_overlapping_view():
    """item 4: as_strided(b * 1, (4, 6), (1, 1)) gave b.grad[2] = 0.0389 instead of -0.2117."""
    b = torch.randn(9, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"inplace_backward=True in gpu_softmax\.torch\) needs logits whose "
                                         r"elements do not share memory"):
        gst.cross_entropy(torch.as_strided(b * 1, (4, 6), (1, 1)), t, inplace_backward=True)
    with pytest.raises(ValueError, match="do not share memory"):
        gst.cross_entropy((b[:6] * 1).expand(4, 6), t, inplace_backward=True)
    # out of place on the same view: torch's gradient
    gst.cross_entropy(torch.as_strided(b * 1, (4, 6), (1, 1)), t).backward()
    got = b.grad.clone()
    b.grad = None
    F.cross_entropy(torch.as_strided(b * 1, (4, 6), (1, 1)), t).backward()
    torch.testing.assert_close(got, b.grad)
    # non-overlapping views (transposed, strided) still run in place, with torch's gradient
    for make_view in (lambda y: y.t(), lambda y: y[:, ::2]):
        a = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
        tt = torch.arange(make_view(a).shape[0]) % 4
        gst.cross_entropy(make_view(a * 1), tt, inplace_backward=True).backward()
        got = a.grad.clone()
        a.grad = None
        F.cross_entropy(make_view(a * 1), tt).backward()
        torch.testing.assert_close(got, a.grad)


def test_torch_compile_inplace_backward_with_later_use_of_logits():
    """item 5: loss + (logits ** 2).sum() under torch.compile gave 3.69 instead of 90.34."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    W = torch.randn(4, 7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0, 3, 6, 1, 2])

    def step(x, W, t, fn):
        logits = x @ W
        return fn(logits, t) + (logits ** 2).sum()

    want = step(x, W, t, F.cross_entropy)
    want.backward()
    want_grad = W.grad.clone()
    W.grad = None
    compiled = torch.compile(lambda x, W, t: step(x, W, t, lambda a, b: gst.cross_entropy(a, b, inplace_backward=True)),
                             backend="aot_eager", fullgraph=True)
    got = compiled(x, W, t)
    torch.testing.assert_close(got, want)
    got.backward()
    torch.testing.assert_close(W.grad, want_grad)


@pytest.mark.parametrize("soft", [False, True])
def test_torch_func_grad_names_the_transform(soft):
    """item 9: torch.func.grad said "got dtype object" (hard) or "must override setup_context" (soft)."""
    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.softmax(torch.randn(4, 6, dtype=torch.float64), -1) if soft else torch.tensor([0, 1, 2, 3])
    with pytest.raises(NotImplementedError, match=r"cross_entropy does not support torch\.func\.grad"):
        torch.func.grad(lambda a: gst.cross_entropy(a, t))(x)
    with pytest.raises(NotImplementedError, match=r"cross_entropy does not support torch\.func\.jvp"):
        torch.func.jvp(lambda a: gst.cross_entropy(a, t), (x,), (x,))
    with pytest.raises(NotImplementedError, match=r"logsumexp does not support torch\.func\.grad"):
        torch.func.grad(lambda a: gst.logsumexp(a).sum())(x)
    # grad outside, vmap inside: still named
    with pytest.raises(NotImplementedError, match=r"softmax does not support torch\.func\.grad"):
        torch.func.grad(lambda a: torch.func.vmap(gst.softmax)(a)[:, 0].sum())(x)


def test_torch_func_vmap_is_supported():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 6, dtype=torch.float64, generator=g)
    t = torch.randint(0, 6, (3, 4), generator=g)
    got = torch.func.vmap(lambda a, b: gst.cross_entropy(a, b, label_smoothing=0.1))(x, t)
    want = torch.stack([F.cross_entropy(x[i], t[i], label_smoothing=0.1) for i in range(3)])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.func.vmap(gst.log_softmax)(x), torch.log_softmax(x, -1))


@pytest.mark.parametrize("dt", [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)])
def test_torch_float8_names_the_dtype(dt):
    """item 10: float8 tensors were reported as "got dtype object"."""
    x = torch.zeros(2, 3).to(dt)
    name = str(dt).replace(".", r"\.")
    with pytest.raises(TypeError, match=rf"logits must be float16, float32 or float64, got dtype {name}"):
        gst.cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=rf"input must be float16, float32 or float64, got dtype {name}"):
        gst.softmax(x)
    with pytest.raises(TypeError, match=rf"target must hold integer .* got dtype {name}"):
        gst.cross_entropy(torch.zeros(2, 3), x)
