"""Issue 23 (hostile inputs, round three): one test per cause, each failing on the tree
before its fix. Kernel causes run through the CPU emulator (tests/emulator/run_hostile.py)
in every regime they touch; the rest on the NumPy reference and the torch bridge's CPU path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpu_softmax as gs
import gpu_softmax.torch as gst
from emulated_runs import assert_runner_ok
from gpu_softmax import options, reference


# ----------------------------------------------------------------------------------
# kernel causes, emulated: 1 (aliasing with inplace), 2 (option scalars in float32),
# 4 and 6 (tiny weights, zero total target weight), 5 (inf x 0 at the row's max)


@pytest.mark.parametrize("suite", ["alias", "options", "weights", "infzero", "vocab_parallel"])
def test_emulated_kernels_hostile_round3(suite, emulator_build_dir):
    assert_runner_ok("run_hostile.py", suite, build_dir=emulator_build_dir, ok=f"OK hostile {suite}")


# ----------------------------------------------------------------------------------
# 1: inputs aliasing the logits with inplace: the values they held at the call


def test_reference_inplace_reads_weight_aliasing_the_logits_as_it_was():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((30, 10))).astype(np.float32) + 0.5
    t = rng.integers(0, 10, 30)
    want = reference.cross_entropy_with_grad(x.copy(), t, weight=x[0].copy(), reduction="none")
    got = gs.cross_entropy_with_grad(x, t, weight=x[0], inplace=True, reduction="none")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_torch_inplace_backward_with_weight_aliasing_the_logits():
    torch.manual_seed(0)
    base = torch.randn(30, 10, dtype=torch.float64).abs().add(0.5).requires_grad_()
    t = torch.randint(0, 10, (30,))
    logits = base * 1.0
    w = logits.detach()[0].clone()
    want_loss = F.cross_entropy(base, t, weight=w, reduction="sum")
    (want_grad,) = torch.autograd.grad(want_loss, base)
    logits = base * 1.0
    loss = gst.cross_entropy(logits, t, weight=logits.detach()[0], reduction="sum", inplace_backward=True)
    (grad,) = torch.autograd.grad(loss, base)
    torch.testing.assert_close(loss, want_loss)
    torch.testing.assert_close(grad, want_grad)


# ----------------------------------------------------------------------------------
# 2: option scalars the float32 kernels cannot carry


@pytest.mark.parametrize("name,value", [("logit_softcap", 1e-50), ("logit_softcap", 3.5e38), ("z_loss", 1e39),
                                        ("z_loss", 1e-45), ("label_smoothing", 1e-50)])
def test_float32_kernels_refuse_options_they_cannot_carry(name, value):
    opts = options.CEOptions.checked(**{name: value})
    with pytest.raises(ValueError, match=rf"{name}=.*float32.*\[.*\]"):
        options.require_float32_options(opts, 10)


def test_float32_option_ranges_accept_the_edges_and_off():
    ranges = options.float32_ranges(10)
    for name, (low, high) in ranges.items():
        for v in (low, high):
            options.require_float32_options(options.CEOptions.checked(**{name: v}), 10)
    options.require_float32_options(options.CEOptions.checked(label_smoothing=0.0, z_loss=0.0), 10)
    assert ranges["label_smoothing"][0] == pytest.approx(10 * np.finfo(np.float32).tiny)


def test_reference_takes_tiny_label_smoothing_with_a_minus_inf_logit():
    # The float64 reference carries every value: +inf, as torch.
    x = np.zeros((2, 4), dtype=np.float32)
    x[0, 3] = -np.inf
    loss = reference.cross_entropy(x, np.array([0, 1]), label_smoothing=1e-50, reduction="none")
    assert np.isposinf(loss[0]) and np.isfinite(loss[1])


# ----------------------------------------------------------------------------------
# 6: zero total target weight with smoothing: NaN, as torch


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_zero_total_target_weight_mean_is_nan_as_torch(smoothing):
    x = np.random.default_rng(1).standard_normal((4, 5))
    t = np.array([0, 1, 0, 1])
    w = np.array([0.0, 0.0, 1.0, 1.0, 1.0])
    want = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), weight=torch.from_numpy(w),
                           label_smoothing=smoothing)
    assert torch.isnan(want)
    loss, grad = reference.cross_entropy_with_grad(x, t, weight=w, label_smoothing=smoothing)
    assert np.isnan(loss)
    got = gst.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), weight=torch.from_numpy(w),
                            label_smoothing=smoothing)
    assert torch.isnan(got)


# ----------------------------------------------------------------------------------
# 7: the torch bridge under autocast, and ignored rows' gradients


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_returns_float32_like_f_cross_entropy(dtype):
    torch.manual_seed(2)
    x = torch.randn(6, 5).to(dtype).requires_grad_()
    t = torch.randint(0, 5, (6,))
    with torch.autocast("cpu", dtype=dtype):
        got = gst.cross_entropy(x, t)
        want = F.cross_entropy(x, t)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got, x)
    (g_want,) = torch.autograd.grad(want, x)
    assert g_got.dtype == dtype
    torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_ignored_rows_get_exact_zero_gradient_whatever_their_grad_output(inplace, bad):
    torch.manual_seed(3)
    base = torch.randn(6, 5, requires_grad=True)
    t = torch.randint(0, 5, (6,))
    t[[1, 4]] = -100
    go = torch.ones(6)
    go[[1, 4]] = bad
    loss = gst.cross_entropy(base * 1.0, t, reduction="none", inplace_backward=inplace)
    (grad,) = torch.autograd.grad(loss, base, go)
    want_loss = F.cross_entropy(base, t, reduction="none")
    (want,) = torch.autograd.grad(want_loss, base, go)
    assert (grad[[1, 4]] == 0).all()
    torch.testing.assert_close(grad, want)


def test_ignored_rows_zero_gradient_through_the_registered_operator():
    # torch.func.vmap routes through the operator (its setup_context remembers the rows too).
    torch.manual_seed(4)
    x = torch.randn(3, 4, 5, requires_grad=True)
    t = torch.randint(0, 5, (3, 4))
    t[0, 1] = -100
    loss = torch.func.vmap(lambda a, b: gst.cross_entropy(a, b, reduction="none"))(x, t)
    go = torch.ones(3, 4)
    go[0, 1] = float("nan")
    (grad,) = torch.autograd.grad(loss, x, go)
    assert (grad[0, 1] == 0).all() and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------------
# 8: softmax / log_softmax `out` checks


@pytest.mark.parametrize("fn", [gs.softmax, gs.log_softmax, reference.softmax, reference.log_softmax])
def test_softmax_out_whose_elements_share_memory_is_refused(fn):
    x = np.random.default_rng(5).standard_normal((4, 6))
    out = np.lib.stride_tricks.as_strided(np.empty(6), shape=(4, 6), strides=(0, 8))
    with pytest.raises(ValueError, match="out's elements share memory"):
        fn(x, out=out)


@pytest.mark.parametrize("fn", [gs.softmax, gs.log_softmax, reference.softmax, reference.log_softmax])
def test_softmax_read_only_out_is_refused_before_computing(fn):
    x = np.random.default_rng(6).standard_normal((4, 6))
    out = np.full_like(x, 7.0)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        fn(x, out=out)
    assert (out == 7.0).all()
    y = np.empty_like(x)
    assert fn(x, out=y) is y  # a writable out of its own still works


# ----------------------------------------------------------------------------------
# 11: unclear errors


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64])
def test_ignore_index_outside_int64_is_one_clear_error_everywhere(value):
    x = np.zeros((2, 3), dtype=np.float32)
    t = np.array([0, 1])
    for call in (lambda: reference.cross_entropy(x, t, ignore_index=value),
                 lambda: gs.cross_entropy(x, t, ignore_index=value),
                 lambda: gs.cross_entropy_with_grad(x, t, ignore_index=value),
                 lambda: gst.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), ignore_index=value)):
        with pytest.raises(ValueError, match=r"ignore_index must be in int64's range"):
            call()
    options.CEOptions.checked(ignore_index=2**63 - 1)  # the edges are fine
    options.CEOptions.checked(ignore_index=-(2**63))


def test_inplace_backward_type_error_names_inplace_backward():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(TypeError, match=r"^inplace_backward must be True or False, got 1"):
        gst.cross_entropy(x * 1.0, torch.tensor([0, 1, 2]), inplace_backward=1)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vmap_then_backward_matches_torch(reduction):
    torch.manual_seed(7)
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (3, 4))
    grads = []
    for fn in (gst.cross_entropy, F.cross_entropy):
        loss = torch.func.vmap(lambda a, b: fn(a, b, reduction=reduction))(x, t)
        (g,) = torch.autograd.grad(loss.sum(), x)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------------
# 10: cross_entropy_sharded refuses widths that do not tile the logits


@pytest.mark.parametrize("widths", [[3, 4], [3, 7], [10, -1], []])
def test_cross_entropy_sharded_refuses_widths_not_summing_to_the_classes(widths):
    from gpu_softmax import vocab_parallel as vp

    x = np.random.default_rng(8).standard_normal((4, 9))
    with pytest.raises(ValueError, match=r"widths .* sum to logits' last dimension, 9"):
        vp.cross_entropy_sharded(x, np.array([0, 1, 2, 8]), widths)
    loss, _ = vp.cross_entropy_sharded(x, np.array([0, 1, 2, 8]), [4, 5])
    np.testing.assert_allclose(loss, reference.cross_entropy(x, np.array([0, 1, 2, 8])), rtol=1e-12)


# ----------------------------------------------------------------------------------
# 3: a bad argument on one rank stops every rank (2 gloo ranks under a watchdog)

VP_WATCHDOG_S = 120


def _one_rank_scenarios(rank: int):
    """name -> kwargs for this rank: rank 1 alone gets the bad argument."""
    x = torch.tensor(np.random.default_rng(9).standard_normal((4, 8)))
    t = torch.tensor([0, 3, 7, 5])
    local = x[:, :3].clone() if rank == 0 else x[:, 3:].clone()
    bad = rank == 1
    return {
        "non_tensor_target": dict(local_logits=local, target=t.tolist() if bad else t),
        "target_on_another_device": dict(local_logits=local, target=t.to("meta") if bad else t),
        "check_ranks_not_bool": dict(local_logits=local, target=t, check_ranks=1 if bad else True),
        "ignore_index_past_int64": dict(local_logits=local, target=t, ignore_index=2**63 if bad else -100),
        "vocab_size_past_int64": dict(local_logits=local, target=t, vocab_start=0 if rank == 0 else 3,
                                      vocab_size=2**70 if bad else 8),
        "fine_after": dict(local_logits=local, target=t),
    }


def _one_rank_worker(rank: int, world: int, port: int, outdir: str) -> None:
    import datetime
    import json
    import os

    import torch.distributed as dist

    from gpu_softmax.torch.parallel import vocab_parallel_cross_entropy as vpce

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    results = {}
    try:
        for name, kw in _one_rank_scenarios(rank).items():
            try:
                results[name] = ["ok", float(vpce(**kw))]
            except Exception as exc:  # noqa: BLE001 (recorded and checked by the test)
                results[name] = [type(exc).__name__, str(exc)]
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_vocab_parallel_bad_argument_on_one_rank_stops_every_rank(tmp_path):
    import json
    import socket

    import torch.distributed as dist
    import torch.multiprocessing as mp

    from gpu_softmax.testing import spawn_with_watchdog

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spawn_with_watchdog(mp, _one_rank_worker, (2, port, str(tmp_path)), 2, timeout_s=VP_WATCHDOG_S)
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    own = {"non_tensor_target": ("TypeError", "target must be a torch.Tensor"),
           "target_on_another_device": ("ValueError", "all tensors must be on one device"),
           "check_ranks_not_bool": ("TypeError", "check_ranks must be True or False"),
           "ignore_index_past_int64": ("ValueError", "ignore_index must be in int64's range"),
           "vocab_size_past_int64": ("ValueError", "")}
    for name, (kind, words) in own.items():
        assert res[1][name][0] == kind and words in res[1][name][1], (name, res[1][name])
        assert res[0][name][0] == "RuntimeError" and "rank(s) [1] refused" in res[0][name][1], (name, res[0][name])
    for r in (0, 1):
        assert res[r]["fine_after"][0] == "ok", res[r]["fine_after"]
