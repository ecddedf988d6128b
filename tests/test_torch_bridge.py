"""gpu_softmax.torch on CPU tensors (computed through the NumPy reference) against
torch.nn.functional: every cross-entropy option and input shape, forward and
backward, float64/float32 tightly and float16/bfloat16 loosely; z_loss and
logit_softcap against an explicit torch formula; gradcheck; in-place safety;
CrossEntropyLoss; torch.compile.

Skipped where torch is not installed.
"""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax.options import CEOptions  # noqa: E402
from torch_z_loss import add_z_loss  # noqa: E402

C = 7

# (name, kwargs for both sides, target kind)
OPTIONS = [
    ("plain", {}, "hard"),
    ("weight", {"weight": True}, "hard"),
    ("ignore_index", {"ignore_index": 3}, "hard"),
    ("default_ignore", {}, "hard_ignored"),
    ("label_smoothing", {"label_smoothing": 0.2}, "hard_ignored"),
    ("weight_smoothing_ignore", {"weight": True, "label_smoothing": 0.1}, "hard_ignored"),
    ("soft", {}, "soft"),
    ("soft_weight_smoothing", {"weight": True, "label_smoothing": 0.3}, "soft"),
]
SHAPES = [(5, C), (C,), (3, C, 2, 2)]
REDUCTIONS = ["mean", "sum", "none"]


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def make(shape, kind, dtype=torch.float64, seed=0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    cd = class_dim(shape)
    reduced = shape[:cd] + shape[cd + 1:]
    if kind == "soft":
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=cd).to(dtype)
    else:
        t = torch.randint(0, shape[cd], reduced, generator=g)
        if kind == "hard_ignored" and t.numel() > 1:
            t.view(-1)[1] = ignore_index
            t.view(-1)[-1] = ignore_index
    return x, t


def options(kw, dtype):
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = torch.linspace(0.5, 2.0, C, dtype=torch.float64).to(dtype)
    return kw


def run(fn, x, t, grad_output, **kw):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, t, **kw)
    (loss * grad_output).sum().backward()
    return loss.detach(), x.grad


