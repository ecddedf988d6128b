"""Torch bridges of the token log-prob family: ``token_logprobs``, ``linear_token_logprobs``,
``vocab_parallel_token_logprobs``, differentiable in log p and in the entropy.

CPU tensors run the float64 NumPy reference (:mod:`gpu_softmax.reference_rl`,
:mod:`gpu_softmax.vocab_parallel_rl`); CUDA tensors raise NotImplementedError until
the CUDA kernels of the family are built (docs/rl.md, "Status"). Arguments are
checked on tensor descriptions by :mod:`gpu_softmax._checks_rl`, with the NumPy API's
error texts, before anything is computed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from . import _chunking, _checks, reference_rl
from . import _torch_bridge as _bridge
from . import vocab_parallel_rl as vprl
from ._checks_rl import TokenLogprobArgs, check_linear_token_logprobs, check_token_logprobs

__all__ = ["token_logprobs", "linear_token_logprobs", "vocab_parallel_token_logprobs"]


def _require_cpu(t: Tensor, what: str) -> None:
    if _bridge.device_kind(t) == "cuda":
        raise NotImplementedError(
            f"gpu_softmax.torch.{what} has no CUDA kernel yet (the token log-prob kernels are not built in this "
            "version); call it on CPU tensors (.cpu()) to use the float64 reference"
        )
    if _bridge.device_kind(t) != "cpu":
        raise _bridge.unsupported(t)


def _outputs(logp: Tensor, entropy: Tensor, return_entropy: bool):
    return (logp, entropy) if return_entropy else logp


def _np_rows(g: Tensor | None, rows: int):
    return None if g is None else g.detach().to(torch.float64).reshape(rows).numpy()


# ----------------------------------------------------------------------------------
# logits form


class _TokenLogprobs(torch.autograd.Function):
    """Forward: the reference's (logp, entropy). Backward: the reference's gradient (recomputed
    from the saved logits: nothing of size rows x classes is saved beyond the input)."""

    @staticmethod
    def forward(ctx, logits, tokens, a: TokenLogprobArgs):
        rec = dataclasses.replace(a, kind="numpy", logits=_bridge.to_numpy(logits), tokens=_bridge.to_numpy(tokens),
                                  opts=a.opts.replace(return_entropy=True))
        logp, entropy = reference_rl.token_logprobs_checked(rec)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, tokens)
        ctx.args = a
        acc = _bridge.acc_dtype(logits)
        return _bridge.from_numpy(logp, acc), _bridge.from_numpy(entropy, acc)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        logits, tokens = ctx.saved_tensors
        if grad_logp is None and grad_entropy is None:
            return None, None, None
        rows = ctx.args.layout.rows
        gl = _np_rows(grad_logp, rows)
        rec = dataclasses.replace(
            ctx.args, kind="numpy", logits=_bridge.to_numpy(logits), tokens=_bridge.to_numpy(tokens),
            grad_logp=gl if gl is not None else np.zeros(rows),
            grad_entropy=_np_rows(grad_entropy, rows),
        )
        grad = reference_rl.token_logprobs_backward_checked(rec)
        return _bridge.from_numpy(grad, logits.dtype), None, None


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
    CPU tensors: the float64 reference. CUDA tensors: NotImplementedError for now.
    """
    _bridge.require_tensors(logits=logits, tokens=tokens)
    a = check_token_logprobs(
        _bridge.describe(logits), _bridge.describe(tokens), axis=axis, temperature=temperature,
        logit_softcap=logit_softcap, ignore_index=ignore_index, top_k=top_k, top_p=top_p,
        return_entropy=return_entropy, validate=validate,
    )
    _require_cpu(logits, "token_logprobs")
    logp, entropy = _TokenLogprobs.apply(logits, tokens, a)
    return _outputs(logp, entropy, a.opts.return_entropy)


# ----------------------------------------------------------------------------------
# linear form: hidden @ weight.T (+ bias), a chunk of rows at a time


def _chunk_bounds(rows: int, chunk: int):
    return [(s, min(s + chunk, rows)) for s in range(0, rows, chunk)]


def _chunk_args(la, logits: Tensor, tokens: Tensor) -> TokenLogprobArgs:
    # The tokens were range-checked once, before the first chunk.
    return dataclasses.replace(
        la.inner, kind="numpy", logits=_bridge.to_numpy(logits), tokens=_bridge.to_numpy(tokens),
        layout=_checks.row_layout(tuple(logits.shape), 1), opts=la.inner.opts.replace(validate=False,
                                                                                      return_entropy=True),
    )


class _LinearTokenLogprobs(torch.autograd.Function):
    """Per chunk of rows: the chunk's logits by torch.matmul, then the reference. The backward
    recomputes each chunk's logits; at most one (chunk, V) block of logits exists at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, la, chunk):
        h = hidden.reshape(la.rows, la.features)
        t = tokens.reshape(la.rows)
        acc = _bridge.acc_dtype(hidden)
        logp = torch.empty(la.rows, dtype=acc)
        entropy = torch.empty(la.rows, dtype=acc)
        for s, e in _chunk_bounds(la.rows, chunk):
            lp, ent = reference_rl.token_logprobs_checked(_chunk_args(la, F.linear(h[s:e], weight, bias), t[s:e]))
            logp[s:e], entropy[s:e] = torch.from_numpy(lp), torch.from_numpy(ent)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, tokens)
        ctx.la, ctx.chunk = la, chunk
        shape = tuple(hidden.shape[:-1])
        return logp.reshape(shape), entropy.reshape(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, tokens = ctx.saved_tensors
        la = ctx.la
        if grad_logp is None and grad_entropy is None:
            return None, None, None, None, None, None
        h = hidden.reshape(la.rows, la.features)
        t = tokens.reshape(la.rows)
        gl = grad_logp.reshape(la.rows) if grad_logp is not None else torch.zeros(la.rows, dtype=torch.float64)
        ge = None if grad_entropy is None else grad_entropy.reshape(la.rows)
        acc = _bridge.acc_dtype(hidden)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=acc)
        grad_b = None if bias is None else torch.zeros(bias.shape, dtype=acc)
        for s, e in _chunk_bounds(la.rows, ctx.chunk):
            rec = dataclasses.replace(_chunk_args(la, F.linear(h[s:e], weight, bias), t[s:e]),
                                      grad_logp=_np_rows(gl[s:e], e - s),
                                      grad_entropy=None if ge is None else _np_rows(ge[s:e], e - s))
            g = _bridge.from_numpy(reference_rl.token_logprobs_backward_checked(rec), acc)
            grad_h[s:e] = (g @ weight.to(acc)).to(h.dtype)
            grad_w += g.T @ h[s:e].to(acc)
            if grad_b is not None:
                grad_b += g.sum(dim=0)
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
    rounding, may depend on the chunk's shape). CPU tensors only for now.
    """
    _bridge.require_tensors(hidden=hidden, linear_weight=linear_weight, tokens=tokens, linear_bias=linear_bias)
    la = check_linear_token_logprobs(
        _bridge.describe(hidden), _bridge.describe(linear_weight), _bridge.describe(tokens),
        _bridge.describe(linear_bias), chunk_size=chunk_size, temperature=temperature, logit_softcap=logit_softcap,
        ignore_index=ignore_index, top_k=top_k, top_p=top_p, return_entropy=return_entropy, validate=validate,
    )
    _require_cpu(hidden, "linear_token_logprobs")
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
