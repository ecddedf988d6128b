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
