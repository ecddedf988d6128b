"""Every implementation a row can time, behind one adapter shape.

An `Adapter` names the module whose import says it is installed and a `forward(op)`
that returns the callable for a forward op (None: it has no such op). The training op
(`cross_entropy_with_grad`) is always that adapter's `cross_entropy` run through the one
`training_step`, so every implementation's forward+backward is measured the same way.
Nothing here raises: an implementation that is missing, lacks the op or fails to load
comes back as None with the reason, which the run records as a note.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import gpu_softmax as gs

from .cases import REFERENCE_IMPL, TORCH_ONLY_DTYPES, TRAINING_OP


class Unavailable(Exception):
    """Raised by an adapter's `forward`: the message is the row's note, verbatim."""


@dataclass(frozen=True)
class Adapter:
    name: str  # the impl name rows carry
    label: str  # how notes name it
    module: str  # its import failing means "not installed"
    forward: Callable[[str], Callable | None]  # forward op -> callable, None where it has no such op
    torch_tensors: bool = True  # takes torch tensors: CuPy rows reach it through DLPack
    wrap: Callable[[str, Callable], Callable] | None = None  # applied to the finished callable (torch.compile)


def training_step(loss_fn: Callable) -> Callable:
    """Forward and .backward() of `loss_fn` on a fresh leaf of the logits: (loss, gradient)."""

    def step(x, t):
        leaf = x.detach().requires_grad_(True)
        loss = loss_fn(leaf, t)
        (loss if loss.ndim == 0 else loss.sum()).backward()
        return loss, leaf.grad

    return step


def resolve(adapter: Adapter, op: str) -> tuple[Callable | None, str]:
    """(callable on the row's arguments, "") or (None, why it is absent)."""
    try:
        importlib.import_module(adapter.module)
    except Exception as exc:
        return None, f"{adapter.label} not installed or not importable ({type(exc).__name__})"
    try:
        fn = adapter.forward("cross_entropy" if op == TRAINING_OP else op)
        if fn is not None and op == TRAINING_OP:
            fn = training_step(fn)
        if fn is not None and adapter.wrap is not None:
            fn = adapter.wrap(op, fn)
    except Unavailable as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"{adapter.label} has no usable {op} ({type(exc).__name__}: {str(exc)[:120]})"
    return (fn, "") if fn is not None else (None, f"{adapter.label} has no {op}")


def _torch_forward(op: str) -> Callable | None:
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        raise Unavailable("torch sees no CUDA device (CPU-only build?)")
    return {
        "softmax": lambda x: torch.softmax(x, -1),
        "log_softmax": lambda x: torch.log_softmax(x, -1),
        "logsumexp": lambda x: torch.logsumexp(x, -1),
        "softmax_backward": lambda gy, y: torch._softmax_backward_data(gy, y, -1, y.dtype),
        "log_softmax_backward": lambda gy, y: torch._log_softmax_backward_data(gy, y, -1, y.dtype),
        "cross_entropy": lambda x, t: F.cross_entropy(x, t),
    }.get(op)


_COMPILED: dict[str, Callable] = {}  # one graph per op for every shape (dynamic shapes)


def _compile(op: str, fn: Callable) -> Callable:
    """torch.compile of the eager callable, once per op: the plan's shapes do not each pay a
    compile. Its compile time is counted by the run (first-call excess)."""
    if op not in _COMPILED:
        try:
            import torch

            _COMPILED[op] = torch.compile(fn, dynamic=True)
        except Exception as exc:
            raise Unavailable(f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]})") from exc
    return _COMPILED[op]


def forget_compiled() -> None:
    """Drop the compiled graphs, so that this run's compiles are this run's to count."""
    _COMPILED.clear()
    try:
        import torch

        torch._dynamo.reset()
    except Exception:
        pass


def _liger_forward(op: str) -> Callable | None:
    if op == "cross_entropy":
        try:
            from liger_kernel.transformers.functional import liger_cross_entropy

            return liger_cross_entropy
        except Exception:  # older Liger: only the autograd Function
            from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

            def ce(x, t):
                out = LigerCrossEntropyFunction.apply(x, t)
                return out[0] if isinstance(out, tuple) else out

            return ce
    if op == "softmax":
        try:
            from liger_kernel.transformers.functional import liger_softmax

            return liger_softmax
        except Exception:
            from liger_kernel.ops.softmax import LigerSoftmaxFunction

            return LigerSoftmaxFunction.apply
    return None


def _quack_forward(op: str) -> Callable | None:
    if op == "softmax":
        from quack.softmax import softmax

        return softmax
    if op == "cross_entropy":
        from quack.cross_entropy import cross_entropy

        return cross_entropy
    return None


def _cupyx_forward(op: str) -> Callable | None:
    import cupyx.scipy.special as sp

    return {
        "softmax": lambda x: sp.softmax(x, axis=-1),
        "log_softmax": lambda x: sp.log_softmax(x, axis=-1),
        "logsumexp": lambda x: sp.logsumexp(x, axis=-1),
    }.get(op)


