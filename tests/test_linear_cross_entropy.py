"""Fused linear + cross-entropy on the CPU.

- the NumPy reference (the oracle) against an independent float64 formula and torch
  autograd, every option;
- the CuPy launcher's chunk loop run with NumPy standing in for CuPy (buffers poisoned
  with NaN), a column-major GEMM emulator standing in for cuBLAS (so every transpose and
  leading dimension is exercised) and the reference standing in for the cross-entropy
  kernel (which tests/test_kernels_emulated.py covers): float64/float32/float16 and
  bfloat16 words, chunk sizes that do not divide N, odd sizes, ignored rows;
- the torch CPU path: parity with F.cross_entropy(F.linear(...)), gradcheck, dtypes,
  reduction="none" with a per-row grad_output, frozen inputs, the module;
- the torch CUDA branch with the bridge's CuPy hand-over emulated;
- memory accounting: every array the launcher allocates, every tensor the torch path
  allocates (a dispatch-mode tracker) and every NumPy allocation (tracemalloc) is
  chunk-sized; none is N x V;
- the chunk-size rule and error messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tracemalloc
import types

import numpy as np
import pytest

import gpu_softmax as gs
from example_loading import load_example
from gpu_softmax import _checks, _checks_linear, _chunking, reference
from gpu_softmax.options import CEOptions
from gpu_softmax._cuda import cross_entropy as ce_launch
from gpu_softmax._cuda import linear_cross_entropy as lce

torch = pytest.importorskip("torch")
F = torch.nn.functional

import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax.torch import linear as torch_linear  # noqa: E402
from gpu_softmax.torch import _bridge as tb  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The CI machine's cores are shared: small products are far faster on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


OPTIONS = [
    ("plain", {}),
    ("ignore", {"ignore_index": 3}),
    ("smoothing", {"label_smoothing": 0.2}),
    ("z_loss", {"z_loss": 1e-2}),
    ("softcap", {"logit_softcap": 4.0}),
    ("everything", {"label_smoothing": 0.1, "z_loss": 1e-3, "logit_softcap": 6.0, "ignore_index": 5}),
]


def make(n, h, v, dtype=np.float64, seed=0, bias=False, ignore=(), lead=None, ignore_index=-100):
    rng = np.random.default_rng(seed)
    hid = (rng.standard_normal((n, h)) / np.sqrt(h) * 3).astype(dtype)
    w = rng.standard_normal((v, h)).astype(dtype)
    b = (rng.standard_normal(v) * 0.5).astype(dtype) if bias else None
    t = rng.integers(0, v, n)
    for i in ignore:
        if i < n:
            t[i] = ignore_index
    if lead is not None:
        hid, t = hid.reshape(lead + (h,)), t.reshape(lead)
    return hid, w, t, b


def formula(hid, w, t, b=None, *, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, logit_softcap=None,
            reduction="mean", grad_output=1.0):
    """The loss and gradients written out in float64, independently of gpu_softmax."""
    h = hid.reshape(-1, w.shape[1]).astype(np.float64)
    tt = t.reshape(-1)
    x = h @ w.T.astype(np.float64) + (0.0 if b is None else b.astype(np.float64))
    n, v = x.shape
    if logit_softcap is not None:
        xc = logit_softcap * np.tanh(x / logit_softcap)
        dcap = 1 - np.tanh(x / logit_softcap) ** 2
    else:
        xc, dcap = x, np.ones_like(x)
    m = xc.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(xc - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(xc - lse[:, None])
    valid = tt != ignore_index
    tv = np.where(valid, tt, 0)
    onehot = np.zeros((n, v))
    onehot[np.arange(n), tv] = 1.0
    q = (1 - label_smoothing) * onehot + label_smoothing / v
    row = np.where(valid, -(q * (xc - lse[:, None])).sum(axis=1) + z_loss * lse**2, 0.0)
    drow = (p - q) + 2 * z_loss * lse[:, None] * p
    go = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (n,)) if reduction == "none" else None
    if reduction == "none":
        loss, scale = row.reshape(t.shape), go
    elif reduction == "sum":
        loss, scale = row.sum(), np.full(n, float(grad_output))
    else:
        with np.errstate(all="ignore"):
            loss, scale = row.sum() / valid.sum(), np.full(n, float(grad_output) / valid.sum())
    g = np.where(valid[:, None], drow * dcap * scale[:, None], 0.0)
    return loss, (g @ w.astype(np.float64)).reshape(hid.shape), g.T @ h, g.sum(axis=0)


def check_all(actual, expected, rtol, atol, what=""):
    """Elementwise within rtol, plus an absolute floor of `atol` times the array's largest value
    (gradient entries that cancel to near zero carry the error of their largest terms)."""
    for name, a, e in zip(("loss", "grad_hidden", "grad_weight", "grad_bias"), actual, expected):
        a, e = np.asarray(a, dtype=np.float64), np.asarray(e, dtype=np.float64)
        scale = np.nanmax(np.abs(e)) if e.size and not np.isnan(e).all() else 1.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale + 1e-300, err_msg=f"{what} {name}")


# ----------------------------------------------------------------------------------
# the reference against the formula


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kw", OPTIONS, ids=[o[0] for o in OPTIONS])
@pytest.mark.parametrize("n,h,v", [(1, 3, 1), (33, 5, 31), (7, 4, 1025)], ids=str)
def test_reference_matches_formula(name, kw, reduction, n, h, v):
    hid, w, t, b = make(n, h, v, bias=True, ignore=(0, 5) if n > 1 else (), ignore_index=kw.get("ignore_index", -100))
    go = np.linspace(0.5, 1.5, n) if reduction == "none" else 0.7
    got = gs.linear_cross_entropy_with_grad(hid, w, t, b, reduction=reduction, grad_output=go, **kw)
    want = formula(hid, w, t, b, reduction=reduction, grad_output=go, **kw)
    assert got[0].dtype == np.float64 and got[1].dtype == got[2].dtype == got[3].dtype == np.float64
    assert got[0].shape == (() if reduction != "none" else (n,))
    check_all(got, want, 1e-10, 1e-12, f"{name} {reduction}")


def test_reference_keeps_leading_dims_and_dtypes():
    hid, w, t, _ = make(6, 4, 9, np.float32, lead=(2, 3))
    loss, gh, gw = gs.linear_cross_entropy_with_grad(hid, w, t, reduction="none")
    assert loss.shape == (2, 3) and loss.dtype == np.float32
    assert gh.shape == (2, 3, 4) and gh.dtype == np.float32 and gw.dtype == np.float32
    want = formula(hid, w, t, reduction="none")
    check_all((loss, gh, gw), want[:3], 1e-6, 1e-7)


def test_all_rows_ignored_mean_is_nan_with_zero_gradients():
    hid, w, t, b = make(4, 3, 5, bias=True, ignore=range(4))
    loss, gh, gw, gb = gs.linear_cross_entropy_with_grad(hid, w, t, b)
    assert np.isnan(loss)
    assert not gh.any() and not gw.any() and not gb.any()
    ref = F.cross_entropy(F.linear(torch.from_numpy(hid), torch.from_numpy(w), torch.from_numpy(b)),
                          torch.from_numpy(t))
    assert torch.isnan(ref)


# ----------------------------------------------------------------------------------
# the CuPy launcher's loop, emulated on the CPU


def _bf16_to_f64(words):
    return torch.from_numpy(np.ascontiguousarray(words).view(np.int16)).view(torch.bfloat16).double().numpy()


def _f64_to_bf16(x):
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(torch.bfloat16).view(torch.int16) \
        .numpy().view(np.uint16)


class PoisonedNumpy(types.SimpleNamespace):
    """numpy for the launcher, with `empty` filled with NaN and every allocation recorded."""

    def __init__(self, allocations):
        super().__init__()
        self.allocations = allocations

    def __getattr__(self, name):
        return getattr(np, name)

    def _note(self, a):
        self.allocations.append(a.shape)
        return a

    def empty(self, shape, dtype=float):
        dt = np.dtype(dtype)
        fill = 0x7FC0 if dt == np.uint16 else (np.nan if dt.kind == "f" else -1)
        return self._note(np.full(shape, fill, dtype=dt))

    def zeros(self, shape, dtype=float):
        return self._note(np.zeros(shape, dtype=dtype))

    def full(self, shape, value, dtype=None):
        return self._note(np.full(shape, value, dtype=dtype))


def _colmajor(buf, rows, cols, ld):
    flat = buf.reshape(-1)
    assert np.shares_memory(flat, buf), "gemm operand must be contiguous memory"
    assert ld >= max(1, rows), (ld, rows)
    assert (cols - 1) * ld + rows <= flat.size, "gemm reads past its operand"
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (flat.itemsize, ld * flat.itemsize))


@pytest.fixture
def emulated_launcher(monkeypatch):
    """The launcher's loop on NumPy: column-major GEMM emulator, reference CE in place."""
    log = types.SimpleNamespace(allocations=[], chunks=[], gemms=0, capturing=False, gemm_shapes=[])

    def to_f64(a, storage):
        return _bf16_to_f64(a) if storage == "bfloat16" else np.asarray(a, dtype=np.float64)

    def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta, storage):
        log.gemms += 1
        log.gemm_shapes.append((m, n, k))
        assert min(m, n, k, lda, ldb, ldc) >= 1, "cuBLAS refuses empty products and leading dimensions of 0"
        assert a.dtype == b.dtype
        A = _colmajor(a, *((m, k) if trans_a == lce.OP_N else (k, m)), lda)
        B = _colmajor(b, *((k, n) if trans_b == lce.OP_N else (n, k)), ldb)
        C = _colmajor(c, m, n, ldc)
        opa = to_f64(A, storage) if trans_a == lce.OP_N else to_f64(A, storage).T
        opb = to_f64(B, storage) if trans_b == lce.OP_N else to_f64(B, storage).T
        prod = opa @ opb
        if beta != 0:  # cuBLAS does not read C when beta == 0: poisoned C must not leak in
            prod = prod + beta * to_f64(C, storage if c.dtype == a.dtype else None)
        C[...] = _f64_to_bf16(prod) if (storage == "bfloat16" and c.dtype == np.uint16) else prod

    def ce(rec, want_grad, storage):
        assert rec.kind == "cupy" and rec.validate is False and rec.reduction in ("sum", "none")
        assert rec.inplace == want_grad
        log.chunks.append(rec.logits.shape)
        assert not np.isnan(to_f64(rec.logits, storage)).all() or rec.logits.size == 0
        x = to_f64(rec.logits, storage) if storage == "bfloat16" else rec.logits
        r = dataclasses.replace(rec, kind="numpy", logits=x, inplace=False)
        if not want_grad:
            return reference.cross_entropy_checked(r)
        loss, grad = reference.cross_entropy_with_grad_checked(r)
        rec.logits[...] = _f64_to_bf16(grad) if storage == "bfloat16" else grad
        return loss, rec.logits

    monkeypatch.setattr(lce, "_xp", lambda: PoisonedNumpy(log.allocations))
    monkeypatch.setattr(lce, "_cublas_gemm", gemm)
    monkeypatch.setattr(lce, "_capturing", lambda: log.capturing)
    monkeypatch.setattr(lce, "_free_bytes", lambda: 1 << 40)
    monkeypatch.setattr(ce_launch, "cross_entropy", lambda rec, storage=None: ce(rec, False, storage))
    monkeypatch.setattr(ce_launch, "cross_entropy_with_grad",
                        lambda rec, return_logsumexp=False, *, storage=None: ce(rec, True, storage))
    return log


