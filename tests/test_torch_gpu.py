"""gpu_softmax.torch on CUDA tensors (our kernels) against PyTorch on CUDA.

Marked gpu: needs torch with CUDA and CuPy. Covers float32/float16/bfloat16 forward
and backward for every cross-entropy option and input shape, the softmax family,
inplace_backward, no host sync (torch's sync debug mode), CUDA-graph capture and
replay of a training step, a non-default stream, torch.compile, and a second device
where present.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytest.importorskip("cupy", reason="gpu test: CuPy is not importable")

import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax.testing import backward_atol, ce_grad_atol, no_host_sync, stored_step, tolerance  # noqa: E402

from conftest import GPU_SKIP_REASON  # noqa: E402

# Skipped test by test (not the whole module) so that tests/test_gpu_check_helpers.py can
# import the helpers below on a machine without a GPU. Without one, conftest skips every
# gpu test with one reason; this adds the case of a GPU that this torch build cannot use.
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU_SKIP_REASON is None and not torch.cuda.is_available(),
                                                  reason="gpu test: torch has no CUDA device (a CPU-only build?)")]

DEV = torch.device("cuda")
# (rtol, absolute floor). The floors are for losses only (values of order 1 to 10);
# the softmax family and the gradients get floors from each entry's own terms
# (forward_floor, ce_grad_floor, grad_tolerance): a fixed 1e-3 or 4e-3 lies above most
# entries of a 1000- to 50000-long row, and would accept zeros there.
TOL = {torch.float32: (2e-5, 2e-6), torch.float16: (4e-3, 1e-3), torch.bfloat16: (2e-2, 4e-3)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The references are torch in float64 on the same rounded inputs; ours computes in
# float32 before its result is stored: its error before that rounding, relative to the
# terms an entry is a difference of. (torch's own float32 gradient is no reference for
# that: with label smoothing over 50000 classes its p - q is off by up to 8e-5 * p.)
ACC_RTOL = 2 * tolerance("float32")[0]


def class_dim(shape):
    return 0 if len(shape) == 1 else 1


def make(shape, kind, dtype, seed=0, device=DEV):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype).to(device)
    cd = class_dim(shape)
    reduced = shape[:cd] + shape[cd + 1:]
    if kind == "soft":
        t = torch.softmax(torch.randn(shape, generator=g), dim=cd).to(dtype).to(device)
    else:
        t = torch.randint(0, shape[cd], reduced, generator=g)
        if kind == "hard_ignored" and t.numel() > 2:
            t.view(-1)[1] = -100
            t.view(-1)[-1] = -100
        t = t.to(device)
    return x, t


def ref_and_ours(x, t, go, **kw):
    """(torch loss, torch grad) computed in float64 from the same rounded inputs, and ours."""
    xr = x.detach().double().requires_grad_()
    kwr = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    tr = t.double() if t.is_floating_point() else t
    e = F.cross_entropy(xr, tr, **kwr)
    (e * go.double()).sum().backward()
    xa = x.detach().clone().requires_grad_()
    a = gst.cross_entropy(xa, t, **kw)
    (a * go).sum().backward()
    return (e.detach(), xr.grad), (a.detach(), xa.grad)


def _np(t):
    return t.detach().double().cpu().numpy()


def dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def forward_floor(op, x, dim):
    """Absolute floor of a softmax-family forward in x's dtype, element by element (an
    array of the output's shape): softmax has no cancellation, log_softmax is x - lse
    (and logsumexp m + log s), off by ACC_RTOL times the terms; plus two roundings'
    smallest step (ours and the reference's, both stored in the dtype)."""
    step = 2 * stored_step(dtype_name(x.dtype))
    if op == "softmax":
        return step
    xf = x.detach().float()
    lse = torch.logsumexp(xf, dim, keepdim=True)
    if op == "log_softmax":
        return ACC_RTOL * (xf.abs() + lse.abs()) + step
    return ACC_RTOL * (xf.amax(dim).abs() + lse.squeeze(dim).abs()) + step


def ce_grad_floor(x, t, go, **kw):
    """Absolute floor of our cross-entropy input gradient against torch's float64 one,
    each entry from its own terms (testing.ce_grad_atol at ACC_RTOL), as a tensor on x's
    device; plus a second rounding's smallest step (the reference's, cast to x's dtype)."""
    kw_np = {k: (_np(v) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    floor = ce_grad_atol(_np(x), _np(t) if t.is_floating_point() else t.cpu().numpy(), ACC_RTOL,
                         dtype=dtype_name(x.dtype), axis=class_dim(tuple(x.shape)), grad_output=_np(go), **kw_np)
    return torch.as_tensor(floor + stored_step(dtype_name(x.dtype)), device=x.device, dtype=torch.float32)


def within(actual, expected, rtol, floor, what):
    """|actual - expected| <= floor + rtol * |expected| element by element (`floor` a
    number or a tensor that broadcasts); NaN only where expected is NaN."""
    a, e = actual.double(), expected.double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN in {int((nan_a != nan_e).sum())} other places"
    bound = torch.as_tensor(floor, dtype=torch.float64, device=a.device) + rtol * e.abs()
    off = ((a - e).abs() > bound) & ~nan_e & (a != e)
    if off.any():
        i = tuple(int(k) for k in off.nonzero()[0])
        raise AssertionError(f"{what}: {int(off.sum())} of {off.numel()} elements off (rtol={rtol}); first at {i}: "
                             f"got {a[i].item()!r}, expected {e[i].item()!r}, bound {bound.expand_as(a)[i].item():.3g}")


def check(actual, expected, dtype, what, floor=None):
    """Ours (stored in dtype, on the GPU) against torch's float64 result cast to dtype.
    `floor`: the absolute floor per element; None for a loss (TOL's, for values of order 1)."""
    rtol, atol = TOL[dtype]
    assert actual.dtype == dtype, what
    assert actual.device.type == "cuda", what
    within(actual.float(), expected.to(dtype).float(), rtol, atol if floor is None else floor, what)


OPTIONS = [
    ("plain", {}, "hard"),
    ("weight_smoothing_ignore", {"weight": True, "label_smoothing": 0.1}, "hard_ignored"),
    ("soft", {"label_smoothing": 0.2}, "soft"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(64, 1000), (1000,), (4, 33, 5, 3), (8, 32000)], ids=str)
@pytest.mark.parametrize("name,kw,kind", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_cross_entropy_cuda_matches_torch(name, kw, kind, shape, reduction, dtype):
    x, t = make(shape, kind, dtype)
    kw = dict(kw)
    C = shape[class_dim(shape)]
    if kw.pop("weight", False):
        kw["weight"] = torch.linspace(0.5, 2.0, C, device=DEV).to(dtype)
    loss_shape = F.cross_entropy(x.float(), t.float() if kind == "soft" else t, reduction=reduction).shape
    go = (torch.rand(loss_shape, device=DEV) + 0.5).to(dtype)
    (e_loss, e_grad), (a_loss, a_grad) = ref_and_ours(x, t, go, reduction=reduction, **kw)
    check(a_loss, e_loss, dtype, "loss")
    check(a_grad, e_grad, dtype, "grad", floor=ce_grad_floor(x, t, go, reduction=reduction, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_z_loss_and_softcap_cuda(dtype):
    x, t = make((16, 5000), "hard_ignored", dtype)
    xr = x.detach().double().requires_grad_()
    xc = 20.0 * torch.tanh(xr / 20.0)
    lse = torch.logsumexp(xc, 1)
    valid = t != -100
    e = F.cross_entropy(xc, t) + (1e-3 * lse * lse * valid).sum() / valid.sum()
    e.backward()
    xa = x.detach().clone().requires_grad_()
    a = gst.cross_entropy(xa, t, z_loss=1e-3, logit_softcap=20.0)
    a.backward()
    check(a.detach(), e.detach(), dtype, "loss")
    floor = ce_grad_floor(x, t, torch.ones(()), z_loss=1e-3, logit_softcap=20.0)
    check(xa.grad, xr.grad, dtype, "grad", floor=floor)


def grad_leaves(x):
    """Two separate leaves that require grad: a float64 copy for torch's reference and a
    copy in x's dtype for ours. (x.double() is x itself for float64, and x.float() for
    float32: calling requires_grad_() on it would make x the leaf and a clone of it a
    non-leaf.)"""
    return x.detach().double().clone().requires_grad_(), x.detach().clone().requires_grad_()


def grad_tolerance(op, y, go, dtype, dim):
    """(rtol, atol) for our input gradient against torch's float64 one, cast to dtype.

    Ours is computed from our forward output y stored in dtype (and summed in float32),
    so besides the two roundings to dtype (rtol) it carries the error of y's rounding
    through the row sum: testing.backward_atol with the dtype's epsilon and float32's
    tolerance for the sum. logsumexp's gradient (g * exp(x - lse)) does not cancel.
    """
    rtol, _ = TOL[dtype]
    # Three roundings at most (y or softmax(x), the product or difference, the
    # reference's cast): their smallest steps, where a relative bound covers nothing.
    step = 3 * stored_step(dtype_name(dtype))
    if op == "logsumexp":
        return rtol * 2, step
    eps = torch.finfo(dtype).eps
    floor = backward_atol(f"{op}_backward", go.float().cpu().numpy(), y.detach().float().cpu().numpy(),
                          rtol=eps, axis=dim, acc_rtol=tolerance("float32")[0])
    return rtol * 2, torch.as_tensor(floor, device=y.device, dtype=torch.float32) + step


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", [((64, 1000), -1), ((8, 50000), -1), ((3, 40, 7), 1), ((1000,), 0)], ids=str)
@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_cuda(op, shape, dim, dtype):
    theirs = getattr(torch, op)
    ours = getattr(gst, op)
    x = (torch.randn(shape, device=DEV) * 2).to(dtype)
    xr, xa = grad_leaves(x)
    e = theirs(xr, dim)
    a = ours(xa, dim)
    go = torch.randn(e.shape, device=DEV).to(dtype)
    (e * go.double()).sum().backward()
    (a * go).sum().backward()
    check(a.detach(), e.detach(), dtype, "forward", floor=forward_floor(op, x, dim))
    assert xa.grad is not None and xr.grad is not None
    rtol, atol = grad_tolerance(op, a, go, dtype, dim)
    expected = xr.grad.to(dtype).float()
    bound = atol + rtol * expected.abs()
    worst = ((xa.grad.float() - expected).abs() - bound).max().item()
    assert worst <= 0, f"{op} grad: off by up to {worst:.3g} beyond the bound"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inplace_backward_cuda(dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(32, 64, generator=g).to(DEV, dtype).requires_grad_()
    W = (torch.randn(64, 4096, generator=g) * 0.1).to(DEV, dtype).requires_grad_()
    t = torch.randint(0, 4096, (32,), generator=g).to(DEV)
    logits = h @ W
    logits.retain_grad()
    gst.cross_entropy(logits, t).backward()
    expected = h.grad.clone(), W.grad.clone()
    # Each entry of h.grad = G W^T and W.grad = h^T G is a sum of products: its floor is
    # rtol times the sum of their magnitudes, not a fixed number.
    g_abs = logits.grad.float().abs()
    floors = (g_abs @ W.detach().float().abs().T, h.detach().float().abs().T @ g_abs)
    h.grad = W.grad = None
    logits = (h @ W).view(32, 4096)
    ptr = logits.data_ptr()
    gst.cross_entropy(logits, t, inplace_backward=True).backward()
    assert logits.data_ptr() == ptr
    rtol, _ = TOL[dtype]
    within(h.grad.float(), expected[0].float(), rtol, rtol * floors[0] + stored_step(dtype_name(dtype)), "h.grad")
    within(W.grad.float(), expected[1].float(), rtol, rtol * floors[1] + stored_step(dtype_name(dtype)), "W.grad")

    logits = h @ W
    other = (logits ** 2).sum()
    loss = gst.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_no_host_sync_in_forward_and_backward():
    import cupyx

    x, t = make((64, 32000), "hard_ignored", torch.bfloat16)
    w = torch.rand(32000, device=DEV) + 0.5
    x.requires_grad_()
    steps = ({}, {"weight": w, "label_smoothing": 0.1}, {"reduction": "sum", "z_loss": 1e-4},
             {"inplace_backward": True, "label_smoothing": 0.1})

    def run_steps():
        for kw in steps:
            # in place: the gradient overwrites its input, so that input is an intermediate
            gst.cross_entropy(x * 1.0 if kw.get("inplace_backward") else x, t, **kw).backward()
            gst.log_softmax(x.detach().requires_grad_(), -1).sum().backward()

    run_steps()  # warm-up: compile, occupancy queries
    torch.cuda.synchronize()
    with no_host_sync(cupyx, torch):  # torch's syncs and CuPy's (.get(), int(cupy scalar), ...)
        run_steps()


def test_out_of_range_target_gives_nan_without_sync():
    x, _ = make((4, 100), "hard", torch.float32)
    t = torch.tensor([1, 2, 500, 3], device=DEV)
    loss = gst.cross_entropy(x, t, reduction="none")
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all()


def _train_setup(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8192)).to(DEV, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 64, device=DEV, dtype=dtype)
    t = torch.randint(0, 8192, (32,), device=DEV)
    t[3] = -100
    return model, opt, x, t


@pytest.mark.parametrize("inplace", [False, True])
def test_cuda_graph_capture_and_replay_of_a_training_step(inplace):
    model, opt, x, t = _train_setup()
    ref_model, ref_opt, _, _ = _train_setup()

    def step(m, o):
        o.zero_grad(set_to_none=False)
        loss = gst.cross_entropy(m(x), t, label_smoothing=0.1, inplace_backward=inplace)
        loss.backward()
        o.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as torch requires
        for _ in range(3):
            step(model, opt)
            step(ref_model, ref_opt)
    torch.cuda.current_stream().wait_stream(s)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(model, opt)
    import cupyx

    losses = torch.empty(5, device=DEV)
    with no_host_sync(cupyx, torch):  # replay and keep each loss on the device
        for i in range(5):
            graph.replay()
            losses[i].copy_(static_loss)
    ref = [step(ref_model, ref_opt).item() for _ in range(5)]
    torch.testing.assert_close(losses.cpu(), torch.tensor(ref), rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]


def test_non_default_stream_is_used():
    """Work queued on a side stream before our op must be seen by it: our kernels run
    on torch's current stream, not CuPy's default."""
    src, t = make((256, 32000), "hard", torch.float32)
    expected = F.cross_entropy(src, t, reduction="none")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.zeros_like(src)
        torch.cuda._sleep(50_000_000)  # keep s busy so a launch on another stream would race
        x.copy_(src)
        loss = gst.cross_entropy(x, t, reduction="none")
        y = gst.softmax(x, -1)
    s.synchronize()
    torch.testing.assert_close(loss, expected, rtol=2e-5, atol=2e-6)
    within(y, torch.softmax(src, -1), 2e-5, forward_floor("softmax", src, -1), "softmax on a side stream")


def test_torch_compile_cuda():
    torch._dynamo.reset()
    model, _, x, t = _train_setup()

    def loss_fn(x, t):
        return gst.cross_entropy(model(x), t, z_loss=1e-4) + gst.logsumexp(model(x)).mean()

    eager = loss_fn(x, t)
    compiled = torch.compile(loss_fn, fullgraph=True)
    out = compiled(x, t)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_second_device():
    x, t = make((64, 5000), "hard_ignored", torch.bfloat16, device=torch.device("cuda:1"))
    with torch.cuda.device(0):  # the current device is not the tensors' device
        (e_loss, e_grad), (a_loss, a_grad) = ref_and_ours(x, t, torch.ones((), device=x.device, dtype=x.dtype))
        y = gst.softmax(x, -1)
    assert a_loss.device == x.device and a_grad.device == x.device and y.device == x.device
    check(a_loss, e_loss, torch.bfloat16, "loss")
    check(a_grad, e_grad, torch.bfloat16, "grad", floor=ce_grad_floor(x, t, torch.ones(())))


def test_mixed_devices_rejected():
    x, t = make((4, 10), "hard", torch.float32)
    with pytest.raises(ValueError, match="one device"):
        gst.cross_entropy(x, t.cpu())
