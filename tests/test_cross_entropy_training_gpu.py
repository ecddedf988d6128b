"""The cross-entropy training step through gpu_softmax.torch on a GPU: gradients for
every option at row lengths of every regime (warp, block, split, stream), the
backward that touches no N x C memory for grad_output == 1, the device-side
decision of the scale kernel, and peak memory of both backward modes.

Marked gpu: needs torch with CUDA and CuPy (skipped otherwise).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

if not torch.cuda.is_available():
    pytest.skip("gpu test: torch has no CUDA device", allow_module_level=True)
pytest.importorskip("cupy", reason="gpu test: CuPy is not importable")

import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax._cuda import cross_entropy as ce  # noqa: E402
from gpu_softmax.testing import ce_grad_atol  # noqa: E402

pytestmark = pytest.mark.gpu

DEV = torch.device("cuda")
TOL = {torch.float32: (2e-5, 2e-6), torch.bfloat16: (2e-2, 4e-3)}
# Row lengths: block (4000), split (50257 and 128256 float32, 128256 bfloat16), and
# many split blocks per row (262144).
SHAPES = [(33, 4000), (9, 50257), (5, 128256), (2, 262144)]
OPTIONS = [
    {},
    {"weight": True},
    {"ignore_index": 3},
    {"label_smoothing": 0.1},
    {"weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-3},
    {"logit_softcap": 15.0},
    {"weight": True, "label_smoothing": 0.05, "z_loss": 1e-4, "logit_softcap": 20.0},
    {"soft": True},
    {"soft": True, "label_smoothing": 0.1, "weight": True},
]


def _inputs(shape, dtype, opts, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, c = shape
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype).to(DEV)
    kw = {k: v for k, v in opts.items() if k not in ("weight", "soft")}
    if opts.get("weight"):
        kw["weight"] = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(DEV)
    if opts.get("soft"):
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1).to(DEV)
    else:
        t = torch.randint(0, c, (n,), generator=g)
        t[:: 5] = kw.get("ignore_index", -100)
        t[1] = c - 1  # a target in the last split block
        t = t.to(DEV)
    return x, t, kw


def _reference(x64, t, reduction, weight=None, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
               logit_softcap=None):
    xc = logit_softcap * torch.tanh(x64 / logit_softcap) if logit_softcap else x64
    loss = F.cross_entropy(xc, t, weight=weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        valid = torch.ones(x64.shape[0], dtype=torch.bool, device=DEV) if t.is_floating_point() else t != ignore_index
        z = z_loss * torch.logsumexp(xc, 1) ** 2 * valid
        loss = loss + (z if reduction == "none" else z.sum() / (valid.sum() if reduction == "mean" else 1))
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradients_through_the_bridge(opts, shape, dtype, reduction):
    x, t, kw = _inputs(shape, dtype, opts)
    if opts.get("soft"):
        t = t.to(dtype)
    xa = x.clone().requires_grad_()
    loss = gst.cross_entropy(xa, t, reduction=reduction, **kw)
    go = (torch.rand(loss.shape, device=DEV, dtype=torch.float64) + 0.5) if reduction == "none" else None
    loss.backward(None if go is None else go.to(loss.dtype))
    x64 = x.double().requires_grad_()
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = _reference(x64, t.double() if t.is_floating_point() else t, reduction, **kw64)
    ref.backward(None if go is None else go.to(loss.dtype).double())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(loss.double(), ref.detach().to(dtype).double(), rtol=rtol, atol=atol * 10)
    # Each entry's floor from its own terms (gpu_softmax.testing.ce_grad_atol), capped at
    # the old row-wide max(atol, rtol * max|grad|), which lay above most entries of a long row.
    old_floor = max(atol, rtol * float(x64.grad.abs().max()))
    kw_np = {k: (v.double().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    t_np = t.double().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
    go_np = 1.0 if go is None else go.to(loss.dtype).double().cpu().numpy()
    floor = ce_grad_atol(x.double().cpu().numpy(), t_np, rtol, dtype=str(dtype).removeprefix("torch."),
                         reduction=reduction, at_most=old_floor, grad_output=go_np, **kw_np)
    expected = x64.grad.to(dtype).double()
    bound = torch.as_tensor(floor, device=DEV) + rtol * 2 * expected.abs()
    worst = ((xa.grad.double() - expected).abs() - bound).max().item()
    assert worst <= 0, f"grad: off by up to {worst:.3g} beyond the bound"


def test_long_rows_take_the_split_regime_here():
    from gpu_softmax._cuda import device, loader

    with gst._bridge.cupy_on(DEV):
        ds = device.current()
        p = ce.plan("float32", 4096, 128256, 0, False, ds.desc)
        assert p.regime == "split" and p.cooperative, p
        assert p.grid <= ce._occupancy(p.kernel, p.block) * ds.desc.n_sm
        # the model's grid fits what the driver itself says is resident (issue 24 item 5)
        fn = loader.get_function(ce.FAMILY, p.kernel).kernel
        assert p.grid <= device.driver_occupancy(fn, p.block, 0) * ds.desc.n_sm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scale_kernel_leaves_the_gradient_alone_for_one(dtype):
    g = torch.randn(37, 50001, device=DEV).to(dtype)
    before = g.clone()
    for go, want in ((1.0, before), (2.0, before.float() * 2), (float("nan"), None)):
        gg = before.clone()
        gst._ops.scale_grad_(gg, torch.tensor(go, device=DEV), 1)
        if want is None:
            assert torch.isnan(gg.float()).all()
        elif go == 1.0:
            assert torch.equal(gg, before)
        else:
            torch.testing.assert_close(gg.float(), want.to(dtype).float(), rtol=0, atol=0)
    rows = torch.rand(37, device=DEV) + 0.5
    gg = before.clone()
    gst._ops.scale_grad_(gg, rows, 1)
    torch.testing.assert_close(gg.float(), (before.float() * rows[:, None]).to(dtype).float(), rtol=1e-2, atol=0)


def test_backward_hands_on_the_saved_buffer_and_refuses_a_second_backward():
    x = torch.randn(256, 32000, device=DEV, requires_grad=True)
    t = torch.randint(0, 32000, (256,), device=DEV)
    ptrs = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: ptrs.append(s.data_ptr()) or s, lambda s: s):
        loss = gst.cross_entropy(x, t)
    loss.backward()
    assert len(ptrs) == 1 and x.grad.data_ptr() == ptrs[0]  # no copy, no second N x C buffer
    loss = gst.cross_entropy(x, t)
    loss.backward(retain_graph=True)  # the saved buffer is scaled in place: it cannot serve twice
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def _peak_extra(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("inplace", [False, True])
def test_peak_memory_of_forward_and_backward(dtype, inplace):
    n, c = 1024, 128256
    bias = torch.zeros(1, c, device=DEV, dtype=dtype, requires_grad=True)
    base = torch.randn(n, c, device=DEV, dtype=dtype)
    t = torch.randint(0, c, (n,), device=DEV)
    logits = base + bias  # an intermediate of N x C (allocated before the measurement)
    del base

    def step():
        gst.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=inplace).backward()

    step_warm = (bias + torch.zeros(n, c, device=DEV, dtype=dtype))  # warm-up: compile, occupancy queries
    gst.cross_entropy(step_warm, t).backward()
    del step_warm
    bias.grad = None
    extra = _peak_extra(step)
    one_grad = n * c * logits.element_size()
    # The backward of `+ bias` reduces the gradient to (1, C): it allocates no N x C buffer itself.
    if inplace:
        assert extra <= (1 << 20), f"{extra} bytes above the logits with inplace_backward=True"
    else:
        assert extra <= one_grad + (1 << 20), f"{extra} bytes: more than one gradient buffer ({one_grad})"