def run_launcher(hid, w, t, b=None, wants=lce.Wants(), storage=None, **kw):
    if storage == "bfloat16":
        words = [None if a is None else _f64_to_bf16(a) for a in (hid, w, b)]
        std = [None if a is None else _checks.standin(a.astype(np.float16)) for a in (hid, w, b)]
        a = _checks_linear.check_linear_cross_entropy(std[0], std[1], t, std[2], **kw)
        a = dataclasses.replace(a, kind="cupy", hidden=words[0], weight=words[1], bias=words[2],
                                ce=dataclasses.replace(a.ce, kind="cupy"))
    else:
        a = _checks_linear.check_linear_cross_entropy(hid, w, t, b, **kw)
        a = dataclasses.replace(a, kind="cupy", ce=dataclasses.replace(a.ce, kind="cupy"))
    return lce.run(a, wants, storage=storage)


LAUNCH_TOL = {None: (1e-10, 1e-12), "float32": (2e-5, 1e-6), "float16": (1e-2, 5e-3), "bfloat16": (5e-2, 3e-2)}
DTYPES = {None: np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


@pytest.mark.parametrize("storage", [None, "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n,h,v,chunk", [(1, 3, 1, None), (33, 5, 31, 8), (33, 8, 31, 32), (37, 4, 1025, 10),
                                         (9, 6, 7, 100)], ids=str)
@pytest.mark.parametrize("bias", [False, True])
def test_launcher_loop_matches_reference(emulated_launcher, storage, reduction, n, h, v, chunk, bias):
    dtype = DTYPES[storage]
    hid, w, t, b = make(n, h, v, dtype, bias=bias, ignore=(1, n - 1) if n > 2 else ())
    # the expected values are the reference's on the same (rounded) inputs
    round_ = (lambda a: None if a is None else _bf16_to_f64(_f64_to_bf16(a))) if storage == "bfloat16" \
        else (lambda a: a)
    kw = dict(reduction=reduction, chunk_size=chunk, label_smoothing=0.1, z_loss=1e-3)
    go = np.linspace(0.5, 1.5, n).astype(np.float32) if reduction == "none" else 1.0
    want = gs.linear_cross_entropy_with_grad(round_(hid).astype(np.float64), round_(w).astype(np.float64), t,
                                             None if b is None else round_(b).astype(np.float64),
                                             grad_output=go, **kw)
    loss, gh, gw, gb = run_launcher(hid, w, t, b, storage=None if storage in (None, "float32", "float16")
                                    else storage, grad_output=go, **kw)
    if storage == "bfloat16":
        assert gh.dtype == np.uint16 and gw.dtype == np.float32
        gh = _bf16_to_f64(gh)
    else:
        assert gh.dtype == dtype and gw.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert loss.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert (gb is None) == (b is None)
    rtol, atol = LAUNCH_TOL[storage]
    got = (loss, gh, gw) + ((gb,) if bias else ())
    check_all(got, want, rtol, atol, f"{storage} {reduction}")
    kept = int((t != -100).sum())  # ignored rows never enter a product
    assert emulated_launcher.chunks[0] == (min(chunk or kept, kept), v)
    assert sum(c[0] for c in emulated_launcher.chunks) == kept


def test_launcher_all_ignored_and_empty(emulated_launcher):
    hid, w, t, b = make(5, 3, 4, bias=True, ignore=range(5))
    loss, gh, gw, gb = run_launcher(hid, w, t, b, chunk_size=2)
    assert np.isnan(loss) and not gh.any() and not gw.any() and not gb.any()
    hid0, t0 = np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    for reduction, expect in (("mean", np.nan), ("sum", 0.0)):
        loss, gh, gw, gb = run_launcher(hid0, w, t0, b, reduction=reduction)
        np.testing.assert_equal(float(loss), expect)
        assert gh.shape == (0, 3) and not gw.any() and not gb.any()


def test_launcher_skips_unwanted_gradients(emulated_launcher):
    hid, w, t, b = make(20, 4, 9, bias=True)
    full = run_launcher(hid, w, t, b, chunk_size=6)
    gemms_full = emulated_launcher.gemms
    emulated_launcher.gemms = 0
    loss, gh, gw, gb = run_launcher(hid, w, t, b, lce.Wants(hidden=True, weight=False, bias=False), chunk_size=6)
    assert gw is None and gb is None
    assert emulated_launcher.gemms == gemms_full // 2  # per chunk: logits and grad_hidden only
    np.testing.assert_allclose(gh, full[1], rtol=1e-12)
    emulated_launcher.gemms = 0
    loss_only = run_launcher(hid, w, t, b, lce.Wants(False, False, False), chunk_size=6)
    assert loss_only[1:] == (None, None, None) and emulated_launcher.gemms == 4
    np.testing.assert_allclose(loss_only[0], full[0], rtol=1e-12)


def test_launcher_validates_targets_once_before_computing(emulated_launcher):
    hid, w, t, _ = make(10, 3, 4)
    t[7] = 4
    with pytest.raises(ValueError, match=r"1 target value\(s\) \(e.g. 4\) outside \[0, 4\)"):
        run_launcher(hid, w, t, chunk_size=3)
    assert emulated_launcher.gemms == 0
    loss, *_ = run_launcher(hid, w, t, chunk_size=3, validate=False)  # NaN, never a bad access
    assert np.isnan(loss)


def test_launcher_is_deterministic_for_a_chunk_size(emulated_launcher):
    hid, w, t, b = make(50, 6, 13, np.float32, bias=True)
    a = run_launcher(hid, w, t, b, chunk_size=7)
    c = run_launcher(hid, w, t, b, chunk_size=7)
    for x, y in zip(a, c):
        assert np.array_equal(x, y)


def test_launcher_allocates_nothing_of_size_n_by_v(emulated_launcher):
    n, h, v, chunk = 1000, 4, 300, 64
    hid, w, t, b = make(n, h, v, np.float32, bias=True)
    run_launcher(hid, w, t, b, chunk_size=chunk)
    sizes = [int(np.prod(s)) for s in emulated_launcher.allocations]
    assert max(sizes) == chunk * v  # the one logits buffer, reused by every chunk
    assert sum(s for s in sizes if s >= v * h) <= chunk * v + 2 * v * h + n * h
    assert all(c[0] <= chunk for c in emulated_launcher.chunks)


class _FakeDeviceArray:
    def __init__(self, dtype, ptr):
        self.dtype = np.dtype(dtype)
        self.data = types.SimpleNamespace(ptr=ptr)


@pytest.mark.parametrize("storage,a_dtype,c_dtype,types_,compute,scalar", [
    ("bfloat16", np.uint16, np.uint16, (14, 14, 14), lce.COMPUTE_32F, np.float32),
    ("bfloat16", np.uint16, np.float32, (14, 14, 0), lce.COMPUTE_32F, np.float32),
    ("float16", np.float16, np.float32, (2, 2, 0), lce.COMPUTE_32F, np.float32),
    ("float16", np.float16, np.float16, (2, 2, 2), lce.COMPUTE_32F, np.float32),
    ("float32", np.float32, np.float32, (0, 0, 0), lce.COMPUTE_32F, np.float32),
    ("float64", np.float64, np.float64, (1, 1, 1), lce.COMPUTE_64F, np.float64),
])
def test_gemm_passes_cublas_the_right_types(monkeypatch, storage, a_dtype, c_dtype, types_, compute, scalar):
    """The cublasGemmEx call itself (no GPU): data types, compute type, host scalars, pointer mode."""
    import sys

    import cupy.cuda.device

    calls = []

    def gemm_ex(handle, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, comp, algo):
        import ctypes

        ctype = ctypes.c_double if scalar == np.float64 else ctypes.c_float
        calls.append(dict(args=(handle, ta, tb, m, n, k, A, lda, B, ldb, C, ldc), types=(at, bt, ct), comp=comp,
                          algo=algo, alpha=ctype.from_address(alpha).value, beta=ctype.from_address(beta).value))

    mode = {"value": 1}
    fake = types.SimpleNamespace(gemmEx=gemm_ex, CUBLAS_POINTER_MODE_HOST=0,
                                 getPointerMode=lambda h: mode["value"],
                                 setPointerMode=lambda h, v: mode.update(value=v))
    import cupy_backends.cuda.libs

    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.cublas", fake)
    monkeypatch.setitem(vars(cupy_backends.cuda.libs), "cublas", fake)  # skips the lazy library load
    monkeypatch.setattr(cupy.cuda.device, "get_cublas_handle", lambda: 77)
    a, b, c = _FakeDeviceArray(a_dtype, 1000), _FakeDeviceArray(a_dtype, 2000), _FakeDeviceArray(c_dtype, 3000)
    lce._gemm(lce.OP_T, lce.OP_N, 5, 6, 7, a, 7, b, 7, c, 5, 0.5, storage)
    assert mode["value"] == 0  # switched to host scalars
    (call,) = calls
    assert call["args"] == (77, lce.OP_T, lce.OP_N, 5, 6, 7, 1000, 7, 2000, 7, 3000, 5)
    assert call["types"] == types_ and call["comp"] == compute and call["algo"] == lce.GEMM_DEFAULT
    assert call["alpha"] == 1.0 and call["beta"] == 0.5


# ----------------------------------------------------------------------------------
# the torch CPU path


def torch_inputs(n, h, v, dtype, seed=0, bias=True, ignore=(), lead=None, ignore_index=-100):
    hid, w, t, b = make(n, h, v, np.float64, seed=seed, bias=bias, ignore=ignore, lead=lead,
                        ignore_index=ignore_index)
    conv = lambda a: None if a is None else torch.from_numpy(a).to(dtype).requires_grad_()  # noqa: E731
    return conv(hid), conv(w), torch.from_numpy(t), conv(b)


def torch_expected(hid, w, t, b, reduction, grad_output, ignore_index=-100, label_smoothing=0.0, z_loss=0.0,
                   logit_softcap=None):
    """F.cross_entropy(F.linear(...).float()) plus the z-loss/softcap formula, in float64."""
    leaves = [x.detach().double().requires_grad_() for x in (hid, w) + ((b,) if b is not None else ())]
    logits = F.linear(leaves[0], leaves[1], leaves[2] if b is not None else None)
    if logit_softcap is not None:
        logits = logit_softcap * torch.tanh(logits / logit_softcap)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)
    if z_loss:
        valid = t.reshape(-1) != ignore_index
        zl = z_loss * torch.logsumexp(logits.reshape(-1, logits.shape[-1]), -1) ** 2 * valid
        loss = loss + (zl if reduction == "none" else zl.sum() / (valid.sum() if reduction == "mean" else 1))
    if reduction == "none":
        loss = loss.reshape(t.shape)
    grads = torch.autograd.grad((loss * grad_output.double()).sum(), leaves)
    return (loss.detach(),) + grads


TORCH_TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-6), torch.float16: (1e-2, 5e-3),
             torch.bfloat16: (5e-2, 3e-2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,kw", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_torch_cpu_matches_unfused(name, kw, reduction, dtype):
    hid, w, t, b = torch_inputs(33, 8, 31, dtype, ignore=(2, 30), ignore_index=kw.get("ignore_index", -100))
    go = (torch.rand(33, generator=torch.Generator().manual_seed(3)) + 0.5) if reduction == "none" \
        else torch.tensor(0.8)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, reduction=reduction, chunk_size=10, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    got = (loss.detach(),) + torch.autograd.grad((loss * go).sum(), (hid, w, b))
    assert [g.dtype for g in got[1:]] == [dtype] * 3
    want = torch_expected(hid, w, t, b, reduction, go, **kw)
    check_all([g.double().numpy() for g in got], [e.numpy() for e in want], *TORCH_TOL[dtype], str(dtype))


@pytest.mark.parametrize("n,v,chunk", [(1, 1, None), (33, 31, 4), (33, 1025, 32), (7, 5, 3)], ids=str)
def test_torch_cpu_odd_sizes_and_leading_dims(n, v, chunk):
    hid, w, t, b = torch_inputs(n, 3, v, torch.float64, bias=True, ignore=(0,) if n > 1 else ())
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, chunk_size=chunk)
    got = torch.autograd.grad(loss, (hid, w, b))
    want = torch_expected(hid, w, t, b, "mean", torch.tensor(1.0))
    torch.testing.assert_close(loss.detach(), want[0])
    for g, e in zip(got, want[1:]):
        torch.testing.assert_close(g, e)
    h3 = hid.detach().reshape(1, n, 3).requires_grad_()
    loss3 = gst.linear_cross_entropy(h3, w, t.reshape(1, n), linear_bias=b, reduction="none", chunk_size=chunk)
    assert loss3.shape == (1, n)
    loss3.sum().backward()
    assert h3.grad.shape == (1, n, 3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.2, "z_loss": 0.05, "logit_softcap": 3.0}],
                         ids=["plain", "extras"])