def grad_output_for(loss_shape, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(loss_shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


def assert_close(actual, expected, rtol, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")


# ----------------------------------------------------------------------------------
# cross entropy against F.cross_entropy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,kw,kind", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_cross_entropy_matches_torch(name, kw, kind, shape, reduction, dtype):
    x, t = make(shape, kind, dtype, ignore_index=kw.get("ignore_index", -100))
    kw = options(kw, dtype)
    expected = F.cross_entropy(x, t, reduction=reduction, **kw)
    go = grad_output_for(expected.shape, dtype)
    e_loss, e_grad = run(F.cross_entropy, x, t, go, reduction=reduction, **kw)
    a_loss, a_grad = run(gst.cross_entropy, x, t, go, reduction=reduction, **kw)
    assert a_loss.dtype == e_loss.dtype and a_grad.dtype == e_grad.dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    assert_close(a_loss, e_loss, what="loss", **tol)
    assert_close(a_grad, e_grad, what="grad", **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,kw,kind", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_cross_entropy_half_precision(name, kw, kind, shape, reduction, dtype):
    """16-bit tensors: the loss and gradient keep the input dtype; the expected values
    are torch's in float32 on the same (rounded) inputs, rounded to the dtype."""
    x, t = make(shape, kind, dtype, ignore_index=kw.get("ignore_index", -100))
    kw = options(kw, dtype)
    go = grad_output_for(F.cross_entropy(x.float(), t.float() if kind == "soft" else t,
                                         reduction=reduction).shape, dtype)
    kw32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    t32 = t.float() if kind == "soft" else t
    e_loss, e_grad = run(F.cross_entropy, x.float(), t32, go.float(), reduction=reduction, **kw32)
    a_loss, a_grad = run(gst.cross_entropy, x, t, go, reduction=reduction, **kw)
    assert a_loss.dtype == dtype and a_grad.dtype == dtype
    rtol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert_close(a_loss, e_loss.to(dtype), rtol=rtol, atol=rtol, what="loss")
    assert_close(a_grad, e_grad.to(dtype), rtol=rtol, atol=rtol * 0.1, what="grad")


def torch_extras(x, t, *, reduction, z_loss=0.0, logit_softcap=None, ignore_index=-100, **kw):
    """The documented formula from torch ops: F.cross_entropy on softcapped logits plus
    z_loss * logsumexp^2 per non-ignored row; under mean the z term is divided by the
    number of non-ignored rows."""
    cd = class_dim(tuple(x.shape))
    xc = x if logit_softcap is None else logit_softcap * torch.tanh(x / logit_softcap)
    loss = F.cross_entropy(xc, t, reduction=reduction, ignore_index=ignore_index, **kw)
    if z_loss:
        lse = torch.logsumexp(xc, dim=cd)
        valid = torch.ones_like(lse, dtype=torch.bool) if t.is_floating_point() else t != ignore_index
        loss = add_z_loss(loss, lse, valid, z_loss, reduction)
    return loss


EXTRAS = [
    {"z_loss": 1e-2},
    {"logit_softcap": 2.5},
    {"z_loss": 0.1, "logit_softcap": 4.0, "label_smoothing": 0.1},
    {"z_loss": 0.05, "weight": True},
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["hard_ignored", "soft"])
@pytest.mark.parametrize("extra", EXTRAS, ids=lambda e: "+".join(e))
def test_z_loss_and_softcap_match_formula(extra, kind, shape, reduction):
    x, t = make(shape, kind)
    kw = options(extra, torch.float64)
    e = torch_extras(x, t, reduction=reduction, **kw)
    go = grad_output_for(e.shape, torch.float64)
    e_loss, e_grad = run(lambda x, t, **k: torch_extras(x, t, **k), x, t, go, reduction=reduction, **kw)
    a_loss, a_grad = run(gst.cross_entropy, x, t, go, reduction=reduction, **kw)
    assert_close(a_loss, e_loss, rtol=1e-12, atol=1e-12, what="loss")
    assert_close(a_grad, e_grad, rtol=1e-12, atol=1e-12, what="grad")


GRADCHECK = [
    {},
    {"weight": True},
    {"label_smoothing": 0.2},
    {"reduction": "sum", "weight": True, "label_smoothing": 0.1},
    {"reduction": "none"},
    {"z_loss": 0.1},
    {"logit_softcap": 3.0},
    {"z_loss": 0.05, "logit_softcap": 2.0, "label_smoothing": 0.1, "weight": True},
]


@pytest.mark.parametrize("shape", [(4, C), (C,), (2, C, 3)], ids=str)
@pytest.mark.parametrize("kind", ["hard_ignored", "soft"])
@pytest.mark.parametrize("opts", GRADCHECK, ids=lambda o: "+".join(o) or "plain")
def test_cross_entropy_gradcheck(opts, kind, shape):
    x, t = make(shape, kind)
    kw = options(opts, torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: gst.cross_entropy(x, t, **kw), (x,))


def test_ignored_rows_get_exact_zero_gradient_even_with_nan_logits():
    x = torch.randn(3, C, dtype=torch.float64)
    x[1] = float("nan")
    t = torch.tensor([1, -100, 2])
    loss, grad = run(gst.cross_entropy, x, t, 1.0)
    assert torch.isfinite(loss)
    assert torch.equal(grad[1], torch.zeros(C, dtype=torch.float64))


def test_all_ignored_mean_is_nan_as_torch():
    x = torch.randn(3, C, dtype=torch.float64)
    t = torch.full((3,), -100)
    assert torch.isnan(gst.cross_entropy(x, t)) and torch.isnan(F.cross_entropy(x, t))


def test_grad_output_scales_saved_gradient():
    x, t = make((5, C), "hard")
    a_loss, a_grad = run(gst.cross_entropy, x, t, 3.5)
    e_loss, e_grad = run(F.cross_entropy, x, t, 3.5)
    assert_close(a_grad, e_grad, rtol=1e-12, atol=1e-12, what="grad")


def test_no_grad_and_detached_inputs_compute_loss_only():
    x, t = make((5, C), "hard")
    with torch.no_grad():
        loss = gst.cross_entropy(x.clone().requires_grad_(), t)
    assert loss.grad_fn is None
    assert_close(gst.cross_entropy(x, t), F.cross_entropy(x, t), rtol=1e-12, atol=0, what="loss")


def test_float32_logits_with_float64_grad_output_keep_dtype():
    x, t = make((5, C), "hard", torch.float32)
    x.requires_grad_()
    loss = gst.cross_entropy(x, t, reduction="none")
    loss.backward(torch.ones(5, dtype=torch.float32))
    assert x.grad.dtype == torch.float32


# ----------------------------------------------------------------------------------
# softmax family


SM_FNS = [
    ("softmax", gst.softmax, torch.softmax),
    ("log_softmax", gst.log_softmax, torch.log_softmax),
    ("logsumexp", gst.logsumexp, torch.logsumexp),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,dim", [((5, 9), -1), ((5, 9), 0), ((9,), 0), ((2, 6, 3), 1)], ids=str)
@pytest.mark.parametrize("name,ours,theirs", SM_FNS, ids=[f[0] for f in SM_FNS])
def test_softmax_family_matches_torch(name, ours, theirs, shape, dim, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    y_ref = theirs(x.double(), dim)
    go = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    xa = x.clone().requires_grad_()
    xe = x.double().requires_grad_()
    ya = ours(xa, dim)
    ye = theirs(xe, dim)
    (ya * go.to(dtype)).sum().backward()
    (ye * go.to(dtype).double()).sum().backward()
    assert ya.dtype == dtype and xa.grad.dtype == dtype
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    assert_close(ya, ye.detach().to(dtype), rtol=tol, atol=tol, what="forward")
    assert_close(xa.grad, xe.grad.to(dtype), rtol=tol, atol=tol * 5, what="backward")


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("name,ours,theirs", SM_FNS, ids=[f[0] for f in SM_FNS])
def test_softmax_family_gradcheck(name, ours, theirs, dim):
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ours(x, dim), (x,))


def test_logsumexp_double_backward_through_softmax_op():
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: gst.logsumexp(x, -1), (x,))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_double_backward_matches_torch(name):
    # Issue 23 item 11: supported (torch supports it), no longer refused.
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    got = []
    for fn in (getattr(gst, name), getattr(torch, name)):
        (g,) = torch.autograd.grad(fn(x, -1)[:, 0].sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), x)
        got.append((g.detach(), gg))
    torch.testing.assert_close(got[0], got[1], rtol=1e-12, atol=1e-12)


def test_cross_entropy_double_backward_raises():
    x, t = make((4, C), "hard")
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(gst.cross_entropy(x, t), x, create_graph=True)


# ----------------------------------------------------------------------------------
# inplace_backward


def _model(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g, dtype=dtype, requires_grad=True)
    W = torch.randn(4, C, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, C, (6,), generator=g)
    t[2] = -100
    return x, W, t


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "reduction": "sum"}, {"reduction": "none"},
                                  {"z_loss": 0.1, "logit_softcap": 3.0}], ids=str)
