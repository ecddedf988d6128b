"""Torch bridges of the token log-prob family: ``token_logprobs``, ``linear_token_logprobs``,
``vocab_parallel_token_logprobs``, differentiable in log p and in the entropy.

The logits and linear forms run two custom operators, ``gpu_softmax::token_logprobs``
(forward: log p, entropy and a (rows, 4) per-row record) and
``gpu_softmax::token_logprobs_backward``, registered with fakes (:func:`._ops.gs_op`)
and an autograd formula, so torch.compile traces them without graph breaks. CUDA
tensors run the kernels of :mod:`gpu_softmax._cuda.token_logprobs` on PyTorch's
current stream with PyTorch's allocator (through :mod:`._bridge`); the backward
takes the record the forward saved, so it reads the logits once and writes the
gradient once. CPU tensors run the float64 NumPy reference (the record is then
unused: the reference backward recomputes its statistics).

No host sync on CUDA: tokens are not range-checked there (``validate`` is ignored);
an out-of-range token gives a NaN log p and a NaN gradient row, never a bad access.
On CPU the reference validates and raises ``ValueError``. The vocabulary-parallel
form runs on CPU tensors (gloo) only. Arguments are checked on tensor descriptions
by :mod:`gpu_softmax._checks_rl`, with the NumPy API's error texts, before anything
is computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .. import _checks, _chunking, reference_rl
from .. import vocab_parallel_rl as vprl
from .._checks import row_layout
from .._checks_rl import TokenLogprobArgs, check_linear_token_logprobs, check_token_logprobs
from ..rl_options import TokenLogprobOptions
from . import _bridge
from ._ops import Like, gs_op

__all__ = ["token_logprobs", "linear_token_logprobs", "vocab_parallel_token_logprobs"]

RECORD_WIDTH = 4  # gpu_softmax._cuda.kernels.TLP_RECORD (not imported: that pulls in the CUDA layer)


def _require_cpu(t: Tensor, what: str) -> None:
    if _bridge.device_kind(t) == "cuda":
        raise NotImplementedError(
            f"gpu_softmax.torch.{what} has no CUDA kernel yet (the sharded form runs on CPU tensors over gloo); "
            "gather the logits and call gpu_softmax.torch.token_logprobs, or call it on CPU tensors"
        )
    if _bridge.device_kind(t) != "cpu":
        raise _bridge.unsupported(t)


def _require_supported(t: Tensor) -> None:
    if _bridge.device_kind(t) not in ("cpu", "cuda"):
        raise _bridge.unsupported(t)


def _outputs(logp: Tensor, entropy: Tensor, return_entropy: bool):
    return (logp, entropy) if return_entropy else logp


def _np_rows(g: Tensor | None, rows: int):
    return None if g is None else g.detach().to(torch.float64).reshape(rows).numpy()


# ----------------------------------------------------------------------------------
# the operators: (rows, C) logits with the classes last, (rows,) tokens

_SCHEMA_TYPE = {"float": "float", "float | None": "float?", "int": "SymInt", "int | None": "SymInt?", "bool": "bool"}
OPTIONS_SCHEMA = ", ".join(f"{_SCHEMA_TYPE[f.type]} {f.name}" for f in dataclasses.fields(TokenLogprobOptions))


def _row_result(b: dict) -> Tensor:
    x = b["logits"]
    return x.new_empty((x.shape[0],), dtype=_bridge.acc_dtype(x))


def _record_result(b: dict) -> Tensor:
    x = b["logits"]
    return x.new_empty((x.shape[0], RECORD_WIDTH), dtype=_bridge.acc_dtype(x))


def _op_record(kind: str, logits, tokens, opts: TokenLogprobOptions, **grads) -> TokenLogprobArgs:
    return TokenLogprobArgs(kind=kind, logits=logits, tokens=tokens, layout=row_layout(tuple(logits.shape), 1),
                            opts=opts, **grads)


def _forward(logits: Tensor, tokens: Tensor, opts: TokenLogprobOptions) -> tuple[Tensor, Tensor, Tensor]:
    acc = _bridge.acc_dtype(logits)
    if _bridge.device_kind(logits) == "cpu":
        a = _op_record("numpy", _bridge.to_numpy(logits), _bridge.to_numpy(tokens), opts.replace(return_entropy=True))
        logp, entropy = reference_rl.token_logprobs_checked(a)
        return (_bridge.from_numpy(logp, acc), _bridge.from_numpy(entropy, acc),
                torch.zeros((logits.shape[0], RECORD_WIDTH), dtype=acc))
    from .._cuda import token_logprobs as launch

    with _bridge.cupy_on(logits.device):
        a = _op_record("cupy", _bridge.to_cupy(logits), _bridge.to_cupy(tokens), opts.replace(validate=False))
        logp, entropy, rec = launch.forward_stats(a, storage=_bridge.storage(logits))
        return _bridge.from_cupy(logp, acc), _bridge.from_cupy(entropy, acc), _bridge.from_cupy(rec, acc)


def _backward(logits: Tensor, tokens: Tensor, record: Tensor, grad_logp: Tensor, grad_entropy: Tensor | None,
              opts: TokenLogprobOptions) -> Tensor:
    opts = opts.replace(validate=False)  # the forward checked the tokens
    if _bridge.device_kind(logits) == "cpu":
        rows = logits.shape[0]
        a = _op_record("numpy", _bridge.to_numpy(logits), _bridge.to_numpy(tokens), opts,
                       grad_logp=_np_rows(grad_logp, rows), grad_entropy=_np_rows(grad_entropy, rows))
        return _bridge.from_numpy(reference_rl.token_logprobs_backward_checked(a), logits.dtype)
    from .._cuda import token_logprobs as launch

    acc = _bridge.acc_dtype(logits)
    with _bridge.cupy_on(logits.device):
        # Gradients of a sum arrive expanded (stride 0): one small contiguous copy each.
        ge = None if grad_entropy is None else _bridge.to_cupy(grad_entropy.to(acc).contiguous())
        a = _op_record("cupy", _bridge.to_cupy(logits), _bridge.to_cupy(tokens), opts,
                       grad_logp=_bridge.to_cupy(grad_logp.to(acc).contiguous()), grad_entropy=ge)
        grad = launch.backward_rows(a, storage=_bridge.storage(logits), record=_bridge.to_cupy(record))
        return _bridge.from_cupy(grad, logits.dtype)


@gs_op("token_logprobs", result=(_row_result, _row_result, _record_result),
       schema=f"(Tensor logits, Tensor tokens, {OPTIONS_SCHEMA}) -> (Tensor, Tensor, Tensor)")
def tlp_op(logits: Tensor, tokens: Tensor, *op_args: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(logp, entropy, record) of (rows, C) logits; ``op_args`` is ``TokenLogprobOptions.op_args()``."""
    return _forward(logits, tokens, TokenLogprobOptions.from_op_args(op_args))