def test_torch_cpu_gradcheck(reduction, kw):
    hid, w, t, b = torch_inputs(5, 3, 4, torch.float64, ignore=(1,))
    fn = lambda h_, w_, b_: gst.linear_cross_entropy(  # noqa: E731
        h_, w_, t, linear_bias=b_, reduction=reduction, chunk_size=2, **kw)
    assert torch.autograd.gradcheck(fn, (hid, w, b))


def test_frozen_inputs_skip_their_gradients_and_products(monkeypatch):
    hid, w, t, b = torch_inputs(12, 4, 9, torch.float64)
    calls = []
    real = torch_linear._cpu_run
    monkeypatch.setattr(torch_linear, "_cpu_run", lambda a, wants, *rest: calls.append(wants) or real(a, wants, *rest))
    w_frozen = w.detach()
    loss = gst.linear_cross_entropy(hid, w_frozen, t, linear_bias=b)
    loss.backward()
    assert calls == [lce.Wants(hidden=True, weight=False, bias=True)]
    assert hid.grad is not None and b.grad is not None
    with torch.no_grad():
        gst.linear_cross_entropy(hid, w, t, linear_bias=b)
    assert calls[-1] == lce.Wants(False, False, False)


def test_saved_gradients_scale_with_grad_output_and_survive_retain_graph():
    hid, w, t, b = torch_inputs(6, 3, 5, torch.float64)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b)
    (3 * loss).backward(retain_graph=True)
    want = torch_expected(hid, w, t, b, "mean", torch.tensor(3.0))
    torch.testing.assert_close(w.grad, want[2])
    loss.backward()
    torch.testing.assert_close(w.grad, want[2] * 4 / 3)


