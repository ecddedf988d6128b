"""The cross-entropy training step on the CPU: split-regime plans (long rows read once),
the backward that touches no N x C memory for grad_output == 1, and the shared
argument descriptions of the torch bridge. The kernels themselves run in the
emulator (tests/emulator/run.py cross_entropy split|scale)."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_softmax import _checks
from gpu_softmax._cuda import cross_entropy as ce
from gpu_softmax._cuda.plan import Device

torch = pytest.importorskip("torch")
F = torch.nn.functional

import gpu_softmax.torch as gst  # noqa: E402
from gpu_softmax.torch import _bridge as bridge  # noqa: E402

# An H100/H200 whose SMs hold 2 blocks of our split kernels (their launch bounds'
# promise) and no more, whatever their thread count: the planner's occupancy model
# (plan.occupancy) on this description.
H100_SMS = 132


def device(n_sm: int = H100_SMS, cooperative: bool = True) -> Device:
    return Device("H100, 2 blocks per SM", n_sm, max_blocks_per_sm=2, cooperative=cooperative)


def occupancy(name: str, threads: int) -> int:
    assert name in ce.ENTRY_POINTS, name
    return ce.occupancy_of(device(), name, threads)


GOAL_SHAPES = [(4096, 128256), (8192, 32000), (16384, 131072), (4096, 256000), (16384, 151936)]


@pytest.mark.parametrize("storage", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("rows,cols", GOAL_SHAPES, ids=str)
def test_goal_shapes_plan_one_read(storage, rows, cols):
    p = ce.plan(storage, rows, cols, 0, False, device())
    assert p.regime in ("row", "split"), p  # the logits are read once, the gradient written once
    if p.regime == "split":
        assert p.cooperative and p.grid == p.groups * p.k <= occupancy(p.kernel, p.block) * H100_SMS
        assert p.chunk * (p.k - 1) < cols <= p.chunk * p.k


@pytest.mark.parametrize("storage", list(ce.VARIANTS))
def test_split_plans_hold_their_chunk_and_fit_co_resident(storage):
    vec = ce.VEC[storage]
    nv, max_threads = ce.VARIANTS[storage]["split"]
    for cols in (ce.capacity(storage, "row") + 1, 50257, 128256, 151936, 262144, 1 << 20, (1 << 22) + 5):
        for mis in range(vec):
            for rows in (1, 7, 4096, 10**7):
                for n_sm in (1, 3, 132):
                    p = ce.plan(storage, rows, cols, mis, False, device(n_sm))
                    if p.regime != "split":
                        # Only when the row needs more blocks than can be resident at once.
                        assert p.regime == "stream" and -(-cols // ce.capacity(storage, "split")) > 2 * n_sm
                        continue
                    assert p.kernel == ce.split_name(storage) and p.k >= 2
                    assert p.chunk % vec == 0 and p.chunk * (p.k - 1) < cols <= p.chunk * p.k
                    assert p.block % 32 == 0 and ce.BLOCK_MIN_THREADS <= p.block <= max_threads
                    assert p.chunk + mis <= p.block * nv * vec  # the chunk is held in registers
                    assert 1 <= p.groups <= rows and p.grid == p.groups * p.k <= 2 * n_sm


def test_split_needs_a_cooperative_launch_and_hard_labels():
    for storage in ce.VARIANTS:
        cols = 4 * ce.capacity(storage, "split")
        assert ce.plan(storage, 64, cols, 0, False, device()).regime == "split"
        assert ce.plan(storage, 64, cols, 0, False, device(cooperative=False)).regime == "stream"
        assert ce.plan(storage, 64, cols, 0, True, device()).regime == "stream"


def test_launcher_launches_split_plans_cooperatively(monkeypatch):
    seen = []
    monkeypatch.setattr(ce, "_launch", lambda name, grid, block, args, cooperative=False:
                        seen.append((name, cooperative)))

    class State:
        desc = device()

        def workspace(self, groups, k, acc):
            return ce.NULL, ce.NULL

    monkeypatch.setattr(ce.device, "current", State)

    class Arr:
        class data:
            ptr = 4096
        itemsize = 4

    inp = ce._Inputs("float32", np.dtype(np.float32), Arr(), ce.NULL, ce.NULL, ce.NULL)
    a = _checks.check_cross_entropy(np.zeros((2, 100000), np.float32), np.zeros(2, np.int64))
    p = ce._launch_fused(a, inp, ce.NULL, ce.NULL, ce.NULL, ce.NULL, ce.NULL)
    # default options: the split regime's fast-path instantiation (issue 20)
    assert p.regime == "split" and seen == [(ce.split_lean_name("float32"), True)]
    seen.clear()
    for opts in ({"label_smoothing": 0.1}, {"z_loss": 1e-3}, {"logit_softcap": 5.0},
                 {"weight": np.ones(100000, np.float32)}):
        a = _checks.check_cross_entropy(np.zeros((2, 100000), np.float32), np.zeros(2, np.int64), **opts)
        p = ce._launch_fused(a, inp, ce.NULL, ce.NULL, ce.NULL, ce.NULL, ce.NULL)
        assert p.regime == "split" and seen[-1] == (ce.split_name("float32"), True), opts


# ----------------------------------------------------------------------------------
# backward: grad_output == 1 touches nothing of size N x C


def _saved_ptrs():
    ptrs = []

    def pack(t):
        ptrs.append(t.data_ptr())
        return t

    return ptrs, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "z_loss": 1e-3}, {"logit_softcap": 5.0}], ids=str)
def test_backward_with_grad_output_one_hands_on_the_saved_buffer(reduction, opts):
    x = torch.randn(64, 1000, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, 1000, (64,))
    ptrs, hooks = _saved_ptrs()
    with hooks:
        loss = gst.cross_entropy(x, t, reduction=reduction, **opts)
    assert len(ptrs) == 1  # the gradient, nothing else of size N x C
    loss.backward()
    assert x.grad.data_ptr() == ptrs[0]  # no copy, no scaling pass
    xe = x.detach().clone().requires_grad_()
    cap = opts.get("logit_softcap")
    xc = cap * torch.tanh(xe / cap) if cap else xe
    e = F.cross_entropy(xc, t, reduction=reduction, label_smoothing=opts.get("label_smoothing", 0.0))
    if opts.get("z_loss"):
        lse = torch.logsumexp(xc, 1)
        z = opts["z_loss"] * lse**2
        e = e + (z.mean() if reduction == "mean" else z.sum())
    e.backward()
    torch.testing.assert_close(x.grad, xe.grad, rtol=2e-5, atol=2e-6)


def test_backward_into_an_intermediate_gets_the_saved_buffer():
    h = torch.zeros(64, 1000, requires_grad=True)
    base = torch.randn(64, 1000)
    t = torch.randint(0, 1000, (64,))
    ptrs, hooks = _saved_ptrs()
    seen = []
    with hooks:
        logits = h + base
        logits.register_hook(lambda g: seen.append(g.data_ptr()))
        loss = gst.cross_entropy(logits, t)
    loss.backward()
    assert seen and seen[0] in ptrs


def test_cpu_backward_stays_repeatable_for_gradcheck_and_retain_graph():
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1, 2, -100, 4, 8])
    loss = gst.cross_entropy(x, t, reduction="none")
    go = torch.rand(5, dtype=torch.float64) + 0.5
    (g1,) = torch.autograd.grad(loss, x, go, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, go * 2, retain_graph=True)
    torch.testing.assert_close(g2, 2 * g1)


# The CUDA branch with NumPy standing in for CuPy (launchers computing with the
# reference; the scale launcher in NumPy with the kernel's contract): the backward
# scales the saved buffer in place, decided by the launcher, and hands it on.


@pytest.fixture
def fake_cuda(monkeypatch):
    import contextlib
    import dataclasses

    from gpu_softmax import reference

    scales = []

    def ce_with_grad(a, return_logsumexp=False, *, storage=None, loss_storage=None):
        assert storage is None
        return reference.cross_entropy_with_grad_checked(dataclasses.replace(a, kind="numpy", inplace=False))

    def scale_grad(grad, g, cols, inner, *, storage=None):
        scales.append(float(g) if g.ndim == 0 else "rows")
        if g.ndim == 0 and float(g) == 1.0:
            return  # the kernel's early return: nothing of size N x C touched
        outer = grad.size // (cols * inner)
        gb = g.reshape(outer, 1, inner) if g.ndim else g
        grad[...] = (grad.reshape(outer, cols, inner) * gb).reshape(grad.shape)

    monkeypatch.setattr(ce, "cross_entropy_with_grad", ce_with_grad)
    monkeypatch.setattr(ce, "scale_grad", scale_grad)
    monkeypatch.setattr(bridge, "device_kind", lambda t: "cuda")
    monkeypatch.setattr(bridge, "cupy_on", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(bridge, "to_cupy", lambda t: None if t is None else t.detach().numpy())
    monkeypatch.setattr(bridge, "from_cupy", lambda a, dtype: torch.from_numpy(np.array(a, order="C")).to(dtype))
    return scales


@pytest.mark.parametrize("shape,reduction", [((6, 11), "mean"), ((3, 11, 2), "none"), ((11,), "sum")], ids=str)
def test_cuda_branch_scales_in_place_and_hands_on_the_saved_buffer(fake_cuda, shape, reduction):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    cd = 0 if len(shape) == 1 else 1
    t = torch.randint(0, 11, shape[:cd] + shape[cd + 1:])
    for go in (None, 2.5, "rows"):
        x.grad = None
        ptrs, hooks = _saved_ptrs()
        with hooks:
            loss = gst.cross_entropy(x, t, reduction=reduction)
        if go is None:
            (loss.sum() if reduction == "none" else loss).backward()
            g = torch.ones(loss.shape, dtype=torch.float64)
        else:
            g = torch.rand(loss.shape, dtype=torch.float64) + 0.5 if go == "rows" else torch.full(loss.shape, go,
                                                                                                   dtype=torch.float64)
            loss.backward(g)
        assert x.grad.data_ptr() == ptrs[0]  # the saved buffer, scaled in place (or not at all)
        xe = x.detach().clone().requires_grad_()
        F.cross_entropy(xe, t, reduction=reduction).backward(g)
        torch.testing.assert_close(x.grad, xe.grad, rtol=1e-12, atol=1e-12)
    assert fake_cuda[0] in (1.0, "rows")


def test_cuda_branch_second_backward_raises_clearly(fake_cuda):
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    loss = gst.cross_entropy(x, torch.tensor([1, 2, 3, 4]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_scale_ops_pass_opcheck():
    g = torch.randn(3, 5, 2)
    torch.library.opcheck(torch.ops.gpu_softmax.scale_grad_.default, (g.clone(), torch.tensor(2.0), 1))
    torch.library.opcheck(torch.ops.gpu_softmax.scale_grad_.default, (g.clone(), torch.rand(3, 2), 1))
    torch.library.opcheck(torch.ops.gpu_softmax.scale_grad.default, (g, torch.rand(3, 2), 1))


# ----------------------------------------------------------------------------------
# argument descriptions: the checks see shape and dtype, the errors are the API's


def test_descriptions_give_the_shared_error_texts():
    x = torch.zeros(4, 7)
    with pytest.raises(ValueError, match=r"target has shape \(3,\); class indices must have logits' shape"):
        gst.cross_entropy(x, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="logits must be float16, float32 or float64, got dtype int32"):
        gst.cross_entropy(torch.zeros(4, 7, dtype=torch.int32), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="label_smoothing must be a real number, got True"):
        gst.cross_entropy(x, torch.zeros(4, dtype=torch.int64), label_smoothing=True)
    # An accepted call is cached by description: the same options again, then a bad
    # one that compares equal to a good one (True == 1) must still raise.
    gst.cross_entropy(x, torch.zeros(4, dtype=torch.int64), label_smoothing=1)
    with pytest.raises(TypeError, match="label_smoothing must be a real number, got True"):
        gst.cross_entropy(x, torch.zeros(4, dtype=torch.int64), label_smoothing=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gst.cross_entropy(x, torch.zeros(4, dtype=torch.int64), reduction=["mean"])


def test_description_is_what_the_checks_read():
    d = bridge.describe(torch.zeros(2, 3, dtype=torch.bfloat16))
    assert d.shape == (2, 3) and d.ndim == 2 and d.dtype == np.float16 and _checks.array_kind(d, "x") == "torch"


def test_bridge_modules_do_not_import_each_other():
    import ast
    from pathlib import Path

    root = Path(gst.__file__).parent
    tree = ast.parse((root / "parallel.py").read_text())
    froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported = {a.name for n in froms for a in n.names}
    modules = {n.module for n in froms}
    assert "torch" not in imported and "functional" not in imported and "functional" not in modules
    assert "_bridge" in imported
