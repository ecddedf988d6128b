"""Vocabulary-parallel cross entropy: the building blocks, the kernels (emulated), and
gpu_softmax.torch.parallel over real torch.distributed process groups.

- NumPy blocks (gpu_softmax.vocab_parallel) against the reference on the full logits.
- The CUDA kernels on the host emulator (tests/emulator/run_vocab_parallel.py).
- gloo: torch.multiprocessing spawns 2 and 4 CPU ranks on 127.0.0.1; every rank
  checks its loss and its local gradient against the unsharded reference.
- NCCL (marked gpu): the same on 2+ GPUs.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_softmax import reference
from gpu_softmax import vocab_parallel as vp

# The special rows are built like the emulated suite's (tests/emulator/ce_cases.py, NumPy only).
sys.path.insert(0, str(Path(__file__).resolve().parent / "emulator"))
from ce_cases import draw_options, mark_special_rows, options_alone  # noqa: E402
from emulated_runs import assert_runner_ok  # noqa: E402

OPTIONS = [
    *options_alone(softcap=False),  # logit_softcap: SOFTCAP_OPTIONS
    {"weight": "w", "label_smoothing": 0.2, "z_loss": 1e-2},
    {"weight": "w", "label_smoothing": 0.05, "reduction": "none", "grad_output": "rows"},
    {"reduction": "sum", "grad_output": 0.7, "label_smoothing": 1.0},
    {"logit_softcap": 4.0, "weight": "w", "label_smoothing": 0.1, "z_loss": 1e-2},
]
WIDTHS = [[20], [7, 13], [5, 0, 11, 3], [1, 1, 1, 30, 2]]


def _options(o, rng, rows, V):
    return draw_options(o, rows, V, np.float64, rng, np.float64)


# ----------------------------------------------------------------------------------
# NumPy building blocks


@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "x".join(map(str, w)))
@pytest.mark.parametrize("opt", range(len(OPTIONS)))
def test_numpy_blocks_match_reference(widths, opt, rng):
    V = sum(widths)
    rows = 9
    kw = _options(OPTIONS[opt], rng, rows, V)
    x = rng.standard_normal((rows, V)) * 3
    t = rng.integers(0, V, rows)
    t[[1, 4]] = kw.get("ignore_index", -100)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **kw)
    loss, grad = vp.cross_entropy_sharded(x, t, widths, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    assert loss.dtype == want_loss.dtype and grad.dtype == want_grad.dtype
    lo, none = vp.cross_entropy_sharded(x, t, widths, want_grad=False,
                                        **{k: v for k, v in kw.items() if k != "grad_output"})
    assert none is None
    if "grad_output" not in kw:
        np.testing.assert_array_equal(lo, loss)


SOFTCAP_OPTIONS = [
    {"logit_softcap": 3.0},
    {"logit_softcap": 3.0, "z_loss": 1e-2},
    {"logit_softcap": 2.5, "label_smoothing": 0.2},
    {"logit_softcap": 6.0, "weight": "w"},
    {"logit_softcap": 2.0, "weight": "w", "label_smoothing": 0.1, "z_loss": 1e-2, "reduction": "none",
     "grad_output": "rows"},
]


@pytest.mark.parametrize("widths", [[23], [9, 14], [4, 17, 2]], ids=lambda w: "x".join(map(str, w)))
@pytest.mark.parametrize("opt", range(len(SOFTCAP_OPTIONS)))
def test_numpy_blocks_softcap_match_single_device_loss(widths, opt, rng):
    """logit_softcap vocab-parallel: 1, 2 and 3 uneven shards give the full-vocabulary loss and gradient."""
    V = sum(widths)
    rows = 7
    kw = _options(SOFTCAP_OPTIONS[opt], rng, rows, V)
    x = rng.standard_normal((rows, V)) * 8  # well past the cap: tanh is far from linear
    t = rng.integers(0, V, rows)
    t[3] = -100
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **kw)
    loss, grad = vp.cross_entropy_sharded(x, t, widths, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)
    # the cap changes the answer here, so the comparison above can fail
    uncapped = reference.cross_entropy(x, t, **{k: v for k, v in kw.items() if k not in ("logit_softcap",
                                                                                           "grad_output")})
    capped = vp.cross_entropy_sharded(x, t, widths, want_grad=False,
                                      **{k: v for k, v in kw.items() if k != "grad_output"})[0]
    assert not np.allclose(uncapped, capped, rtol=1e-3)


def test_softcap_records_are_of_the_capped_logits(rng):
    x = rng.standard_normal((4, 10)) * 5
    t = np.array([1, 7, -100, 9])
    rec = vp.partial_stats(x[:, 6:], t, 6, 10, logit_softcap=2.0)
    xc = 2.0 * np.tanh(x[:, 6:] / 2.0)
    np.testing.assert_allclose(rec[:, 0], xc.max(axis=1), rtol=1e-15)
    np.testing.assert_allclose(rec[[1, 3], 2], [xc[1, 1], xc[3, 3]], rtol=1e-15)
    assert rec[0, 2] == 0.0 and rec[2, 2] == 0.0  # target elsewhere / ignored
    with pytest.raises(ValueError, match="logit_softcap"):
        vp.partial_stats(x[:, 6:], t, 6, 10, logit_softcap=-1.0)


def test_numpy_blocks_float32_leading_dims_and_inplace(rng):
    x = rng.standard_normal((2, 3, 50)).astype(np.float32)
    t = rng.integers(0, 50, (2, 3)).astype(np.int32)
    want_loss, want_grad = reference.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=0.1)
    loss, grad = vp.cross_entropy_sharded(x, t, [17, 33], reduction="none", label_smoothing=0.1)
    assert loss.shape == (2, 3) and loss.dtype == np.float32 and grad.dtype == np.float32
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    shard = x[..., 17:].copy()
    stats = np.stack([vp.partial_stats(np.ascontiguousarray(x[..., :17]), t, 0, 50),
                      vp.partial_stats(shard, t, 17, 50)])
    _, g = vp.finish(shard, t, 17, 50, stats, inplace=True)
    assert g is shard
    np.testing.assert_allclose(shard, reference.cross_entropy_with_grad(x, t)[1][..., 17:], rtol=1e-5, atol=1e-7)


def test_numpy_blocks_special_values(rng):
    widths = [4, 6, 5]
    x = mark_special_rows(rng.standard_normal((8, 15)), widths)
    t = np.array([0, 1, 2, 5, 12, 4, 3, -100])
    for kw in ({"reduction": "none"}, {"reduction": "sum"}, {"reduction": "none", "z_loss": 0.1}):
        want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **kw)
        loss, grad = vp.cross_entropy_sharded(x, t, widths, **kw)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-14)


def test_numpy_blocks_huge_logits_do_not_cancel(rng):
    """Issue #15 items 1-2: (M + log1p(R)) - x_t and lse * W - sum w x cancel or overflow."""
    loss = vp.cross_entropy_sharded(np.full((2, 8), 1e17), np.array([1, 5]), [3, 5])[0]
    np.testing.assert_allclose(loss, np.log(8), rtol=1e-14)
    for x in (np.full((3, 8), 1e36, np.float32), np.full((3, 8), 1e300), np.full((3, 8), 1e17)):
        t = np.array([0, 4, 7])
        for kw in ({"label_smoothing": 0.1}, {"label_smoothing": 0.3, "weight": rng.uniform(0.1, 2, 8)}):
            want = reference.cross_entropy(x, t, reduction="none", **kw)
            loss, grad = vp.cross_entropy_sharded(x, t, [3, 5], reduction="none", **kw)
            np.testing.assert_allclose(loss, want, rtol=1e-6 if x.dtype == np.float32 else 1e-13)
            np.testing.assert_allclose(grad, reference.cross_entropy_with_grad(x, t, reduction="none", **kw)[1],
                                       rtol=1e-6, atol=1e-12)
    # three huge logits and a zero: sum w (M - x) fits, lse * W would not (float32 loss)
    x = np.array([[1e38, 1e38, 1e38, 0.0]], np.float32)
    want = reference.cross_entropy(x, np.array([0]), label_smoothing=0.1, reduction="none")
    loss, _ = vp.cross_entropy_sharded(x, np.array([0]), [1, 3], label_smoothing=0.1, reduction="none")
    assert np.isfinite(want).all()
    np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_all_ignored_bad_targets_and_no_rows(rng):
    x = rng.standard_normal((3, 10))
    loss, grad = vp.cross_entropy_sharded(x, np.full(3, -100), [4, 6])
    assert np.isnan(loss) and not grad.any()
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        vp.cross_entropy_sharded(x, np.array([0, 10, 1]), [4, 6])
    loss, grad = vp.cross_entropy_sharded(x, np.array([0, 10, -100]), [4, 6], validate=False, reduction="none")
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all() and loss[2] == 0 and not grad[2].any()
    loss, grad = vp.cross_entropy_sharded(np.zeros((0, 10)), np.zeros(0, np.int64), [4, 6], reduction="sum")
    assert loss == 0.0 and grad.shape == (0, 10)