def assert_same_loss_and_grads(ours, theirs, hid, t):
    """Our module and torch's, holding the same parameters, give the same loss on (hid, t) and the same gradient
    to each parameter."""
    got, want = ours(hid, t), theirs(hid, t)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
    assert len(ours_params) == len(theirs_params)
    for p_ours, p_theirs in zip(ours_params, theirs_params):
        torch.testing.assert_close(p_ours.grad, p_theirs.grad)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("class_weights", [False, True])
def test_module_loads_a_torch_state_dict_and_matches_it(bias, class_weights):
    torch.manual_seed(0)
    cw = torch.rand(11, dtype=torch.float64) + 0.1 if class_weights else None
    theirs = torch.nn.LinearCrossEntropyLoss(6, 11, bias=bias, weight=cw, dtype=torch.float64, label_smoothing=0.1)
    ours = gst.LinearCrossEntropyLoss(6, 11, bias=bias, weight=None if cw is None else torch.zeros(11),
                                      dtype=torch.float64, label_smoothing=0.1, chunk_size=4)
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys and shapes
    assert set(ours.state_dict()) == set(theirs.state_dict())
    assert "label_smoothing=0.1" in repr(ours) and "chunk_size=4" in repr(ours)
    hid = torch.randn(9, 6, dtype=torch.float64)
    t = torch.randint(0, 11, (9,))
    t[2] = -100
    assert_same_loss_and_grads(ours, theirs, hid, t)


# ----------------------------------------------------------------------------------
# the torch CUDA branch, with the bridge's CuPy hand-over emulated