@gs_op("token_logprobs_backward", result=Like("logits"),
       schema=f"(Tensor logits, Tensor tokens, Tensor record, Tensor grad_logp, Tensor? grad_entropy, "
              f"{OPTIONS_SCHEMA}) -> Tensor")
def tlp_backward_op(logits: Tensor, tokens: Tensor, record: Tensor, grad_logp: Tensor, grad_entropy: Tensor | None,
                    *op_args: Any) -> Tensor:
    """d(sum grad_logp logp + sum grad_entropy entropy) / d logits, in the logits' dtype."""
    return _backward(logits, tokens, record, grad_logp, grad_entropy, TokenLogprobOptions.from_op_args(op_args))


def _setup_context(ctx, inputs, output) -> None:
    logits, tokens, *op_args = inputs
    ctx.save_for_backward(logits, tokens, output[2])
    ctx.op_args = tuple(op_args)


def _op_backward(ctx, grad_logp, grad_entropy, _grad_record):
    logits, tokens, record = ctx.saved_tensors
    nones = (None,) * (1 + len(ctx.op_args))
    if grad_logp is None and grad_entropy is None:
        return (None,) + nones
    if grad_logp is None:
        grad_logp = torch.zeros_like(grad_entropy)
    grad = torch.ops.gpu_softmax.token_logprobs_backward(logits, tokens, record, grad_logp, grad_entropy,
                                                         *ctx.op_args)
    return (grad,) + nones