def test_merge_is_order_independent_up_to_rounding(rng):
    rec = np.stack([vp.partial_stats(rng.standard_normal((5, w)) * 4, np.zeros(5, np.int64), 0, 40)
                    for w in (10, 20, 10)])
    a, b = vp.merge_stats(rec), vp.merge_stats(rec[::-1])
    np.testing.assert_allclose(a[:, 0] + np.log1p(a[:, 1]), b[:, 0] + np.log1p(b[:, 1]), rtol=1e-14)


def test_argument_errors():
    x = np.zeros((3, 4))
    t = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="do not lie inside the vocabulary"):
        vp.partial_stats(x, t, 7, 10)
    with pytest.raises(ValueError, match="do not lie inside the vocabulary"):
        vp.partial_stats(x, t, -1, 10)
    with pytest.raises(TypeError, match="vocab_start must be an integer"):
        vp.partial_stats(x, t, 1.5, 10)
    with pytest.raises(TypeError, match="hard labels"):
        vp.partial_stats(x, np.zeros((3, 4)), 0, 10)
    # the shared checks, on the full-vocabulary shape: the same texts as cross_entropy
    with pytest.raises(ValueError, match=r"weight has shape \(4,\), expected \(10,\)"):
        vp.partial_stats(x, t, 0, 10, weight=np.ones(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        vp.finish(x, t, 0, 10, np.zeros((1, 3, 4)), label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction"):
        vp.finish(x, t, 0, 10, np.zeros((1, 3, 4)), reduction="avg")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        vp.partial_stats(np.zeros((3, 4), np.int32), t, 0, 10)
    with pytest.raises(ValueError, match="target has shape"):
        vp.partial_stats(x, np.zeros(4, np.int64), 0, 10)
    with pytest.raises(ValueError, match="records"):
        vp.finish(x, t, 0, 10, np.zeros((3, 4)))


# ----------------------------------------------------------------------------------
# the CUDA kernels: on a GPU (CuPy), and on the host emulator


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("widths", [[7, 13], [5, 0, 11, 3], [50000, 28256, 50000]], ids=lambda w: f"{len(w)}x{sum(w)}")
def test_cupy_blocks_match_reference(cp, dtype, widths, rng):
    from gpu_softmax.testing import assert_close, ce_grad_atol, tolerance

    V = sum(widths)
    rows = 37
    for kw in ({}, {"reduction": "none", "label_smoothing": 0.1, "z_loss": 1e-3},
               {"weight": rng.uniform(0.1, 2, V).astype(dtype), "label_smoothing": 0.2, "ignore_index": 3}):
        x = (rng.standard_normal((rows, V)) * 3).astype(dtype)
        t = rng.integers(0, V, rows)
        t[[0, 5]] = kw.get("ignore_index", -100)
        want_loss, want_grad = reference.cross_entropy_with_grad(x, t, **kw)
        kwd = {k: (cp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        loss, grad = vp.cross_entropy_sharded(cp.asarray(x), cp.asarray(t), widths, validate=False, **kwd)
        lse = reference.logsumexp(x.astype(np.float64), axis=-1)
        rdt = np.float64 if dtype == "float64" else np.float32
        atol = tolerance(rdt)[0] * (1 + float(np.abs(lse).max())) * (rows if "reduction" not in kw else 1)
        assert_close(cp.asnumpy(loss), want_loss, rdt, f"loss {dtype} {widths}", atol=atol)
        rtol = tolerance(dtype)[0]  # each entry's floor from its own terms, never above the old rtol * max|grad|
        assert_close(cp.asnumpy(grad), want_grad, dtype, f"grad {dtype} {widths}",
                     atol=ce_grad_atol(x, t, rtol, at_most=rtol * float(np.abs(want_grad).max()), **kw))


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["hard", "special", "layouts", "overflow", "softcap"])
def test_emulated_vocab_parallel_kernels(suite, emulator_build_dir):
    assert_runner_ok("run_vocab_parallel.py", suite, build_dir=emulator_build_dir, ok=f"OK vocab_parallel {suite}")


# ----------------------------------------------------------------------------------
# torch.distributed: gloo on the CPU, NCCL on GPUs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_checks(rank: int, world: int, device: str) -> int:
    """Every check one rank runs; the same inputs on every rank (fixed seed)."""
    import torch
    import torch.nn.functional as F

    from gpu_softmax.torch.parallel import vocab_parallel_cross_entropy as vpce

    dev = torch.device(device)
    rng = np.random.default_rng(1234 + world)
    # uneven shards; with 4 ranks one is empty
    widths = {2: [7, 13], 4: [5, 0, 11, 3]}.get(world) or [3 + r for r in range(world)]
    V = sum(widths)
    start = sum(widths[:rank])
    width = widths[rank]
    on_gpu = dev.type == "cuda"
    n = 0
    for dtype in (torch.float64, torch.float32):
        tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
        for o in OPTIONS:
            rows = 6
            kw = _options(o, rng, rows, V)
            x = rng.standard_normal((rows, V)) * 3
            t = rng.integers(0, V, rows)
            t[[1, 4]] = kw.get("ignore_index", -100)
            go = kw.pop("grad_output", 1.0)
            want_loss, want_grad = reference.cross_entropy_with_grad(x.astype(dtype_np(dtype)), t, grad_output=go,
                                                                     **kw)
            local = torch.tensor(x[:, start:start + width], dtype=dtype, device=dev, requires_grad=True)
            tkw = dict(kw)
            if "weight" in tkw:
                tkw["weight"] = torch.tensor(tkw["weight"], dtype=dtype, device=dev)
            explicit = {"vocab_start": start, "vocab_size": V} if n % 2 else {}
            loss = vpce(local, torch.tensor(t, device=dev), **tkw, **explicit)
            assert loss.dtype == dtype and tuple(loss.shape) == np.shape(want_loss)
            np.testing.assert_allclose(loss.detach().cpu().numpy(), want_loss, **tol, err_msg=f"loss {o}")
            g = torch.tensor(np.asarray(go), dtype=dtype, device=dev)
            loss.backward(g.expand(loss.shape))
            np.testing.assert_allclose(local.grad.cpu().numpy(), want_grad[:, start:start + width], **tol,
                                       err_msg=f"grad {o}")
            n += 1
    # against torch itself on the full logits (F.cross_entropy), (N, V) layout
    x = torch.tensor(rng.standard_normal((5, V)), dtype=torch.float64)
    t = torch.tensor(rng.integers(0, V, 5))
    t[2] = -100
    w = torch.tensor(rng.uniform(0.5, 2.0, V))
    full = x.clone().requires_grad_()
    ref = F.cross_entropy(full, t, weight=w, label_smoothing=0.1)
    ref.backward()
    local = x[:, start:start + width].clone().to(dev).requires_grad_()
    loss = vpce(local, t.to(dev), weight=w.to(dev), label_smoothing=0.1)
    loss.backward()
    torch.testing.assert_close(loss.cpu(), ref.detach())
    torch.testing.assert_close(local.grad.cpu(), full.grad[:, start:start + width])
    # collectives per call: two whatever is given (the agreement table, then the
    # records), so ranks that pass vocab_start/vocab_size and ranks that do not still
    # make the same collectives
    import torch.distributed as dist

    calls = []
    names = [n for n in ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce")
             if hasattr(dist, n)]
    saved = {n: getattr(dist, n) for n in names}
    for name in names:
        setattr(dist, name, lambda *a, _n=name, **k: (calls.append(_n), saved[_n](*a, **k))[1])
    try:
        xl = torch.tensor(x[:, start:start + width].numpy(), device=dev, requires_grad=True)
        vpce(xl, t.to(dev), vocab_start=start, vocab_size=V).backward()
        assert len(calls) == 2, calls
        vpce(xl, t.to(dev)).backward()
        assert len(calls) == 4, calls
        # check_ranks=False (CUDA-graph capture): the records' collective only
        xu = torch.tensor(x[:, start:start + width].numpy(), device=dev, requires_grad=True)
        loss_u = vpce(xu, t.to(dev), vocab_start=start, vocab_size=V, check_ranks=False)
        loss_u.backward()
        assert len(calls) == 5, calls
        torch.testing.assert_close(xu.grad, xl.grad / 2)  # xl's grad was accumulated twice above
    finally:
        for name, f in saved.items():
            setattr(dist, name, f)
    for bad in ({}, {"vocab_start": start}, {"vocab_start": start, "vocab_size": V, "validate": True}):
        try:
            vpce(xl, t.to(dev), check_ranks=False, **bad)
        except ValueError as exc:
            assert "check_ranks=False" in str(exc)
        else:
            raise AssertionError(f"check_ranks=False accepted {bad}")
    # leading dims (2, 3, V) with (2, 3) targets, no gradient wanted
    x3 = rng.standard_normal((2, 3, V))
    t3 = rng.integers(0, V, (2, 3))
    with torch.no_grad():
        loss = vpce(torch.tensor(x3[..., start:start + width], device=dev), torch.tensor(t3, device=dev),
                    reduction="none", z_loss=1e-3)
    np.testing.assert_allclose(loss.cpu().numpy(), reference.cross_entropy(x3, t3, reduction="none", z_loss=1e-3),
                               rtol=1e-10)
    # bfloat16 logits (float32 math, bf16 gradient)
    xb = torch.tensor(rng.standard_normal((4, V)), dtype=torch.bfloat16)
    tb = torch.tensor(rng.integers(0, V, 4))
    local = xb[:, start:start + width].clone().to(dev).requires_grad_()
    loss = vpce(local, tb.to(dev), label_smoothing=0.1)
    loss.backward()
    wl, wg = reference.cross_entropy_with_grad(xb.float().numpy(), tb.numpy(), label_smoothing=0.1)
    assert loss.dtype == torch.bfloat16 and local.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(loss.detach().float().cpu().numpy(), wl, rtol=1e-2)
    np.testing.assert_allclose(local.grad.float().cpu().numpy(), wg[:, start:start + width], rtol=2e-2, atol=2e-3)
    # all targets ignored: NaN mean, zero gradient
    local = torch.zeros(3, width, dtype=torch.float64, device=dev, requires_grad=True)
    loss = vpce(local, torch.full((3,), -100, device=dev))
    loss.backward()
    assert torch.isnan(loss).item() and not local.grad.any().item()
    if not on_gpu:
        # CPU targets are range-checked on every rank before the collective
        try:
            vpce(torch.zeros(2, width, dtype=torch.float64), torch.tensor([0, V]))
        except ValueError as exc:
            assert "outside" in str(exc)
        else:
            raise AssertionError("an out-of-range target was let through")
    return n


def dtype_np(dtype):
    import torch

    return {torch.float64: np.float64, torch.float32: np.float32}[dtype]


def _worker(rank: int, world: int, port: int, backend: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        _rank_checks(rank, world, device)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(world: int, backend: str) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    if backend == "gloo" and not dist.is_gloo_available():
        pytest.skip("torch.distributed has no gloo backend")
    assert torch is not None
    if backend == "nccl":  # a collective that never completes must not hang the device check
        from gpu_softmax.testing import spawn_with_watchdog

        spawn_with_watchdog(mp, _worker, (world, _free_port(), backend), world, timeout_s=120)
        return
    mp.spawn(_worker, args=(world, _free_port(), backend), nprocs=world, join=True)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_gloo_ranks_match_unsharded_reference(world):
    _spawn(world, "gloo")


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() < 2, reason="NCCL test needs at least 2 CUDA GPUs")
def test_nccl_ranks_match_unsharded_reference():
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("torch.distributed has no NCCL backend")
    _spawn(min(_gpu_count(), 4), "nccl")


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_count() < 1, reason="needs a CUDA GPU")
def test_nccl_single_rank_cuda_plumbing():
    """One GPU, one NCCL rank: the CUDA path of gpu_softmax.torch.parallel (DLPack, streams, kernels)."""
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("torch.distributed has no NCCL backend")
    _spawn(1, "nccl")


def test_needs_initialised_process_group():
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    from gpu_softmax.torch.parallel import vocab_parallel_cross_entropy

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------------
# misuse across ranks (issue #15 items 6-7): the same clear error on every rank, never
# a wrong loss or a hang. Every rank runs every scenario in one process group; a
# watchdog kills the ranks when one waits too long, so a hang fails the test.

MISUSE_WATCHDOG_S = 150


def _misuse_scenarios(rank: int):
    """name -> (kwargs builder for this rank); V = 8 split [3, 5] unless a scenario says otherwise."""
    import torch

    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_normal((4, 8)) * 3)
    t = torch.tensor([0, 3, 7, 5])
    w = torch.tensor(rng.uniform(0.5, 2.0, 8))
    lo, hi = (0, 3) if rank == 0 else (3, 8)

    def local(a=lo, b=hi, rows=4, dtype=torch.float64):
        return x[:rows, a:b].to(dtype).clone()

    return {
        "gap": lambda: dict(local_logits=local(), target=t, vocab_start=lo if rank == 0 else 4, vocab_size=9),
        "overlap": lambda: dict(local_logits=local(), target=t, vocab_start=lo if rank == 0 else 2, vocab_size=8),
        "dropped_column": lambda: dict(local_logits=local(lo, hi if rank == 0 else 7), target=t, vocab_start=lo,
                                       vocab_size=8),
        "sizes_differ": lambda: dict(local_logits=local(), target=t, vocab_start=lo, vocab_size=8 + rank),
        "rows_differ": lambda: dict(local_logits=local(rows=4 if rank == 0 else 3),
                                    target=t[: 4 if rank == 0 else 3]),
        "rows_differ_given": lambda: dict(local_logits=local(rows=4 if rank == 0 else 3),
                                          target=t[: 4 if rank == 0 else 3], vocab_start=lo, vocab_size=8),
        "mixed_given_consistent": lambda: dict(local_logits=local(), target=t,
                                               **({} if rank == 0 else {"vocab_start": 3, "vocab_size": 8})),
        "mixed_given_wrong": lambda: dict(local_logits=local(), target=t,
                                          **({} if rank == 0 else {"vocab_start": 4, "vocab_size": 9})),
        "dtype_differs": lambda: dict(local_logits=local(dtype=torch.float64 if rank == 0 else torch.float32),
                                      target=t),
        "smoothing_differs": lambda: dict(local_logits=local(), target=t, label_smoothing=0.1 * (rank + 1)),
        "softcap_differs": lambda: dict(local_logits=local(), target=t, logit_softcap=None if rank == 0 else 5.0),
        "fine_softcap": lambda: dict(local_logits=local(), target=t, logit_softcap=2.0, label_smoothing=0.1),
        "weight_on_one_rank": lambda: dict(local_logits=local(), target=t, weight=w if rank == 0 else None),
        "targets_differ_validate": lambda: dict(local_logits=local(), target=t if rank == 0 else t.flip(0),
                                                validate=True),
        "weights_differ_validate": lambda: dict(local_logits=local(), target=t, weight=w * (1 + rank),
                                                validate=True),
        "bad_target_on_one_rank": lambda: dict(local_logits=local(), target=t if rank == 0 else t * 3),
        "bad_start_on_one_rank": lambda: dict(local_logits=local(), target=t, vocab_start=lo if rank == 0 else -1,
                                              vocab_size=8),
        "fine_validate": lambda: dict(local_logits=local(), target=t, weight=w, label_smoothing=0.1, validate=True),
        # item 2: (M + log1p(R)) - x_t and lse * W - sum w x cancelled to 0 here
        "huge_logits_smoothing": lambda: dict(local_logits=torch.full((4, 3 if rank == 0 else 5), 1e36,
                                                                      dtype=torch.float32),
                                              target=t, label_smoothing=0.1),
    }


def _misuse_worker(rank: int, world: int, port: int, outdir: str) -> None:
    import datetime
    import json

    import torch
    import torch.distributed as dist

    from gpu_softmax.torch.parallel import vocab_parallel_cross_entropy as vpce

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=600))
    results = {}
    progress = Path(outdir) / f"progress{rank}"
    try:
        for name, build in _misuse_scenarios(rank).items():
            progress.write_text(name)
            try:
                loss = vpce(**build())
                results[name] = ["ok", float(loss)]
            except Exception as exc:  # noqa: BLE001 (recorded and checked by the test)
                results[name] = [type(exc).__name__, str(exc)]
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_gloo_misuse_raises_on_every_rank_and_never_hangs(tmp_path):
    """Layout gap / overlap / dropped column, row counts, mixed vocab_start, options, validate=True."""
    import json
    import time

    torch = pytest.importorskip("torch")
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    ctx = mp.spawn(_misuse_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + MISUSE_WATCHDOG_S
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            where = {r: (tmp_path / f"progress{r}").read_text() if (tmp_path / f"progress{r}").exists() else "?"
                     for r in (0, 1)}
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"ranks still waiting after {MISUSE_WATCHDOG_S} s (a hang), in scenario {where}")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    def both_raise(name, pattern, kinds=("ValueError",)):
        for r in (0, 1):
            kind, msg = res[r][name]
            assert kind in kinds and re.search(pattern, msg), (name, r, kind, msg)

    both_raise("gap", r"columns \[3, 4\) are held by no rank")
    both_raise("overlap", r"columns \[2, 3\) are held by two ranks")
    both_raise("dropped_column", r"columns \[7, 8\) are held by no rank")
    both_raise("sizes_differ", r"vocab_size must be the same on every rank; got rank 0: 8 \(given\), rank 1: 9")
    both_raise("rows_differ", r"number of loss rows .* must be the same on every rank; got rank 0: 4, rank 1: 3")
    both_raise("rows_differ_given", r"number of loss rows")
    both_raise("mixed_given_wrong", r"vocab_size must be the same on every rank")
    both_raise("dtype_differs", r"logits' dtype must be the same on every rank; got rank 0: float64, "
                                r"rank 1: float32")
    both_raise("smoothing_differs", r"label_smoothing must be the same on every rank; got rank 0: 0\.1, "
                                    r"rank 1: 0\.2")
    both_raise("softcap_differs", r"logit_softcap must be the same on every rank; got rank 0: None, "
                                  r"rank 1: 5\.0")
    both_raise("weight_on_one_rank", r"weight \(given or not, and its length\) must be the same")
    both_raise("targets_differ_validate", r"target must be the same on every rank \(validate=True")
    both_raise("weights_differ_validate", r"weight must be the same on every rank \(validate=True")
    both_raise("bad_target_on_one_rank", r"target holds values outside \[0, 8\) .*\(e\.g\. 21 on rank 1\)")
    # a rank refusing its own arguments raises its error; the other stops with a pointer to it
    assert res[1]["bad_start_on_one_rank"][0] == "ValueError", res[1]["bad_start_on_one_rank"]
    assert "do not lie inside the vocabulary" in res[1]["bad_start_on_one_rank"][1]
    assert res[0]["bad_start_on_one_rank"][0] == "RuntimeError"
    assert "rank(s) [1] refused their arguments" in res[0]["bad_start_on_one_rank"][1]
    # consistent calls give the unsharded loss on both ranks
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8)) * 3
    t = np.array([0, 3, 7, 5])
    w = rng.uniform(0.5, 2.0, 8)
    want = float(reference.cross_entropy(x, t))
    want_w = float(reference.cross_entropy(x, t, weight=w, label_smoothing=0.1))
    for r in (0, 1):
        assert res[r]["mixed_given_consistent"][0] == "ok", res[r]["mixed_given_consistent"]
        np.testing.assert_allclose(res[r]["mixed_given_consistent"][1], want, rtol=1e-12)
        assert res[r]["fine_validate"][0] == "ok", res[r]["fine_validate"]
        np.testing.assert_allclose(res[r]["fine_validate"][1], want_w, rtol=1e-12)
        assert res[r]["fine_softcap"][0] == "ok", res[r]["fine_softcap"]
        np.testing.assert_allclose(res[r]["fine_softcap"][1],
                                   float(reference.cross_entropy(x, t, logit_softcap=2.0, label_smoothing=0.1)),
                                   rtol=1e-12)
        assert res[r]["huge_logits_smoothing"][0] == "ok", res[r]["huge_logits_smoothing"]
        np.testing.assert_allclose(res[r]["huge_logits_smoothing"][1], np.log(8), rtol=1e-6)