@pytest.fixture
def emulated_torch_cuda(monkeypatch, emulated_launcher, host_handover):
    calls = []

    real_run = lce.run

    def run(a, wants, *, storage=None, free_bytes=None):
        calls.append((storage, a.ce.validate, free_bytes))
        return real_run(a, wants, storage=storage, free_bytes=free_bytes)

    monkeypatch.setattr(lce, "run", run)
    monkeypatch.setattr(tb, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(tb, "cupy_on", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(tb, "to_cupy", host_handover.to_dev)
    monkeypatch.setattr(tb, "from_cupy", host_handover.from_dev)
    monkeypatch.setattr(torch_linear, "_free_device_bytes", lambda device: 1 << 30)
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_emulated_cuda_branch(emulated_torch_cuda, dtype, reduction):
    hid, w, t, b = torch_inputs(21, 8, 17, dtype, ignore=(4,))
    kw = dict(label_smoothing=0.1, z_loss=1e-3)
    go = torch.linspace(0.5, 1.5, 21) if reduction == "none" else torch.tensor(1.0)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, reduction=reduction, chunk_size=8, **kw)
    got = (loss.detach(),) + torch.autograd.grad((loss * go).sum(), (hid, w, b))
    storage = "bfloat16" if dtype == torch.bfloat16 else None
    assert emulated_torch_cuda and all(c[:2] == (storage, False) for c in emulated_torch_cuda)
    assert loss.dtype == torch.float32 and [g.dtype for g in got[1:]] == [dtype] * 3
    want = torch_expected(hid, w, t, b, reduction, go, **kw)
    check_all([g.double().numpy() for g in got], [e.numpy() for e in want], *TORCH_TOL[dtype], str(dtype))


def test_emulated_cuda_branch_picks_the_chunk_from_free_memory(emulated_torch_cuda, emulated_launcher):
    hid, w, t, b = torch_inputs(40, 4, 7, torch.float32)
    gst.linear_cross_entropy(hid, w, t, linear_bias=b)
    assert emulated_torch_cuda[-1][2] == 1 << 30
    assert emulated_launcher.chunks[0] == (40, 7)


# ----------------------------------------------------------------------------------
# memory accounting on the torch CPU path


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest storage any torch op produces (views report their base's)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(o, torch.Tensor):
                self.largest = max(self.largest, o.untyped_storage().nbytes())
        return out


def test_torch_cpu_path_never_holds_n_by_v_logits():
    n, h, v, chunk = 4096, 8, 512, 64
    hid, w, t, b = torch_inputs(n, h, v, torch.float32)
    full_logits = n * v * 4

    with _LargestTensor() as unfused:
        F.cross_entropy(F.linear(hid, w, b), t).backward()
    assert unfused.largest >= full_logits  # the tracker sees the logits when they exist

    hid.grad = w.grad = b.grad = None
    with _LargestTensor() as fused:
        gst.linear_cross_entropy(hid, w, t, linear_bias=b, chunk_size=chunk).backward()
    # the biggest torch tensor is an input-sized gradient or one chunk of logits
    assert fused.largest <= max(n * h * 4, v * h * 4, chunk * v * 4)
    assert fused.largest * 16 <= full_logits

    # NumPy temporaries of the reference cross entropy: a few float64 chunks at most
    tracemalloc.start()
    try:
        gst.linear_cross_entropy(hid, w, t, linear_bias=b, chunk_size=chunk).backward()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 12 * chunk * v * 8 and peak * 2 <= n * v * 8


# ----------------------------------------------------------------------------------
# the chunk-size rule


def test_chunk_rule_at_the_goal_shape():
    rows = _chunking.chunk_rows(16384, 128256, 2)
    assert rows == 2048  # 8 chunks of 2048 rows: 525 MB of bf16 logits at a time
    extra = _chunking.extra_bytes(16384, 128256, 4096, 2, 4, rows)
    assert extra["logits_chunk"] == 2048 * 128256 * 2 <= _chunking.CHUNK_BUDGET_BYTES
    assert extra["accumulator"] == 128256 * 4096 * 4
    assert extra["gathered"] == 2 * 2048 * 4096 * 2 + 16384 * 8
    assert _chunking.extra_bytes(16384, 128256, 4096, 2, 4, rows, grad_weight_acc="weight")["accumulator"] == 0
    wide = _chunking.extra_bytes(16384, 128256, 4096, 2, 4, rows, wide=True)
    assert wide["logits_chunk"] == 2048 * 128256 * (2 + 4)  # float16: float32 logits and a float16 gradient
    assert _chunking.unfused_bytes(16384, 128256, 2) > 12e9


@pytest.mark.parametrize("rows", [1, 7, 255, 256, 1000, 16384, 100003])
@pytest.mark.parametrize("classes,itemsize", [(1, 4), (31, 2), (32000, 2), (128256, 2), (128256, 4), (262144, 8)])
@pytest.mark.parametrize("free", [None, 1 << 20, 80 << 30])
def test_chunk_rule_respects_budget_and_covers_rows(rows, classes, itemsize, free):
    c = _chunking.chunk_rows(rows, classes, itemsize, free)
    assert 1 <= c <= max(rows, 1)
    cap = _chunking.CHUNK_BUDGET_BYTES if free is None else min(_chunking.CHUNK_BUDGET_BYTES, free // 4)
    assert c == 1 or c * classes * itemsize <= cap
    most = max(1, cap // (classes * itemsize))
    aligned = most - most % 256 if most >= 256 else most
    if rows <= aligned:
        assert c == rows
    else:  # as few chunks as the budget allows, evened out
        assert -(-rows // c) == -(-rows // aligned)


# ----------------------------------------------------------------------------------
# errors


def test_errors():
    hid, w, t, b = make(4, 3, 5, np.float32, bias=True)
    lin = gs.linear_cross_entropy_with_grad
    with pytest.raises(TypeError, match="hidden must be float16, float32 or float64"):
        lin(hid.astype(np.int32), w, t)
    with pytest.raises(TypeError, match="weight must be float16, float32 or float64"):
        lin(hid, w.astype(np.int64), t)
    with pytest.raises(TypeError, match="weight has dtype float64 but hidden has dtype float32"):
        lin(hid, w.astype(np.float64), t)
    with pytest.raises(ValueError, match=r"hidden has 3 features .* but weight has 2"):
        lin(hid, w[:, :2], t)
    with pytest.raises(ValueError, match="weight must be 2-dimensional"):
        lin(hid, w[0], t)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(5,\)"):
        lin(hid, w, t, b[:4])
    with pytest.raises(TypeError, match="target must hold integer class indices or float class probabilities"):
        lin(hid, w, t.astype(np.complex64))
    with pytest.raises(ValueError, match=r"class probabilities must have shape \(4, 5\)"):
        lin(hid, w, t.astype(np.float32))
    with pytest.raises(ValueError, match=r"target has shape \(3,\); class indices must have hidden's shape"):
        lin(hid, w, t[:3])
    with pytest.raises(ValueError, match=r"class_weight has shape \(4,\), expected \(5,\)"):
        lin(hid, w, t, class_weight=np.ones(4, np.float32))
    with pytest.raises(TypeError, match="class_weight must be float16, float32 or float64"):
        lin(hid, w, t, class_weight=np.ones(5, np.int64))
    with pytest.raises(ValueError, match="grad_weight_acc must be one of"):
        lin(hid, w, t, grad_weight_acc="float16")
    with pytest.raises(TypeError, match="skip_ignored must be True or False"):
        lin(hid, w, t, skip_ignored=1)
    with pytest.raises(ValueError, match="0 rows"):
        lin(hid, w[:0], t)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        lin(hid, w, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        lin(hid, w, t, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        lin(hid, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be a positive integer"):
        lin(hid, w, t, chunk_size=2.5)
    with pytest.raises(ValueError, match=r"target value\(s\)"):
        lin(hid, w, np.array([0, 1, 5, 2]))
    with pytest.raises(TypeError, match="NumPy or CuPy array"):
        lin(hid.tolist(), w, t)


def test_torch_errors():
    hid, w, t, b = torch_inputs(4, 3, 5, torch.float32)
    with pytest.raises(TypeError, match="must share one dtype"):
        gst.linear_cross_entropy(hid, w.detach().to(torch.bfloat16), t)
    with pytest.raises(TypeError, match="must share one dtype"):
        gst.linear_cross_entropy(hid, w.detach().double(), t)
    # the messages use torch's names: input, linear_weight, linear_bias, weight (the class weights)
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(5,\)"):
        gst.linear_cross_entropy(hid, w, t, weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"input has 3 features .* but linear_weight has 2"):
        gst.linear_cross_entropy(hid, w[:, :2], t)
    with pytest.raises(ValueError, match=r"linear_bias has shape \(4,\)"):
        gst.linear_cross_entropy(hid, w, t, linear_bias=b[:4])
    with pytest.raises(TypeError, match="both bias .deprecated. and linear_bias"):
        gst.linear_cross_entropy(hid, w, t, b, linear_bias=b)
    with pytest.raises(TypeError, match="options must be a torch.nn.LinearCrossEntropyOptions"):
        gst.linear_cross_entropy(hid, w, t, options={"batch_chunk_size": 2})
    with pytest.raises(ValueError, match=r"class indices must have input's shape .* \(4, 1\)"):
        gst.linear_cross_entropy(hid, w.detach().reshape(5, 1, 3), t)
    with pytest.raises(ValueError, match=r"linear_bias has shape \(5,\), expected \(5, 1\)"):
        gst.linear_cross_entropy(hid, w.detach().reshape(5, 1, 3), t.reshape(4, 1), linear_bias=b)
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(5,\)"):
        gst.LinearCrossEntropyLoss(3, 5, weight=torch.ones(4))
    with pytest.raises(NotImplementedError, match="no gradient to probability targets"):
        gst.linear_cross_entropy(hid, w, torch.rand(4, 5, requires_grad=True))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        gst.linear_cross_entropy(hid, w.detach().numpy(), t)
    with pytest.raises(ValueError, match=r"target value\(s\)"):
        gst.linear_cross_entropy(hid, w, torch.tensor([0, 1, 9, 2]))


# ----------------------------------------------------------------------------------
# the example


def test_lm_head_example_trains(capsys, monkeypatch):
    result = load_example("train_lm_head_torch", monkeypatch).main(["--steps", "12", "--batch", "256", "--chunk-size", "64"])
    out = capsys.readouterr().out
    assert "fused loss" in out and "MiB" in out
    assert result["vocab"] > 1000 and len(result["losses"]) == 12
    assert result["losses"][-1] < result["losses"][0] - 0.1
    assert abs(result["fused"] - result["unfused"]) <= 1e-5 * abs(result["unfused"])
    assert result["saved_bytes"] > 0


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(torch_linear, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


# ----------------------------------------------------------------------------------
# torch's own F.linear_cross_entropy as the oracle (issue 22): every option it accepts

TORCH_LCE_CASES = [
    # (class weights, label_smoothing, ignore_index passed (None: leave torch's default), probability targets)
    (False, 0.0, None, False),
    (True, 0.0, None, False),
    (False, 0.25, None, False),
    (True, 0.25, None, False),
    (False, 0.0, 4, False),
    (True, 0.1, 4, False),
    (False, 0.0, None, True),
    (True, 0.0, None, True),
    (True, 0.3, None, True),
]


def torch_lce_inputs(dtype, n=13, h=5, v=9, *, class_weights, ignore_index, soft, seed=0, bias=True, unbatched=False):
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn((h,) if unbatched else (n, h), generator=g, dtype=dtype).requires_grad_()
    w = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    b = (torch.randn(v, generator=g, dtype=dtype) * 0.5).requires_grad_() if bias else None
    cw = torch.rand(v, generator=g, dtype=dtype) + 0.2 if class_weights else None
    lead = hid.shape[:-1]
    if soft:
        t = torch.randn(lead + (v,), generator=g, dtype=dtype).softmax(-1)
    else:
        t = torch.randint(0, v, lead, generator=g)
        if not unbatched and n > 7:
            t[1] = -100 if ignore_index is None else ignore_index
            t[6] = t[7]
    return hid, w, b, cw, t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", TORCH_LCE_CASES, ids=str)
@pytest.mark.parametrize("bias,unbatched", [(True, False), (False, False), (True, True)], ids=str)
def test_matches_torch_linear_cross_entropy(dtype, reduction, case, bias, unbatched):
    class_weights, smoothing, ignore_index, soft = case
    hid, w, b, cw, t = torch_lce_inputs(dtype, class_weights=class_weights, ignore_index=ignore_index, soft=soft,
                                        bias=bias, unbatched=unbatched)
    kw = dict(linear_bias=b, weight=cw, reduction=reduction, label_smoothing=smoothing)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    want = F.linear_cross_entropy(hid, w, t, **kw)
    got = gst.linear_cross_entropy(hid, w, t, chunk_size=4, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    # a non-uniform upstream gradient for reduction="none"
    go = torch.linspace(-1.0, 2.0, want.numel(), dtype=dtype).reshape(want.shape) if reduction == "none" \
        else torch.tensor(0.7, dtype=dtype)
    leaves = [x for x in (hid, w, b) if x is not None]
    g_want = torch.autograd.grad((want * go).sum(), leaves)
    g_got = torch.autograd.grad((got * go).sum(), leaves)
    rtol, atol = (1e-10, 1e-12) if dtype == torch.float64 else (2e-5, 1e-6)
    check_all([x.detach().double().numpy() for x in (got,) + g_got],
              [x.detach().double().numpy() for x in (want,) + g_want], rtol, atol, str(case))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_chunked_options_are_accepted(reduction):
    hid, w, b, cw, t = torch_lce_inputs(torch.float64, class_weights=True, ignore_index=None, soft=False)
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4, chunking_method=None)
    want = F.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, reduction=reduction, options=opts)
    calls = []
    real = _chunking.run_chunks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_chunking, "run_chunks", lambda a, wants, ops, tt, go, chunk: calls.append(chunk)
                   or real(a, wants, ops, tt, go, chunk))
        got = gst.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, reduction=reduction, options=opts)
    assert calls and set(calls) == {4}  # its batch_chunk_size is our chunk_size
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_gradcheck_with_class_weights_and_smoothing(reduction, soft):
    hid, w, b, cw, t = torch_lce_inputs(torch.float64, n=5, h=3, v=4, class_weights=True, ignore_index=None,
                                        soft=soft)
    fn = lambda h_, w_, b_: gst.linear_cross_entropy(  # noqa: E731
        h_, w_, t, linear_bias=b_, weight=cw, reduction=reduction, label_smoothing=0.2, z_loss=0.05,
        logit_softcap=3.0, chunk_size=2)
    assert torch.autograd.gradcheck(fn, (hid, w, b))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_extras_with_class_weights_match_the_unfused_formula(reduction, soft):
    hid, w, b, cw, t = torch_lce_inputs(torch.float64, class_weights=True, ignore_index=None, soft=soft)
    kw = dict(label_smoothing=0.1, z_loss=0.02, logit_softcap=5.0, reduction=reduction)
    got = gst.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, chunk_size=3, **kw)
    want = torch_linear.unfused(hid, w, t, b, cw, CEOptions.checked(**kw))
    torch.testing.assert_close(got, want)
    go = torch.rand(want.shape, dtype=torch.float64) + 0.5
    torch_grads = torch.autograd.grad((got * go).sum(), (hid, w, b))
    torch.testing.assert_close(torch_grads, torch.autograd.grad((want * go).sum(), (hid, w, b)))
    # and the NumPy/CuPy API's reference agrees (z-loss mean over rows, CE mean over weights)
    np_out = gs.linear_cross_entropy_with_grad(
        hid.detach().numpy(), w.detach().numpy(), t.numpy(), b.detach().numpy(), class_weight=cw.numpy(),
        grad_output=go.numpy() if reduction == "none" else float(go), **kw)
    check_all(np_out, [got.detach().numpy()] + [g.numpy() for g in torch_grads], 1e-10, 1e-12)


def test_ignore_index_none_means_torchs_default():
    hid, w, b, cw, t = torch_lce_inputs(torch.float64, class_weights=False, ignore_index=None, soft=False)
    torch.testing.assert_close(gst.linear_cross_entropy(hid, w, t, ignore_index=None),
                               F.linear_cross_entropy(hid, w, t))
    torch.testing.assert_close(gst.linear_cross_entropy(hid, w, t), F.linear_cross_entropy(hid, w, t))


def test_positional_bias_still_works_with_a_deprecation_warning():
    hid, w, t, b = torch_inputs(6, 3, 5, torch.float64)
    with pytest.warns(DeprecationWarning, match="linear_bias=bias"):
        old = gst.linear_cross_entropy(hid, w, t, b)
    with pytest.warns(DeprecationWarning):
        old_kw = gst.linear_cross_entropy(hid, w, t, bias=b)
    new = gst.linear_cross_entropy(hid, w, t, linear_bias=b)
    torch.testing.assert_close(old, new)
    torch.testing.assert_close(old_kw, new)


def test_any_leading_shape_and_leading_shaped_probabilities():
    hid, w, b, cw, t = torch_lce_inputs(torch.float64, n=12, class_weights=True, ignore_index=None, soft=True)
    got = gst.linear_cross_entropy(hid.reshape(3, 4, -1), w, t.reshape(3, 4, -1), linear_bias=b, weight=cw,
                                   reduction="none")
    want = F.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, reduction="none")
    torch.testing.assert_close(got, want.reshape(3, 4))


# ----------------------------------------------------------------------------------
# ignored and weight-0 rows never enter a product (issue 22 item 2)


def _cpu_chunks(monkeypatch):
    """The (rows, V) shapes of the logits each chunk of the torch CPU path builds."""
    seen = []
    real = reference.cross_entropy_with_grad_checked
    monkeypatch.setattr(reference, "cross_entropy_with_grad_checked",
                        lambda rec, *a, **k: seen.append(rec.logits.shape) or real(rec, *a, **k))
    real_fwd = reference.cross_entropy_checked
    monkeypatch.setattr(reference, "cross_entropy_checked",
                        lambda rec, *a, **k: seen.append(rec.logits.shape) or real_fwd(rec, *a, **k))
    return seen


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_launcher_leaves_ignored_and_weight_zero_rows_out_of_every_product(emulated_launcher, reduction):
    n, h, v = 40, 5, 11
    hid, w, t, b = make(n, h, v, np.float32, bias=True, ignore=range(0, n, 3))
    cw = (np.random.default_rng(1).random(v) + 0.5).astype(np.float32)
    cw[[2, 5]] = 0.0
    dropped = (t == -100) | np.isin(t, [2, 5])
    go = np.linspace(-1, 2, n).astype(np.float32) if reduction == "none" else 1.0
    kw = dict(reduction=reduction, class_weight=cw, grad_output=go)
    loss, gh, gw, gb = run_launcher(hid, w, t, b, chunk_size=8, **kw)
    kept = int((~dropped).sum())
    assert sum(c[0] for c in emulated_launcher.chunks) == kept
    assert all(k == kept or k <= 8 for (_, _, k) in emulated_launcher.gemm_shapes if k not in (h, v))
    # grad_hidden (allocated NaN-poisoned when not zeroed) is exactly 0 on the dropped rows
    assert not gh[dropped].any() and np.isfinite(gh).all()
    if reduction == "none":
        assert not loss[dropped].any()
    want = gs.linear_cross_entropy_with_grad(hid.astype(np.float64), w.astype(np.float64), t,
                                             b.astype(np.float64), **kw)
    check_all((loss, gh, gw, gb), want, 2e-5, 1e-6)


def test_weight_zero_rows_stay_in_when_smoothing_or_z_loss_makes_them_count(emulated_launcher):
    hid, w, t, b = make(20, 3, 6, np.float64, bias=True)
    cw = np.ones(6)
    cw[t[0]] = 0.0
    for kw in ({"label_smoothing": 0.1}, {"z_loss": 0.01}):
        emulated_launcher.chunks.clear()
        got = run_launcher(hid, w, t, b, class_weight=cw, chunk_size=7, **kw)
        assert sum(c[0] for c in emulated_launcher.chunks) == 20
        check_all(got, gs.linear_cross_entropy_with_grad(hid, w, t, b, class_weight=cw, **kw), 1e-10, 1e-12)


def test_all_target_weights_zero_keeps_torchs_nan(emulated_launcher):
    hid, w, t, b = make(6, 3, 4, np.float64, bias=True)
    loss, gh, gw, gb = run_launcher(hid, w, t, b, class_weight=np.zeros(4), chunk_size=4)
    want = gs.linear_cross_entropy_with_grad(hid, w, t, b, class_weight=np.zeros(4))
    assert np.isnan(float(loss)) and np.isnan(float(want[0]))


def test_capturing_computes_every_row_without_a_host_read(emulated_launcher):
    hid, w, t, b = make(30, 4, 7, np.float64, bias=True, ignore=range(0, 30, 2))
    emulated_launcher.capturing = True
    got = run_launcher(hid, w, t, b, chunk_size=8)
    assert sum(c[0] for c in emulated_launcher.chunks) == 30
    emulated_launcher.capturing, emulated_launcher.chunks[:] = False, []
    skipped = run_launcher(hid, w, t, b, chunk_size=8)
    assert sum(c[0] for c in emulated_launcher.chunks) == 15
    emulated_launcher.chunks.clear()
    run_launcher(hid, w, t, b, chunk_size=8, skip_ignored=False)
    assert sum(c[0] for c in emulated_launcher.chunks) == 30
    check_all(got, skipped, 1e-12, 1e-14)
    check_all(got, gs.linear_cross_entropy_with_grad(hid, w, t, b), 1e-10, 1e-12)
    emulated_launcher.capturing = True
    with pytest.raises(ValueError, match="CUDA graph capture cannot"):
        run_launcher(hid, w, t, b, class_weight=np.ones(7), z_loss=0.1)


def test_torch_cpu_path_skips_ignored_rows(monkeypatch):
    hid, w, t, b = torch_inputs(24, 4, 9, torch.float64, ignore=range(0, 24, 4))
    seen = _cpu_chunks(monkeypatch)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, chunk_size=5, reduction="none")
    go = torch.linspace(0.5, 1.5, 24, dtype=torch.float64)
    got = torch.autograd.grad((loss * go).sum(), (hid, w, b))
    assert sum(s[0] for s in seen) == 2 * 18  # forward (losses) and backward (gradients): kept rows only
    assert not got[0][::4].any() and not loss[::4].any()
    want = torch_expected(hid, w, t, b, "none", go)
    check_all([x.detach().numpy() for x in (loss,) + got], [e.numpy() for e in want], 1e-10, 1e-12)


# ----------------------------------------------------------------------------------
# accumulation, float16 overflow, H = 0 (issue 22 item 3, issue 23 items 9 and 11)


@pytest.mark.parametrize("storage", [None, "bfloat16"])
def test_launcher_grad_weight_in_the_weights_own_dtype(emulated_launcher, storage):
    hid, w, t, b = make(30, 4, 9, np.float16 if storage is None else np.float32, bias=True)
    wide = run_launcher(hid, w, t, b, storage=storage, chunk_size=7)
    own = run_launcher(hid, w, t, b, storage=storage, chunk_size=7, grad_weight_acc="weight")
    sums = np.float16 if storage is None else np.uint16
    assert wide[2].dtype == np.float32 and own[2].dtype == sums and own[3].dtype == sums
    conv = (lambda a: _bf16_to_f64(a)) if storage else (lambda a: a.astype(np.float64))
    check_all((conv(own[2]), conv(own[3])), (wide[2], wide[3]), 2e-2, 1e-2)


def test_torch_cpu_grad_weight_in_the_weights_own_dtype():
    hid, w, t, b = torch_inputs(30, 4, 9, torch.bfloat16)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, chunk_size=7, grad_weight_acc="weight")
    gw = torch.autograd.grad(loss, w)[0]
    want = torch_expected(hid, w, t, b, "mean", torch.tensor(1.0))[2]
    assert gw.dtype == torch.bfloat16
    check_all([gw.double().numpy()], [want.numpy()], 5e-2, 3e-2)


def test_launcher_float16_chunk_logits_do_not_overflow(emulated_launcher):
    # logits of +-90000 (beyond float16's 65504): the reference's loss is exactly 0, with 0 gradients
    hid = np.array([[300.0], [-300.0], [300.0]], dtype=np.float16)
    w = np.array([[300.0], [-300.0]], dtype=np.float16)
    t = np.array([0, 0, 0])
    for reduction in ("mean", "none"):
        want = gs.linear_cross_entropy_with_grad(hid.astype(np.float64), w.astype(np.float64), t,
                                                 reduction=reduction)
        got = run_launcher(hid, w, t, reduction=reduction, chunk_size=2)
        for g in got[:3]:
            assert np.isfinite(np.asarray(g, dtype=np.float64)).all(), reduction
        check_all(got[:3], want, 1e-3, 1e-3, reduction)
    # the float32 chunk is the logits buffer; the gradient products read a float16 copy
    assert (2, 2) in emulated_launcher.allocations


def test_zero_features_never_reach_cublas(emulated_launcher):
    hid, w, t, b = np.zeros((5, 0)), np.zeros((4, 0)), np.array([0, 1, 2, 3, -100]), np.arange(4.0)
    got = run_launcher(hid, w, t, b, chunk_size=2)  # the emulator refuses m, n, k or ld of 0
    want = gs.linear_cross_entropy_with_grad(hid, w, t, b)
    assert got[1].shape == (5, 0) and got[2].shape == (4, 0)
    check_all(got, want, 1e-12, 1e-14)
    assert all(min(s) >= 1 for s in emulated_launcher.gemm_shapes)
    h0 = torch.zeros(5, 0, dtype=torch.float64, requires_grad=True)
    w0 = torch.zeros(4, 0, dtype=torch.float64, requires_grad=True)
    b0 = torch.arange(4.0, dtype=torch.float64, requires_grad=True)
    t0 = torch.from_numpy(t)
    loss = gst.linear_cross_entropy(h0, w0, t0, linear_bias=b0)
    torch.testing.assert_close(loss, F.linear_cross_entropy(h0, w0, t0, linear_bias=b0))


# ----------------------------------------------------------------------------------
# unclear errors made clear (issue 23 item 11)


def test_double_backward_says_it_is_unsupported():
    hid, w, t, b = torch_inputs(6, 3, 5, torch.float64)
    for reduction in ("mean", "none"):
        loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, reduction=reduction).sum()
        gh, = torch.autograd.grad(loss, hid, create_graph=True)  # first order still works
        torch.testing.assert_close(gh, torch.autograd.grad(
            F.linear_cross_entropy(hid, w, t, linear_bias=b, reduction=reduction).sum(), hid)[0])
        with pytest.raises(RuntimeError, match="has no second derivative"):
            torch.autograd.grad(gh.sum(), w)


def test_bad_target_on_cpu_does_not_suggest_a_missing_validate_option():
    hid, w, t, b = torch_inputs(4, 3, 5, torch.float32)
    with pytest.raises(ValueError, match=r"target value\(s\)") as err:
        gst.linear_cross_entropy(hid, w, torch.tensor([0, 1, 9, 2]))
    assert "validate" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_fullgraph_traces_the_unfused_formula(reduction):
    hid, w, b, cw, t = torch_lce_inputs(torch.float32, class_weights=True, ignore_index=None, soft=False)
    kw = dict(reduction=reduction, label_smoothing=0.1, z_loss=1e-2)
    fn = torch.compile(lambda h_, w_, b_: gst.linear_cross_entropy(h_, w_, t, linear_bias=b_, weight=cw, **kw),
                       fullgraph=True, backend="aot_eager")
    got = fn(hid, w, b)
    want = gst.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, **kw)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), (hid, w, b)),
                               torch.autograd.grad(want.sum(), (hid, w, b)))


