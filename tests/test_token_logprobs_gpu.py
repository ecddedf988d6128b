"""Token log-probs on a GPU: the CuPy API and gpu_softmax.torch's CUDA path against the
float64 reference.

Marked gpu: needs CuPy and torch with CUDA; collected and skipped elsewhere. Covers
float32/float16/bfloat16 (float64 through CuPy), every option, both outputs'
gradients, batch invariance on the device, no host sync, torch.compile, and the
linear form.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cp = pytest.importorskip("cupy", reason="gpu test: CuPy is not importable")

import gpu_softmax  # noqa: E402
import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax import reference_rl  # noqa: E402
from gpu_softmax.testing import assert_close, tolerance  # noqa: E402

from conftest import GPU_SKIP_REASON  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU_SKIP_REASON is None and not torch.cuda.is_available(),
                                                  reason="gpu test: torch has no CUDA device (a CPU-only build?)")]

DEV = torch.device("cuda")
OPTIONS = [{}, {"temperature": 0.6}, {"logit_softcap": 5.0, "temperature": 1.3}, {"top_k": 50},
           {"top_p": 0.9}, {"top_k": 40, "top_p": 0.8, "logit_softcap": 8.0, "temperature": 0.7}]
TOL = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _data(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 3
    t = rng.integers(0, cols, rows)
    t[0] = -100
    return x, t


def _atol(x, opts, name):
    return tolerance(name)[0] * (float(np.abs(x).max()) / opts.get("temperature", 1.0) + 1) * 4


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("cols", [1, 33, 1025, 128 * 1024 + 3])
def test_cupy_forward_and_backward_match_reference(cols, dtype, opts):
    x, t = _data(6, cols)
    x = x.astype(dtype)
    logp, ent = gpu_softmax.token_logprobs(cp.asarray(x), cp.asarray(t), return_entropy=True, **opts)
    wl, we = reference_rl.token_logprobs(x, t, return_entropy=True, **opts)
    acc = wl.dtype
    assert_close(cp.asnumpy(logp), wl, acc, "logp", atol=_atol(x, opts, acc.name))
    assert_close(cp.asnumpy(ent), we, acc, "entropy", atol=_atol(x, opts, acc.name))
    gl, ge = np.ones(6, acc), np.full(6, -0.5, acc)
    g = gpu_softmax.token_logprobs_backward(cp.asarray(x), cp.asarray(t), cp.asarray(gl), cp.asarray(ge), **opts)
    want = reference_rl.token_logprobs_backward(x, t, gl, ge, **opts)
    assert_close(cp.asnumpy(g), want, dtype, "grad", atol=_atol(x, opts, np.dtype(dtype).name) * np.abs(want).max())


def test_cupy_validate_raises_for_bad_tokens():
    x = cp.zeros((2, 5), cp.float32)
    with pytest.raises(ValueError, match="outside"):
        gpu_softmax.token_logprobs(x, cp.asarray([0, 7]))
    assert np.isnan(cp.asnumpy(gpu_softmax.token_logprobs(x, cp.asarray([0, 7]), validate=False))[1])


@pytest.mark.parametrize("opts", [{}, {"top_k": 20, "top_p": 0.9, "logit_softcap": 6.0}])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariance_on_the_device(dtype, opts):
    row = torch.randn(50257, device=DEV).to(dtype)
    results = []
    for rows, pos in ((1, 0), (3, 2), (64, 17)):
        x = torch.randn(rows, 50257, device=DEV).to(dtype)
        x[pos] = row
        t = torch.randint(0, 50257, (rows,), device=DEV)
        t[pos] = 11
        x.requires_grad_()
        logp, ent = gst.token_logprobs(x, t, return_entropy=True, **opts)
        (logp * 0.3 + ent * 1.7).sum().backward()
        results.append((logp[pos].item(), ent[pos].item(), x.grad[pos].float().cpu()))
    for r in results[1:]:
        assert r[0] == results[0][0] and r[1] == results[0][1]
        assert torch.equal(r[2], results[0][2])


@pytest.mark.parametrize("opts", OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_cuda_matches_cpu_reference(dtype, opts):
    x_np, t_np = _data(8, 4099, seed=1)
    x = torch.from_numpy(x_np).to(dtype)
    t = torch.from_numpy(t_np)
    xc = x.to(DEV).requires_grad_()
    logp, ent = gst.token_logprobs(xc, t.to(DEV), return_entropy=True, **opts)
    xr = x.clone().requires_grad_()
    wl, we = gst.token_logprobs(xr, t, return_entropy=True, **opts)
    atol = _atol(x.float().numpy(), opts, "float32")
    assert_close(logp.detach().cpu().numpy(), wl.detach().numpy(), "float32", "logp", atol=atol)
    assert_close(ent.detach().cpu().numpy(), we.detach().numpy(), "float32", "entropy", atol=atol)
    (logp.sum() - 0.5 * ent.sum()).backward()
    (wl.sum() - 0.5 * we.sum()).backward()
    want = xr.grad.float().numpy()
    assert_close(xc.grad.float().cpu().numpy(), want, TOL[dtype], "grad",
                 atol=tolerance(TOL[dtype])[0] * np.abs(want).max() * 4)


def test_torch_cuda_no_host_sync_and_compile():
    x = torch.randn(16, 32000, device=DEV, requires_grad=True)
    t = torch.randint(0, 32000, (16,), device=DEV)
    gst.token_logprobs(x, t, top_k=50).sum().backward()  # compile and warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logp, ent = gst.token_logprobs(x, t, return_entropy=True, top_p=0.9, temperature=0.8)
        (logp + ent).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    compiled = torch.compile(lambda x: gst.token_logprobs(x, t, temperature=0.8).sum(), fullgraph=True)
    x.grad = None
    compiled(x).backward()
    g = x.grad.clone()
    x.grad = None
    gst.token_logprobs(x, t, temperature=0.8).sum().backward()
    assert torch.equal(g, x.grad)


def test_torch_cuda_linear_form_matches_logits_form():
    h = torch.randn(37, 64, device=DEV, requires_grad=True)
    w = torch.randn(5003, 64, device=DEV, requires_grad=True)
    t = torch.randint(0, 5003, (37,), device=DEV)
    lp, ent = gst.linear_token_logprobs(h, w, t, chunk_size=8, return_entropy=True, top_k=100)
    (lp + ent).sum().backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    lp2, ent2 = gst.token_logprobs(h2 @ w2.T, t, return_entropy=True, top_k=100)
    (lp2 + ent2).sum().backward()
    torch.testing.assert_close(lp, lp2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-3, atol=1e-3)