def bridge_adapter(reduction: str = "mean") -> Adapter:
    """Ours on torch tensors, through the torch bridge (cross entropy with `reduction`)."""

    def forward(op: str) -> Callable | None:
        mod = importlib.import_module("gpu_softmax.torch")
        fn = getattr(mod, op, None)
        if op == "cross_entropy" and fn is not None:
            return lambda x, t: fn(x, t, reduction=reduction)
        return fn

    return Adapter("gpu_softmax.torch", "gpu_softmax.torch", "gpu_softmax.torch", forward)


TORCH = Adapter("torch", "torch", "torch", _torch_forward)
TORCH_COMPILE = Adapter("torch.compile", "torch", "torch", _torch_forward, wrap=_compile)
CUPYX = Adapter("cupyx", "cupyx.scipy.special", "cupyx.scipy.special", _cupyx_forward, torch_tensors=False)
QUACK = Adapter("quack", "QuACK", "quack", _quack_forward)
# Last: Liger writes its gradient over its input buffer (that is how it saves memory),
# so the others see the fresh logits.
LIGER = Adapter("liger", "Liger-Kernel", "liger_kernel", _liger_forward)
BASELINES = (TORCH, TORCH_COMPILE, CUPYX, QUACK, LIGER)


def _on_torch(fn: Callable) -> Callable:
    """Adapt a torch-tensor callable to CuPy arguments (zero-copy DLPack views)."""
    import torch

    return lambda *args: fn(*[torch.from_dlpack(a) for a in args])


def ours(op: str) -> Callable:
    """Ours on NumPy/CuPy arrays, as timed (cross entropy unvalidated: the check is not timed)."""
    fn = getattr(gs, op)
    if op.startswith("cross_entropy"):
        return lambda x, t: fn(x, t, validate=False)
    return fn


def ours_for_check(op: str, dtype: str) -> Callable | None:
    """Ours as the accuracy check calls it: cross entropy per row (reduction "none"),
    so a sample of rows can be compared; the timed call's mean adds those rows up."""
    if dtype in TORCH_ONLY_DTYPES:
        return resolve(bridge_adapter("none"), op)[0]
    if op.startswith("cross_entropy"):
        fn = getattr(gs, op)
        return lambda x, t: fn(x, t, reduction="none", validate=False)
    return getattr(gs, op)


def _cpu_implementations(op: str, dtype: str) -> tuple[dict[str, Callable], dict[str, str]]:
    if dtype in TORCH_ONLY_DTYPES:
        # What the row lacks is a GPU, not torch: the bridge computes bfloat16 on CPU
        # tensors too, but through the same NumPy reference the CPU rows already time.
        return {}, {REFERENCE_IMPL: f"{dtype} rows time our CUDA kernels through gpu_softmax.torch on CUDA "
                                    f"tensors, which needs an NVIDIA GPU; NumPy has no {dtype}, so a CPU run "
                                    f"has no {dtype} row (gpu_softmax.torch itself computes {dtype} on CPU "
                                    "tensors, through the float64 reference)"}
    return {REFERENCE_IMPL: ours(op)}, {}


def implementations(op: str, dtype: str, backend: str, with_baselines: bool = True,
                    skip_impls: tuple[str, ...] = ()) -> tuple[dict[str, Callable], dict[str, str]]:
    """({impl: callable on the row's arguments}, {impl: why it is absent}). Ours comes first."""
    if backend != "cuda":
        return _cpu_implementations(op, dtype)
    impls: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    torch_native = dtype in TORCH_ONLY_DTYPES

    def add(name: str, adapter: Adapter) -> None:
        if name in skip_impls:
            return
        fn, why = resolve(adapter, op)
        if fn is None:
            notes[name] = why
            return
        try:
            impls[name] = _on_torch(fn) if adapter.torch_tensors and not torch_native else fn
        except Exception as exc:
            notes[name] = f"{type(exc).__name__}: {str(exc)[:120]}"

    if torch_native:
        add("gpu_softmax", bridge_adapter())
    else:
        impls["gpu_softmax"] = ours(op)
        if op == TRAINING_OP:  # the training path: forward and .backward() through autograd
            add("gpu_softmax.torch", bridge_adapter())
    if with_baselines:
        for adapter in BASELINES:
            if adapter.torch_tensors or not torch_native:
                add(adapter.name, adapter)
    return impls, notes


# ----------------------------------------------------------------------------------
# the fused linear cross-entropy's rows: (input, linear_weight, target) -> loss, forward and backward


def _liger_linear_ce() -> Callable:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t)
    except ImportError:  # older Liger: only the autograd Function
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        def fused(h, w, t):
            out = LigerFusedLinearCrossEntropyFunction.apply(h, w, t)
            return out[0] if isinstance(out, tuple) else out

        return fused