# ----------------------------------------------------------------------------------
# the benchmark's linear-CE rows (GPU only): their adapters and arithmetic on the CPU


def test_bench_linear_ce_adapters_compute_the_same_loss_and_gradients():
    from gpu_softmax.bench import baselines

    impls, notes = baselines.linear_ce_implementations(skip_impls=("torch.compile", "liger"))
    assert list(impls)[:4] == ["gpu_softmax.torch", "torch", "torch.linear_cross_entropy",
                               "torch.linear_cross_entropy(chunked)"]
    g = torch.Generator().manual_seed(0)
    hid, w = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    t = torch.randint(0, 30, (20,), generator=g)
    results = {name: baselines._linear_ce_step(fn, hid, w, t) for name, fn in impls.items()}
    want = results["torch"]
    for name, got in results.items():
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def test_bench_linear_ce_floor_and_refusal_without_a_gpu(monkeypatch):
    from gpu_softmax import cli
    from gpu_softmax.bench import baselines, cases

    assert cases.linear_ce_flops(8192, 4096, 128256) == 6 * 8192 * 4096 * 128256
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs torch with a CUDA device"):
        baselines.linear_ce_rows(cases.QUICK_LINEAR_CE_SHAPES)
    with pytest.raises(SystemExit, match="needs torch with a CUDA device"):
        cli.main(["bench", "--op", "linear_cross_entropy", "--quick"])
    with pytest.raises(SystemExit, match="runs alone"):
        cli.main(["bench", "--op", "linear_cross_entropy,softmax"])
    doc = {"bf16_matmul_tflops": 700.0, "rows": [
        {"impl": "torch", "shape": [8, 4, 16], "ms": 2.0, "pct_matmul_rate": 40.0,
         "peak_mem_above_inputs_bytes": 3e9, "matched": True, "note": ""},
        {"impl": "liger", "shape": [8, 4, 16], "note": "OutOfMemoryError"}]}
    text = baselines.linear_ce_markdown(doc)
    assert "| torch | 8x4x16 | 2.00 | 40 | 3.00 | True |" in text and "OutOfMemoryError" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_emulated_cuda_branch_with_class_weights_and_probabilities(emulated_torch_cuda, emulated_launcher, dtype,
                                                                   soft, reduction):
    hid, w, b, cw, t = torch_lce_inputs(dtype, n=21, h=8, v=17, class_weights=True, ignore_index=None, soft=soft)
    cw[3] = 0.0
    if soft:
        t = t.to(dtype)  # 16-bit probabilities: the bridge hands the kernel float32 ones
    go = torch.linspace(0.5, 1.5, 21) if reduction == "none" else torch.tensor(1.0)
    loss = gst.linear_cross_entropy(hid, w, t, linear_bias=b, weight=cw, reduction=reduction, chunk_size=8)
    got = (loss.detach(),) + torch.autograd.grad((loss * go).sum(), (hid, w, b))
    leaves = [x.detach().double().requires_grad_() for x in (hid, w, b)]
    ref = F.linear_cross_entropy(leaves[0], leaves[1], t.double() if soft else t, linear_bias=leaves[2],
                                 weight=cw.double(), reduction=reduction)
    want = (ref.detach(),) + torch.autograd.grad((ref * go.double()).sum(), leaves)
    assert [g.dtype for g in got[1:]] == [dtype] * 3
    check_all([g.double().numpy() for g in got], [e.numpy() for e in want], *TORCH_TOL[dtype], str(dtype))
    if not soft:  # the weight-0 and ignored rows left out of the products
        dropped = int(((t == -100) | (t == 3)).sum())
        assert emulated_launcher.chunks and sum(c[0] for c in emulated_launcher.chunks) % (21 - dropped) == 0