def test_inplace_backward_gives_the_same_gradient(opts, view):
    x, W, t = _model()
    go = grad_output_for((6,), torch.float64) if opts.get("reduction") == "none" else 1.0
    (gst.cross_entropy(x @ W, t, **opts) * go).sum().backward()
    expected = x.grad.clone(), W.grad.clone()
    x.grad = W.grad = None
    logits = x @ W
    if view:
        logits = logits.view(2, 3, C).reshape(6, C)
    loss = gst.cross_entropy(logits, t, inplace_backward=True, **opts)
    assert logits._version > 0
    (loss * go).sum().backward()
    torch.testing.assert_close(x.grad, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W.grad, expected[1], rtol=1e-12, atol=1e-12)


def test_inplace_backward_overwrites_logits_with_gradient():
    x, W, t = _model()
    logits = x @ W
    _, expected = run(F.cross_entropy, logits.detach(), t, 1.0)
    gst.cross_entropy(logits, t, inplace_backward=True)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("view", [False, True])
def test_inplace_backward_refuses_when_logits_are_needed_elsewhere(view):
    """logits = x @ W, used again by an op whose backward needs it: a wrong gradient
    is impossible, autograd raises."""
    x, W, t = _model()
    logits = x @ W
    if view:
        logits = logits.view(-1, C)
    other = (logits ** 2).sum()  # pow saves logits for its backward
    loss = gst.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_inplace_backward_refuses_a_leaf_and_says_what_to_do():
    x = torch.randn(3, C, requires_grad=True)
    before = x.detach().clone()
    for logits in (x, x.view(3, C), x[:, :]):  # a view of a leaf would overwrite the leaf itself
        with pytest.raises(RuntimeError, match="leaf tensor that requires grad.*inplace_backward=False"):
            gst.CrossEntropyLoss(inplace_backward=True)(logits, torch.tensor([0, 1, 2]))
    assert torch.equal(x, before)
    gst.CrossEntropyLoss(inplace_backward=True)(x * 1.0, torch.tensor([0, 1, 2])).backward()  # what the text advises
    assert x.grad is not None