def linear_ce_implementations(skip_impls: tuple[str, ...] = ()) -> tuple[dict[str, Callable], dict[str, str]]:
    """({impl: loss of (input, linear_weight, target)}, {impl: why absent}); ours first. Any device."""
    import torch
    import torch.nn.functional as F

    import gpu_softmax.torch as gst

    unfused = lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t)  # noqa: E731
    makers: dict[str, Callable[[], Callable]] = {
        "gpu_softmax.torch": lambda: gst.linear_cross_entropy,
        "torch": lambda: unfused,
        "torch.linear_cross_entropy": lambda: F.linear_cross_entropy,
        "torch.linear_cross_entropy(chunked)": lambda: (
            lambda h, w, t: F.linear_cross_entropy(h, w, t, options=torch.nn.LinearCrossEntropyOptions())),
        "torch.compile": lambda: torch.compile(unfused),
        "liger": _liger_linear_ce,
    }
    impls: dict[str, Callable] = {}
    notes: dict[str, str] = {}
    for name, make in makers.items():
        if name in skip_impls:
            continue
        try:
            impls[name] = make()
        except Exception as exc:
            notes[name] = f"{name} unavailable ({type(exc).__name__}: {str(exc)[:120]})"
    return impls, notes


def _linear_ce_step(fn: Callable, h, w, t):
    hl, wl = h.detach().requires_grad_(), w.detach().requires_grad_()
    loss = fn(hl, wl, t)
    loss.backward()
    return loss.detach(), hl.grad, wl.grad


def _median_ms(torch, fn: Callable, reps: int) -> tuple[float, float, float]:
    import statistics

    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), q[0], q[-1]


def bf16_matmul_tflops(torch, n: int = 8192, reps: int = 10) -> float:
    """The GPU's bf16 matrix-product rate as measured here: a square torch.mm, TFLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    ms = _median_ms(torch, lambda: torch.mm(a, b), reps)[0]
    return 2 * n**3 / (ms * 1e-3) / 1e12


def linear_ce_rows(shapes, *, reps: int = 10, warmup: int = 2, skip_impls: tuple[str, ...] = ()) -> dict:
    """Time the training step of each implementation at each (N, H, V) bf16 shape (GPU only).

    Per row: the median step time (CUDA events), the peak memory above the inputs (the
    gradients of input and weight included), the FLOP floor 6 N H V at the measured bf16
    matmul rate, and the loss against torch eager's."""
    import torch

    from .cases import LINEAR_CE_DTYPE, LINEAR_CE_OP, linear_ce_flops

    if not torch.cuda.is_available():
        raise RuntimeError(f"--op {LINEAR_CE_OP} needs torch with a CUDA device; this torch sees none")
    impls, notes = linear_ce_implementations(skip_impls)
    rate = bf16_matmul_tflops(torch)
    rows = []
    for n, h, v in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        hid = (torch.randn(n, h, device="cuda", generator=g) / h**0.5).to(getattr(torch, LINEAR_CE_DTYPE))
        w = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(hid.dtype)
        t = torch.randint(0, v, (n,), device="cuda", generator=g)
        floor_ms = linear_ce_flops(n, h, v) / (rate * 1e12) * 1e3
        reference_loss = None
        for name, fn in impls.items():
            row = {"op": LINEAR_CE_OP, "impl": name, "dtype": LINEAR_CE_DTYPE, "shape": [n, h, v], "note": ""}
            try:
                for _ in range(warmup):
                    loss = _linear_ce_step(fn, hid, w, t)[0]
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                _linear_ce_step(fn, hid, w, t)
                torch.cuda.synchronize()
                row["peak_mem_above_inputs_bytes"] = torch.cuda.max_memory_allocated() - base
                row["ms"], row["ms_p10"], row["ms_p90"] = _median_ms(
                    torch, lambda: _linear_ce_step(fn, hid, w, t), reps)
                row["floor_ms"] = floor_ms
                row["pct_matmul_rate"] = 100.0 * floor_ms / row["ms"]
                reference_loss = float(loss) if name == "torch" else reference_loss
                row["loss"] = float(loss)
            except Exception as exc:  # out of memory, a baseline's own limits: the row says so
                row["note"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                torch.cuda.empty_cache()
            rows.append(row)
        for row in rows[-len(impls):]:
            if reference_loss is not None and "loss" in row:
                row["matched"] = abs(row["loss"] - reference_loss) <= 1e-2 * abs(reference_loss)
        del hid, w, t
        torch.cuda.empty_cache()
    return {"op": LINEAR_CE_OP, "bf16_matmul_tflops": rate, "rows": rows,
            "notes": [f"{k}: {v}" for k, v in notes.items()]}


def linear_ce_markdown(doc: dict) -> str:
    lines = [f"measured bf16 matmul rate: {doc['bf16_matmul_tflops']:.0f} TFLOP/s", "",
             "| impl | N x H x V | ms | % of matmul rate | peak above inputs (GB) | loss matches torch | note |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        shape = "x".join(str(s) for s in r["shape"])
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        pct = f"{r['pct_matmul_rate']:.0f}" if "pct_matmul_rate" in r else "-"
        mem = f"{r['peak_mem_above_inputs_bytes'] / 1e9:.2f}" if "peak_mem_above_inputs_bytes" in r else "-"
        lines.append(f"| {r['impl']} | {shape} | {ms} | {pct} | {mem} | {r.get('matched', '-')} | {r['note']} |")
    return "\n".join(lines)