# ----------------------------------------------------------------------------------
# torch's K-dimensional loss: linear_weight (C, *out_features, H)


@pytest.mark.parametrize("out", [(3,), (2, 3)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", [(False, 0.0, False), (True, 0.2, False), (True, 0.0, True)],
                         ids=["plain", "weights_smoothing", "probabilities"])
def test_k_dimensional_loss_matches_torch(out, reduction, case):
    class_weights, smoothing, soft = case
    g = torch.Generator().manual_seed(0)
    n, h, c = 9, 4, 5
    hid = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn((c,) + out + (h,), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn((c,) + out, generator=g, dtype=torch.float64, requires_grad=True)
    cw = torch.rand(c, generator=g, dtype=torch.float64) + 0.2 if class_weights else None
    if soft:
        t = torch.randn((n, c) + out, generator=g, dtype=torch.float64).softmax(1)
    else:
        t = torch.randint(0, c, (n,) + out, generator=g)
        t.view(-1)[::4] = -100
        t[2] = -100  # a row all of whose terms are ignored: left out of the products
    kw = dict(linear_bias=b, weight=cw, reduction=reduction, label_smoothing=smoothing)
    want = F.linear_cross_entropy(hid, w, t, **kw)
    got = gst.linear_cross_entropy(hid, w, t, chunk_size=4, **kw)
    assert got.shape == want.shape
    go = torch.linspace(-1, 2, want.numel(), dtype=torch.float64).reshape(want.shape) if reduction == "none" \
        else torch.tensor(0.7, dtype=torch.float64)
    g_want = torch.autograd.grad((want * go).sum(), (hid, w, b))
    g_got = torch.autograd.grad((got * go).sum(), (hid, w, b))
    check_all([x.detach().numpy() for x in (got,) + g_got], [x.detach().numpy() for x in (want,) + g_want],
              1e-10, 1e-12)
    # the NumPy oracle and the CuPy launcher's loop (emulated) agree
    np_args = (hid.detach().numpy(), w.detach().numpy(), t.numpy(), b.detach().numpy())
    np_kw = dict(class_weight=None if cw is None else cw.numpy(), reduction=reduction, label_smoothing=smoothing,
                 grad_output=go.numpy() if reduction == "none" else 0.7)
    check_all(gs.linear_cross_entropy_with_grad(*np_args, **np_kw),
              [x.detach().numpy() for x in (want,) + g_want], 1e-10, 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float16], ids=str)
def test_k_dimensional_launcher_loop(emulated_launcher, dtype):
    rng = np.random.default_rng(0)
    n, h, c, out = 11, 3, 4, (2, 3)
    hid, w = rng.standard_normal((n, h)).astype(dtype), rng.standard_normal((c,) + out + (h,)).astype(dtype)
    b, t = rng.standard_normal((c,) + out).astype(dtype), rng.integers(0, c, (n,) + out)
    t[3] = -100
    tol = (1e-10, 1e-12) if dtype == np.float64 else LAUNCH_TOL["float16"]
    for reduction in ("mean", "none"):
        go = np.linspace(0.5, 1.5, n * 6).reshape((n,) + out) if reduction == "none" else 1.0
        emulated_launcher.chunks.clear()
        got = run_launcher(hid, w, t, b, chunk_size=4, reduction=reduction, grad_output=go, label_smoothing=0.1)
        want = gs.linear_cross_entropy_with_grad(*(x.astype(np.float64) for x in (hid, w)), t, b.astype(np.float64),
                                                 reduction=reduction, grad_output=go, label_smoothing=0.1)
        check_all(got[:2] + (got[2].reshape(w.shape), got[3].reshape(b.shape)), want, *tol, reduction)
        assert sum(ch[0] for ch in emulated_launcher.chunks) == n - 1 and emulated_launcher.chunks[0][1:] == (c,) + out


@pytest.mark.parametrize("bias", [False, True])
def test_k_dimensional_module_loads_a_torch_state_dict(bias):
    torch.manual_seed(0)
    theirs = torch.nn.LinearCrossEntropyLoss(5, 4, out_features=(2, 3), bias=bias, dtype=torch.float64)
    ours = gst.LinearCrossEntropyLoss(5, 4, out_features=(2, 3), bias=bias, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    hid = torch.randn(6, 5, dtype=torch.float64)
    t = torch.randint(0, 4, (6, 2, 3))
    assert_same_loss_and_grads(ours, theirs, hid, t)
    assert "out_features=(2, 3)" in repr(ours)


@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_unfused_formula_handles_k_dimensional_losses(soft):
    g = torch.Generator().manual_seed(0)
    hid, w = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    b, cw = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    t = torch.randn(4, 5, 2, generator=g, dtype=torch.float64).softmax(1) if soft else torch.randint(0, 5, (4, 2))
    for reduction in ("mean", "none"):
        opts = CEOptions.checked(reduction=reduction, label_smoothing=0.1)
        torch.testing.assert_close(torch_linear.unfused(hid, w, t, b, cw, opts), F.linear_cross_entropy(
            hid, w, t, linear_bias=b, weight=cw, reduction=reduction, label_smoothing=0.1))


def test_capture_query_errs_on_the_side_of_no_host_reads(monkeypatch):
    cupy = pytest.importorskip("cupy")
    monkeypatch.setattr(cupy.cuda, "get_current_stream", lambda: types.SimpleNamespace(ptr=0))

    def implicit(ptr):
        raise cupy.cuda.runtime.CUDARuntimeError(906)  # cudaErrorStreamCaptureImplicit

    monkeypatch.setattr(cupy.cuda.runtime, "streamIsCapturing", implicit)
    assert lce._capturing() is True
    monkeypatch.setattr(cupy.cuda.runtime, "streamIsCapturing", lambda ptr: False)
    assert lce._capturing() is False