torch.library.register_autograd("gpu_softmax::token_logprobs", _op_backward, setup_context=_setup_context)


def _apply_rows(logits2d: Tensor, tokens1d: Tensor, opts: TokenLogprobOptions) -> tuple[Tensor, Tensor]:
    logp, entropy, _ = torch.ops.gpu_softmax.token_logprobs(logits2d, tokens1d, *opts.op_args())
    return logp, entropy


# ----------------------------------------------------------------------------------
# logits form


def token_logprobs(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int | None = None,
    top_p: float | None = None,
    return_entropy: bool = False,
    validate: bool = True,
    axis: int = -1,
):
    """``gpu_softmax.token_logprobs`` on tensors, differentiable in log p and the entropy.

    Returns ``logp`` or ``(logp, entropy)`` (float32; float64 for float64 logits).
    The gradient flows to ``logits`` only; the sampler's mask is constant for it.
    CPU tensors: the float64 reference. CUDA tensors: the kernels (``validate`` is
    not applied there: no host sync).
    """
    _bridge.require_tensors(logits=logits, tokens=tokens)
    a = check_token_logprobs(
        _bridge.describe(logits), _bridge.describe(tokens), axis=axis, temperature=temperature,
        logit_softcap=logit_softcap, ignore_index=ignore_index, top_k=top_k, top_p=top_p,
        return_entropy=return_entropy, validate=validate,
    )
    _require_supported(logits)
    rows, cols = a.layout.rows, a.layout.cols
    x = logits.movedim(a.layout.axis, -1).reshape(rows, cols).contiguous()
    logp, entropy = _apply_rows(x, tokens.reshape(rows).contiguous(), a.opts)
    shape = a.out_shape
    return _outputs(logp.reshape(shape), entropy.reshape(shape), a.opts.return_entropy)


# ----------------------------------------------------------------------------------
# linear form: hidden @ weight.T (+ bias), a chunk of rows at a time


def _chunk_bounds(rows: int, chunk: int):
    return [(s, min(s + chunk, rows)) for s in range(0, rows, chunk)]


def _chunk_opts(la) -> TokenLogprobOptions:
    # The tokens were range-checked once, before the first chunk.
    return la.inner.opts.replace(validate=False, return_entropy=True)