def test_out_of_range_target_error_offers_no_missing_switch():
    x = torch.randn(4, C)
    with pytest.raises(ValueError, match=r"outside \[0, 7\)") as err:
        gst.cross_entropy(x, torch.tensor([0, 1, 9, 2]))
    assert "validate" not in str(err.value)
    with pytest.raises(TypeError):  # the bridge indeed has no validate keyword to offer
        gst.cross_entropy(x, torch.tensor([0, 1, 9, 2]), validate=False)


def test_inplace_backward_refuses_use_of_the_overwritten_tensor():
    x, W, t = _model()
    logits = x @ W
    loss = gst.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="overwrote its input"):
        (loss + logits.sum()).backward()


def test_inplace_backward_twice_raises():
    x, W, t = _model()
    loss = gst.cross_entropy(x @ W, t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_backward_without_grad_leaves_logits_alone():
    x, W, t = _model()
    with torch.no_grad():
        logits = x @ W
        before = logits.clone()
        gst.cross_entropy(logits, t, inplace_backward=True)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_inplace_backward_half_precision(dtype):
    x, W, t = _model(torch.float32)
    logits = (x @ W).to(dtype)
    ref_logits = logits.detach().float().requires_grad_()
    F.cross_entropy(ref_logits, t).backward()
    loss = gst.cross_entropy(logits, t, inplace_backward=True)
    loss.backward()
    assert x.grad is not None and W.grad is not None
    torch.testing.assert_close(logits.detach().float(), ref_logits.grad, rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------------
# module, errors, import hygiene, docs


def test_cross_entropy_loss_module():
    w = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    ours = gst.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.1)
    theirs = torch.nn.CrossEntropyLoss(weight=w, ignore_index=1, reduction="sum", label_smoothing=0.1)
    x, t = make((5, C), "hard")
    a_loss, a_grad = run(lambda x, t: ours(x, t), x, t, 1.0)
    e_loss, e_grad = run(lambda x, t: theirs(x, t), x, t, 1.0)
    assert_close(a_loss, e_loss, rtol=1e-12, atol=1e-12, what="loss")
    assert_close(a_grad, e_grad, rtol=1e-12, atol=1e-12, what="grad")
    assert "weight" in ours.state_dict()
    assert ours.to(torch.float32).weight.dtype == torch.float32
    assert "label_smoothing=0.1" in repr(ours)
    z = gst.CrossEntropyLoss(z_loss=0.1, logit_softcap=3.0)
    assert_close(z(x, t), torch_extras(x, t, reduction="mean", z_loss=0.1, logit_softcap=3.0),
                 rtol=1e-12, atol=1e-12, what="extras")


@pytest.mark.parametrize("make_module, shown, hidden", [
    (lambda: gst.CrossEntropyLoss(), "ignore_index=-100, reduction='mean'",
     ("label_smoothing", "z_loss", "logit_softcap", "inplace_backward")),
    (lambda: gst.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.1, z_loss=1e-4,
                                  logit_softcap=30.0, inplace_backward=True),
     "ignore_index=3, reduction='sum', label_smoothing=0.1, z_loss=0.0001, logit_softcap=30.0, "
     "inplace_backward=True", ()),
    (lambda: gst.LinearCrossEntropyLoss(4, 10), "in_features=4, num_classes=10, out_features=(), bias=False, "
     "reduction='mean', ignore_index=None", ("label_smoothing", "chunk_size", "options", "grad_weight_acc",
                                              "skip_ignored")),
    (lambda: gst.LinearCrossEntropyLoss(4, 10, out_features=(2,), bias=True, reduction="none", ignore_index=-1,
                                        z_loss=0.1, chunk_size=16, grad_weight_acc="weight", skip_ignored=False),
     "in_features=4, num_classes=10, out_features=(2,), bias=True, reduction='none', ignore_index=-1, "
     "z_loss=0.1, chunk_size=16, grad_weight_acc='weight', skip_ignored=False", ("label_smoothing", "options")),
])
def test_loss_module_repr_shows_the_settings_off_their_defaults(make_module, shown, hidden):
    text = make_module().extra_repr()
    assert text == shown
    assert not any(f"{name}=" in text for name in hidden)


