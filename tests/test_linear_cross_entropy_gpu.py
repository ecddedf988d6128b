"""Fused linear + cross-entropy on a GPU: the CuPy launcher against the NumPy reference,
the torch CUDA path against F.cross_entropy(F.linear(...).float()), no host sync, the
peak memory against the accounting of gpu_softmax._chunking, and the goal shape
(16384 x 4096 x 128256, bfloat16) on sampled rows against float64.

Marked gpu: needs CuPy and a CUDA device (torch with CUDA for the torch tests).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpu_softmax as gs
from gpu_softmax import _chunking

pytestmark = pytest.mark.gpu

OPTIONS = [{}, {"label_smoothing": 0.1, "z_loss": 1e-3}, {"logit_softcap": 5.0, "ignore_index": 3}]
# (rtol, absolute floor as a fraction of the array's largest value)
TOL = {"float64": (1e-10, 1e-12), "float32": (1e-4, 1e-5), "float16": (1e-2, 5e-3), "bfloat16": (5e-2, 3e-2)}


def close(actual, expected, tol, what):
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = np.nanmax(np.abs(e)) if e.size and not np.isnan(e).all() else 1.0
    np.testing.assert_allclose(a, e, rtol=tol[0], atol=tol[1] * scale + 1e-300, err_msg=what)


def make(n, h, v, dtype, seed=0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    hid = (rng.standard_normal((n, h)) * 2 / np.sqrt(h)).astype(dtype)
    w = rng.standard_normal((v, h)).astype(dtype)
    b = (rng.standard_normal(v) * 0.5).astype(dtype)
    t = rng.integers(0, v, n)
    t[::7] = ignore_index
    return hid, w, t, b


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kw", OPTIONS, ids=["plain", "smooth_z", "cap_ignore"])
@pytest.mark.parametrize("n,h,v,chunk", [(1, 8, 1, None), (33, 64, 31, 8), (257, 128, 1025, 100),
                                         (64, 256, 50257, None)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cupy_matches_reference(cp, dtype, kw, n, h, v, chunk, reduction):
    hid, w, t, b = make(n, h, v, dtype, ignore_index=kw.get("ignore_index", -100))
    want = gs.linear_cross_entropy_with_grad(hid.astype(np.float64), w.astype(np.float64), t,
                                             b.astype(np.float64), reduction=reduction, chunk_size=chunk, **kw)
    got = gs.linear_cross_entropy_with_grad(cp.asarray(hid), cp.asarray(w), cp.asarray(t), cp.asarray(b),
                                            reduction=reduction, chunk_size=chunk, **kw)
    assert [g.dtype for g in got[1:]] == [np.dtype(dtype)] * 3
    for name, g, e in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), got, want):
        close(cp.asnumpy(g), e, TOL[np.dtype(dtype).name], name)


def test_cupy_same_bits_for_a_chunk_size(cp):
    hid, w, t, b = (cp.asarray(a) for a in make(300, 64, 1000, np.float32))
    a = gs.linear_cross_entropy_with_grad(hid, w, t, b, chunk_size=64)
    c = gs.linear_cross_entropy_with_grad(hid, w, t, b, chunk_size=64)
    for x, y in zip(a, c):
        assert bool((x == y).all())


def test_cupy_bad_target_raises_before_computing(cp):
    hid, w, t, _ = (cp.asarray(a) if a is not None else None for a in make(10, 8, 5, np.float32))
    t[3] = 5
    with pytest.raises(ValueError, match="outside"):
        gs.linear_cross_entropy_with_grad(hid, w, t)
    loss, *_ = gs.linear_cross_entropy_with_grad(hid, w, t, validate=False)
    assert bool(cp.isnan(loss))


# ----------------------------------------------------------------------------------
# torch CUDA


@pytest.fixture
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("gpu test: torch has no CUDA device")
    return torch


def torch_case(torch, n, h, v, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hid = (torch.randn(n, h, generator=g) * 2 / h**0.5).to(dtype).cuda().requires_grad_()
    w = torch.randn(v, h, generator=g).to(dtype).cuda().requires_grad_()
    b = (torch.randn(v, generator=g) * 0.5).to(dtype).cuda().requires_grad_()
    t = torch.randint(0, v, (n,), generator=g).cuda()
    t[::5] = -100
    return hid, w, t, b


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_cuda_matches_unfused(torch_cuda, dtype, reduction):
    torch = torch_cuda
    import gpu_softmax.torch as gst

    F = torch.nn.functional
    dt = getattr(torch, dtype)
    hid, w, t, b = torch_case(torch, 300, 128, 5000, dt)
    kw = dict(label_smoothing=0.1)
    go = torch.rand(300, device="cuda") + 0.5 if reduction == "none" else torch.tensor(0.7, device="cuda")
    loss = gst.linear_cross_entropy(hid, w, t, b, reduction=reduction, chunk_size=64, **kw)
    got = (loss.detach(),) + torch.autograd.grad((loss * go).sum(), (hid, w, b))
    leaves = [x.detach().double().requires_grad_() for x in (hid, w, b)]
    ref = F.cross_entropy(F.linear(*leaves), t, reduction=reduction, **kw)
    want = (ref.detach(),) + torch.autograd.grad((ref * go.double()).sum(), leaves)
    assert loss.dtype == torch.float32 and [g.dtype for g in got[1:]] == [dt] * 3
    for name, g, e in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), got, want):
        close(g.double().cpu().numpy(), e.cpu().numpy(), TOL[dtype], name)


def test_torch_cuda_no_host_sync(torch_cuda):
    torch = torch_cuda
    import cupyx

    import gpu_softmax.torch as gst
    from gpu_softmax.testing import no_host_sync

    hid, w, t, b = torch_case(torch, 256, 64, 3000, torch.bfloat16)
    gst.linear_cross_entropy(hid, w, t, b, chunk_size=64).backward()  # compile and warm up
    torch.cuda.synchronize()
    with no_host_sync(cupyx, torch):  # torch's syncs and CuPy's
        gst.linear_cross_entropy(hid, w, t, b, chunk_size=64, label_smoothing=0.1, z_loss=1e-4).backward()


def test_torch_cuda_graph_capture_and_replay_of_a_training_step(torch_cuda):
    """A step through linear_cross_entropy (fixed chunks: no free-memory query) captured
    in a CUDA graph and replayed, against the same step run eagerly."""
    torch = torch_cuda
    import cupyx

    import gpu_softmax.torch as gst
    from gpu_softmax.testing import no_host_sync

    x = torch.randn(48, 64, device="cuda")
    t = torch.randint(0, 3000, (48,), device="cuda")
    t[5] = -100

    def setup():
        torch.manual_seed(0)
        proj, head = torch.nn.Linear(64, 128).cuda(), torch.nn.Linear(128, 3000).cuda()
        return proj, head, torch.optim.SGD([*proj.parameters(), *head.parameters()], lr=0.1)

    def step(proj, head, opt):
        opt.zero_grad(set_to_none=False)
        loss = gst.linear_cross_entropy(torch.tanh(proj(x)), head.weight, t, head.bias, chunk_size=16,
                                        label_smoothing=0.1)
        loss.backward()
        opt.step()
        return loss

    model, ref = setup(), setup()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as torch requires
        for _ in range(3):
            step(*model)
            step(*ref)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(*model)
    losses = torch.empty(5, device="cuda")
    with no_host_sync(cupyx, torch):
        for i in range(5):
            graph.replay()
            losses[i].copy_(static_loss)
    want = [step(*ref).item() for _ in range(5)]
    torch.testing.assert_close(losses.cpu(), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------------
# the goal shape: memory and sampled rows against float64


def _float64_row_stats(torch, hid, w, b, t, rows_per_pass=512):
    """Per row: logsumexp and the target logit of the float64 logits, built a block at a time."""
    lse = torch.empty(hid.shape[0], dtype=torch.float64, device="cuda")
    xt = torch.empty_like(lse)
    w64, b64 = w.double(), b.double()
    for s in range(0, hid.shape[0], rows_per_pass):
        x = torch.addmm(b64, hid[s:s + rows_per_pass].double(), w64.T)
        lse[s:s + rows_per_pass] = torch.logsumexp(x, -1)
        tt = t[s:s + rows_per_pass].clamp(min=0)
        xt[s:s + rows_per_pass] = x.gather(1, tt[:, None])[:, 0]
        del x
    return lse, xt


def test_goal_shape_bf16_memory_and_sampled_rows(torch_cuda):
    torch = torch_cuda
    import gpu_softmax.torch as gst

    n, h, v = 16384, 4096, 128256
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs 40 GiB of device memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    hid = (torch.randn(n, h, device="cuda", generator=g) / h**0.5 * 2).bfloat16().requires_grad_()
    w = torch.randn(v, h, device="cuda", generator=g).bfloat16().requires_grad_()
    b = (torch.randn(v, device="cuda", generator=g) * 0.5).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[::97] = -100

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = gst.linear_cross_entropy(hid, w, t, b)
    loss.backward()
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - base
    chunk = _chunking.chunk_rows(n, v, 2, None)
    acct = _chunking.extra_bytes(n, v, h, 2, 4, chunk, bias=True)
    grads = (n * h + v * h + v) * 2  # the parameter and input gradients autograd keeps
    print(f"chunk {chunk}: peak extra {peak_extra / 1e9:.2f} GB, accounted {acct['total'] / 1e9:.2f} GB "
          f"+ gradients {grads / 1e9:.2f} GB (x2 while the backward scales them)")
    assert peak_extra <= acct["total"] + 2 * grads + 256 * 2**20

    # sampled rows against float64
    lse, xt = _float64_row_stats(torch, hid.detach(), w.detach(), b.detach(), t)
    valid = t != -100
    want_loss = ((lse - xt) * valid).sum() / valid.sum()
    assert abs(loss.item() - want_loss.item()) <= 2e-3 * abs(want_loss.item())
    rows = torch.randperm(n, device="cuda", generator=g)[:32]
    cls = torch.randperm(v, device="cuda", generator=g)[:32]
    h64, w64, b64 = hid.detach().double(), w.detach().double(), b.detach().double()

    def grad_logits(r):  # d mean-loss / d logits for rows r, float64
        p = torch.softmax(torch.addmm(b64, h64[r], w64.T), -1)
        p[torch.arange(len(r), device="cuda"), t[r].clamp(min=0)] -= 1
        return p * valid[r, None] / valid.sum()

    want_gh = grad_logits(rows) @ w64
    # grad_weight rows `cls`: sum over all N of G[:, cls] h, with G from the float64 lse
    x_cls = torch.addmm(b64[cls], h64, w64[cls].T)
    g_cls = torch.exp(x_cls - lse[:, None]) - (t[:, None] == cls[None, :])
    g_cls = g_cls * valid[:, None] / valid.sum()
    want_gw = g_cls.T @ h64
    want_gb = g_cls.sum(0)
    for name, got, want in (("grad_hidden", hid.grad[rows], want_gh), ("grad_weight", w.grad[cls], want_gw),
                            ("grad_bias", b.grad[cls], want_gb)):
        rel = (got.double() - want).norm() / want.norm()
        assert rel <= 2e-2, f"{name}: relative error {rel.item():.3e}"