class _LinearTokenLogprobs(torch.autograd.Function):
    """Per chunk of rows: the chunk's logits by F.linear, then the token log-prob operator
    (kernels on CUDA, the reference on CPU). The backward recomputes each chunk's logits;
    at most one (chunk, V) block of logits exists at a time. The per-row records of the
    forward ((rows, 4), small) are kept for the backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, la, chunk):
        h = hidden.reshape(la.rows, la.features)
        t = tokens.reshape(la.rows).contiguous()
        acc = _bridge.acc_dtype(hidden)
        logp = hidden.new_empty(la.rows, dtype=acc)
        entropy = hidden.new_empty(la.rows, dtype=acc)
        records = hidden.new_empty((la.rows, RECORD_WIDTH), dtype=acc)
        op_args = _chunk_opts(la).op_args()
        for s, e in _chunk_bounds(la.rows, chunk):
            logp[s:e], entropy[s:e], records[s:e] = torch.ops.gpu_softmax.token_logprobs(
                F.linear(h[s:e], weight, bias), t[s:e], *op_args)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, tokens, records)
        ctx.la, ctx.chunk = la, chunk
        shape = tuple(hidden.shape[:-1])
        return logp.reshape(shape), entropy.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, tokens, records = ctx.saved_tensors
        la = ctx.la
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        h = hidden.reshape(la.rows, la.features)
        t = tokens.reshape(la.rows).contiguous()
        acc = _bridge.acc_dtype(hidden)
        gl = (grad_logp.reshape(la.rows) if grad_logp is not None else hidden.new_zeros(la.rows, dtype=acc)).to(acc)
        ge = None if grad_entropy is None else grad_entropy.reshape(la.rows).to(acc)
        # CPU: the products in the accumulation dtype (the reference's). CUDA: in the
        # weight's own dtype (cuBLAS accumulates in float32), never a float32 copy of it.
        native = _bridge.device_kind(hidden) == "cuda"
        w = weight if native else weight.to(acc)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=acc, device=bias.device)
        op_args = _chunk_opts(la).op_args()
        for s, e in _chunk_bounds(la.rows, ctx.chunk):
            g = torch.ops.gpu_softmax.token_logprobs_backward(
                F.linear(h[s:e], weight, bias), t[s:e], records[s:e], gl[s:e], None if ge is None else ge[s:e],
                *op_args)
            if not native:
                g = g.to(acc)
            grad_h[s:e] = (g @ w).to(h.dtype)
            grad_w += (g.T @ (h[s:e] if native else h[s:e].to(acc))).to(acc)
            if grad_b is not None:
                grad_b += g.sum(dim=0, dtype=acc)
        return (grad_h.reshape(hidden.shape), grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


def linear_token_logprobs(
    hidden: Tensor,
    linear_weight: Tensor,
    tokens: Tensor,
    *,
    linear_bias: Tensor | None = None,
    chunk_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int | None = None,
    top_p: float | None = None,
    return_entropy: bool = False,
    validate: bool = True,
):
    """``token_logprobs(hidden @ linear_weight.T + linear_bias, tokens)`` without the full logits.

    ``hidden`` (..., H), ``linear_weight`` (V, H) as ``torch.nn.Linear``'s, ``linear_bias``
    (V,) or None, ``tokens`` of hidden's shape without the last dimension. The rows are
    processed ``chunk_size`` at a time (gpu_softmax._chunking's rule when None), forward
    and backward (which recomputes each chunk's logits): only one (chunk, V) block of
    logits exists at a time. Gradients flow to hidden, linear_weight and linear_bias.
    Results are deterministic for a given chunk size (the matmul's kernel, hence its
    rounding, may depend on the chunk's shape). CPU tensors: the reference, with the
    range check of the tokens; CUDA tensors: the kernels, no range check (no host sync).
    """
    _bridge.require_tensors(hidden=hidden, linear_weight=linear_weight, tokens=tokens, linear_bias=linear_bias)
    la = check_linear_token_logprobs(
        _bridge.describe(hidden), _bridge.describe(linear_weight), _bridge.describe(tokens),
        _bridge.describe(linear_bias), chunk_size=chunk_size, temperature=temperature, logit_softcap=logit_softcap,
        ignore_index=ignore_index, top_k=top_k, top_p=top_p, return_entropy=return_entropy, validate=validate,
    )
    _require_supported(hidden)
    if _bridge.device_kind(hidden) == "cpu":
        reference_rl.split_tokens(_bridge.to_numpy(tokens), la.classes, la.inner.opts)  # the range check, once
    chunk = la.chunk_size or _chunking.chunk_rows(la.rows, la.classes, hidden.element_size())
    logp, entropy = _LinearTokenLogprobs.apply(hidden, linear_weight, linear_bias, tokens, la, chunk)
    return _outputs(logp, entropy, la.inner.opts.return_entropy)


# ----------------------------------------------------------------------------------
# vocabulary-parallel form (torch.distributed; gloo on CPU)


def _all_gather_stacked(t: Tensor, group, world: int) -> Tensor:
    """(world, *t.shape): every rank's t in rank order, in one collective."""
    t = t.contiguous()
    out = t.new_empty((world * t.shape[0],) + tuple(t.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t, group=group)
    return out.view((world,) + tuple(t.shape))


def _gather(a, group, world: int):
    if a.shape[0] == 0:
        return np.zeros((world,) + tuple(a.shape))
    return _all_gather_stacked(torch.from_numpy(a), group, world).numpy()


class _VocabParallelTokenLogprobs(torch.autograd.Function):
    """Forward: (top_k: one gather of the shards' top values), one gather of the records, the
    merge. Backward: the local gradient from the saved (logp, entropy, lse); no collective."""

    @staticmethod
    def forward(ctx, local_logits, tokens, a, shard, group, world):
        vocab_start, vocab_size = shard
        opts, rows = a.opts, a.layout.rows
        z, _ = vprl.local_scaled(_bridge.to_numpy(local_logits).reshape(rows, local_logits.shape[-1]), opts)
        t = _bridge.to_numpy(tokens).reshape(rows)
        tau = None
        if opts.top_k is not None:
            tops = _gather(vprl.local_top_values(z, opts.top_k), group, world)
            tau = vprl.top_k_threshold(tops, opts.top_k)
            if opts.top_p is not None and opts.top_p < 1.0:
                ties = _gather(vprl.tie_counts(z, tau), group, world)
                tau = vprl.top_p_threshold(tops, ties, tau, opts.top_p)
        records = _gather(vprl.partial_stats(z, tau, t, vocab_start, vocab_size, opts), group, world)
        merged = vprl.merge_stats(records, t, vocab_size, opts)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(local_logits, tokens)
        ctx.state = (a, shard, tau, merged)
        acc = _bridge.acc_dtype(local_logits)
        shape = a.out_shape
        return _bridge.from_numpy(merged[0].reshape(shape), acc), _bridge.from_numpy(merged[1].reshape(shape), acc)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        local_logits, tokens = ctx.saved_tensors
        a, (vocab_start, vocab_size), tau, merged = ctx.state
        if grad_logp is None and grad_entropy is None:
            return (None,) * 6
        rows = a.layout.rows
        z, dz_dx = vprl.local_scaled(_bridge.to_numpy(local_logits).reshape(rows, local_logits.shape[-1]), a.opts)
        gl = _np_rows(grad_logp, rows) if grad_logp is not None else np.zeros(rows)
        grad = vprl.local_grad(z, dz_dx, tau, _bridge.to_numpy(tokens).reshape(rows), vocab_start, vocab_size,
                               a.opts, merged, gl, _np_rows(grad_entropy, rows))
        return (_bridge.from_numpy(grad.reshape(local_logits.shape), local_logits.dtype),) + (None,) * 5


def vocab_parallel_token_logprobs(
    local_logits: Tensor,
    tokens: Tensor,
    *,
    vocab_start: int,
    vocab_size: int,
    group: Any = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int | None = None,
    top_p: float | None = None,
    return_entropy: bool = False,
    validate: bool = True,
):
    """``token_logprobs`` of logits whose vocabulary is split over the ranks of ``group``.

    ``local_logits`` (..., width): this rank's columns ``[vocab_start, vocab_start +
    width)`` of the full (..., vocab_size) logits, classes along the last dimension;
    ``tokens`` (...): global class ids, the same on every rank. Every rank returns the
    same log p (and entropy) as ``token_logprobs`` on the gathered logits, and
    backpropagates into its own shard only. Costs one all-gather of a (rows, 5) float64
    record per rank (plus one of a (rows, top_k) list with ``top_k``, and one of a
    (rows, 1) tie count with ``top_p``); the backward has no collective. ``top_p`` < 1
    needs ``top_k`` (NotImplementedError without it). The ranks'
    arguments are not compared with each other: a rank whose layout or options differ
    gives wrong results or a hang. CPU tensors (gloo) only for now.
    """
    _bridge.require_tensors(local_logits=local_logits, tokens=tokens)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("vocab_parallel_token_logprobs needs torch.distributed initialised "
                           "(torch.distributed.init_process_group; gloo for CPU tensors)")
    if local_logits.dim() == 0:
        _checks.normalize_axis(-1, 0, "local_logits")  # the one error text for a 0-d input
    width = int(local_logits.shape[-1])
    shard = vprl.check_shard(width, vocab_start, vocab_size)
    # checked as the full (..., vocab_size) logits: the tokens are global class ids
    desc = dataclasses.replace(_bridge.describe(local_logits), shape=tuple(local_logits.shape[:-1]) + (shard[1],))
    a = check_token_logprobs(
        desc, _bridge.describe(tokens), axis=-1, temperature=temperature, logit_softcap=logit_softcap,
        ignore_index=ignore_index, top_k=top_k, top_p=top_p, return_entropy=return_entropy, validate=validate,
    )
    vprl.refuse_top_p(a.opts)
    _require_cpu(local_logits, "vocab_parallel_token_logprobs")
    reference_rl.split_tokens(_bridge.to_numpy(tokens), shard[1], a.opts)  # the range check, every rank alike
    world = dist.get_world_size(group)
    logp, entropy = _VocabParallelTokenLogprobs.apply(local_logits, tokens, a, shard, group, world)
    return _outputs(logp, entropy, a.opts.return_entropy)