def test_errors_use_the_shared_check_texts():
    x, t = make((4, C), "hard")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\]"):
        gst.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gst.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="weight has shape"):
        gst.cross_entropy(x, t, weight=torch.ones(C + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="class indices must have logits' shape"):
        gst.cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="logit_softcap must be a positive finite number"):
        gst.cross_entropy(x, t, logit_softcap=0.0)
    with pytest.raises(TypeError, match="logits must be float16, float32 or float64"):
        gst.cross_entropy(x.long(), t)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        gst.cross_entropy(x, t.bool())
    with pytest.raises(ValueError, match=r"target value\(s\).*outside \[0, 7\)"):  # CPU validates targets
        gst.cross_entropy(x, torch.tensor([0, 1, 9, 2]))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        gst.softmax(x, 2)
    with pytest.raises(TypeError, match="input must be float16, float32 or float64"):
        gst.log_softmax(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        gst.cross_entropy(x.numpy(), t)
    with pytest.raises(NotImplementedError, match="no gradient with respect to target"):
        gst.cross_entropy(x, torch.softmax(x, 1).requires_grad_())
    with pytest.raises(NotImplementedError, match="no gradient with respect to weight"):
        gst.cross_entropy(x, t, weight=torch.ones(C, dtype=torch.float64, requires_grad=True))


def test_import_gpu_softmax_does_not_import_torch():
    code = ("import sys, gpu_softmax; assert 'torch' not in sys.modules; "
            "import gpu_softmax.torch; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstring_examples_run():
    import importlib
    import pkgutil

    attempted = 0
    for info in pkgutil.iter_modules(gst.__path__, gst.__name__ + "."):
        result = doctest.testmod(importlib.import_module(info.name),
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, info.name
        attempted += result.attempted
    assert attempted >= 5


# ----------------------------------------------------------------------------------
# torch.compile (the CPU path is a custom op with a fake implementation too)


@pytest.mark.slow
def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()
    x, W, t = _model(torch.float32)

    def step(x, W, t):
        logits = x @ W
        return (gst.cross_entropy(logits, t, label_smoothing=0.1, z_loss=1e-3)
                + gst.logsumexp(logits).mean() + gst.log_softmax(logits)[:, 0].sum() + gst.softmax(logits, 0).sum())

    eager = step(x, W, t)
    eager.backward()
    expected = x.grad.clone(), W.grad.clone()
    x.grad = W.grad = None
    compiled = torch.compile(step, fullgraph=True)  # inductor: our ops stay opaque custom ops
    loss = compiled(x, W, t)
    loss.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(x.grad, expected[0])
    torch.testing.assert_close(W.grad, expected[1])


def test_torch_compile_fullgraph_inplace_backward_cpu():
    torch._dynamo.reset()
    x, W, t = _model(torch.float32)
    gst.cross_entropy(x @ W, t).backward()
    expected = x.grad.clone()
    x.grad = W.grad = None
    compiled = torch.compile(lambda x, W, t: gst.cross_entropy((x @ W).view(-1, C), t, inplace_backward=True),
                             fullgraph=True, backend="aot_eager")
    compiled(x, W, t).backward()
    torch.testing.assert_close(x.grad, expected)


def test_fake_implementations_agree_with_real_ones():
    x, t = make((3, C, 2), "hard", torch.float32)
    for reduction in REDUCTIONS:
        opts = CEOptions.checked(reduction=reduction, label_smoothing=0.1)  # the schema takes op_args()
        torch.library.opcheck(torch.ops.gpu_softmax.cross_entropy.default, (x, t, None, *opts.op_args(), True))
    torch.library.opcheck(torch.ops.gpu_softmax.softmax.default, (x, 1))
    torch.library.opcheck(torch.ops.gpu_softmax.logsumexp.default, (x, -1))
    torch.library.opcheck(torch.ops.gpu_softmax.log_softmax_backward.default, (x, torch.log_softmax(x, 0), 0))


# ----------------------------------------------------------------------------------
# the CUDA branch's glue, emulated on the CPU: CPU tensors are routed through the
# CUDA branch with NumPy views standing in for CuPy arrays (bf16 as uint16 words, as
# the real path hands them over) and launchers that check what they are given and
# compute with the reference. This checks the record replacement, storage
# arguments, bf16 word handling, dtype casts and inplace writes; the real kernels,
# DLPack and streams need a GPU (tests/test_torch_gpu.py).


@pytest.fixture
def emulated_cuda(monkeypatch, host_handover):
    import contextlib
    import dataclasses

    from gpu_softmax.torch import _bridge as bridge
    from gpu_softmax import reference
    from gpu_softmax._cuda import cross_entropy as ce_launch
    from gpu_softmax._cuda import softmax as sm_launch

    calls = []

    def words_to_f32(a):
        assert a.dtype == np.uint16
        return torch.from_numpy(np.array(a, order="C").view(np.int16)).view(torch.bfloat16).float().numpy()

    def f32_to_words(a):
        t = torch.from_numpy(np.array(a, dtype=np.float32, order="C")).to(torch.bfloat16)
        return t.view(torch.int16).numpy().view(np.uint16)

    def storage_ok(arr, storage):
        if storage == "bfloat16":
            assert arr.dtype == np.uint16
            return words_to_f32(arr)
        assert storage is None and arr.dtype != np.uint16
        return arr

    def ce(a, want_grad, storage):
        assert a.kind == "cupy" and a.validate is False
        calls.append(("cross_entropy", storage))
        rec = dataclasses.replace(a, kind="numpy", logits=storage_ok(a.logits, storage), inplace=False)
        if not want_grad:
            return reference.cross_entropy_checked(rec)
        loss, grad = reference.cross_entropy_with_grad_checked(rec)
        grad = f32_to_words(grad) if storage == "bfloat16" else grad
        if a.inplace:
            a.logits[...] = grad
            grad = a.logits
        return loss, grad

    monkeypatch.setattr(ce_launch, "cross_entropy", lambda a, return_logsumexp=False, *, storage=None, loss_storage=None: ce(a, False, storage))
    monkeypatch.setattr(ce_launch, "cross_entropy_with_grad",
                        lambda a, return_logsumexp=False, *, storage=None, loss_storage=None: ce(a, True, storage))

    def checked(op):
        def fn(a, *, storage=None):
            assert a.kind == "cupy" and storage is None
            calls.append((op, None))
            return getattr(reference, f"{op}_checked")(dataclasses.replace(a, kind="numpy"))
        return fn

    for op in ("softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"):
        monkeypatch.setattr(sm_launch, op, checked(op))

    def forward_raw(x, axis=-1, op="softmax", out=None, *, storage=None):
        calls.append((op, storage))
        y = getattr(reference, op)(storage_ok(x, storage), axis)
        return y if op == "logsumexp" else f32_to_words(y)

    def backward_raw(grad_y, y, axis=-1, op="softmax_backward", *, storage=None):
        calls.append((op, storage))
        return f32_to_words(getattr(reference, op)(storage_ok(grad_y, storage), storage_ok(y, storage), axis))

    monkeypatch.setattr(sm_launch, "forward_raw", forward_raw)
    monkeypatch.setattr(sm_launch, "backward_raw", backward_raw)
    def scale_grad(grad, g, cols, inner, *, storage=None):
        # The scale kernel's contract, in NumPy: a scalar 1 leaves grad untouched.
        calls.append(("scale_grad", storage))
        assert g.dtype == (np.float64 if grad.dtype == np.float64 else np.float32)
        if g.size == 1 and g.ndim == 0 and float(g) == 1.0:
            return
        vals = words_to_f32(grad) if storage == "bfloat16" else grad
        rows_g = g.reshape(-1)
        if g.ndim:
            outer = grad.size // (cols * inner)
            scaled = vals.reshape(outer, cols, inner) * rows_g.reshape(outer, 1, inner)
        else:
            scaled = vals * g
        scaled = scaled.reshape(grad.shape)
        grad[...] = f32_to_words(scaled) if storage == "bfloat16" else scaled

    monkeypatch.setattr(ce_launch, "scale_grad", scale_grad)
    monkeypatch.setattr(bridge, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(bridge, "cupy_on", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(bridge, "to_cupy", host_handover.to_dev)
    monkeypatch.setattr(bridge, "from_cupy", host_handover.from_dev)
    return calls


HALF_TOL = {torch.float32: (2e-5, 2e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape,reduction", [((5, C), "mean"), ((C,), "sum"), ((3, C, 2), "none")], ids=str)
@pytest.mark.parametrize("name,kw,kind", [OPTIONS[0], OPTIONS[5], OPTIONS[7]], ids=["plain", "weighted", "soft"])
def test_emulated_cuda_branch_cross_entropy(emulated_cuda, name, kw, kind, shape, reduction, inplace, dtype):
    x, t = make(shape, kind, dtype)
    kw = options(kw, dtype)
    kw32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    t32 = t.float() if kind == "soft" else t
    go = grad_output_for(F.cross_entropy(x.float(), t32, reduction=reduction).shape, dtype)
    e_loss, e_grad = run(F.cross_entropy, x.float(), t32, go.float(), reduction=reduction, **kw32)
    if inplace:
        h = torch.zeros(shape, dtype=dtype, requires_grad=True)
        logits = h + x  # an intermediate result, overwritten by its gradient
        a_loss = gst.cross_entropy(logits, t, reduction=reduction, inplace_backward=True, **kw)
        (a_loss * go).sum().backward()
        a_grad = h.grad
        assert logits._version > 0  # overwritten by the (scaled) gradient
    else:
        a_loss, a_grad = run(gst.cross_entropy, x, t, go, reduction=reduction, **kw)
    storage = "bfloat16" if dtype == torch.bfloat16 else None
    assert ("cross_entropy", storage) in emulated_cuda and ("scale_grad", storage) in emulated_cuda
    assert set(emulated_cuda) <= {("cross_entropy", storage), ("scale_grad", storage)}
    assert a_loss.dtype == dtype and a_grad.dtype == dtype
    rtol, atol = HALF_TOL[dtype]
    assert_close(a_loss, e_loss.to(dtype), rtol=rtol, atol=atol, what="loss")
    assert_close(a_grad, e_grad.to(dtype), rtol=rtol, atol=atol, what="grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,ours,theirs", SM_FNS, ids=[f[0] for f in SM_FNS])
def test_emulated_cuda_branch_softmax_family(emulated_cuda, name, ours, theirs, dtype):
    x = torch.randn(4, 9, dtype=torch.float64).to(dtype)
    xa = x.clone().requires_grad_()
    xe = x.double().requires_grad_()
    ya, ye = ours(xa, 1), theirs(xe, 1)
    go = torch.randn(ye.shape, dtype=torch.float64).to(dtype)
    (ya * go).sum().backward()
    (ye * go.double()).sum().backward()
    storage = "bfloat16" if dtype == torch.bfloat16 else None
    assert (name, storage) in emulated_cuda
    assert ya.dtype == dtype and xa.grad.dtype == dtype
    rtol, atol = HALF_TOL[dtype]
    assert_close(ya, ye.detach().to(dtype), rtol=rtol, atol=atol, what="forward")
    assert_close(xa.grad, xe.grad.to(dtype), rtol=rtol, atol=atol * 5, what="backward")
