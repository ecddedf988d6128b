"""Vocabulary-parallel token log-probs: the NumPy building blocks (float64).

Rank p holds the logits columns ``[vocab_start, vocab_start + width)`` of the full V.
As for cross entropy (:mod:`gpu_softmax.vocab_parallel`), no rank ever sees the full
logits; per row, with z the scaled logits (soft-cap, then temperature):

0. (top_k only) ``local_top_values``: the shard's k largest z, padded with -inf; one
   all-gather of these (rows, k) lists and ``top_k_threshold`` gives every rank the
   global k-th largest z, tau. The kept set is ``z >= tau`` (ties kept whole): the k-th
   largest of the whole row is among the union of the shards' k largest.
1. ``partial_stats``: over the shard's kept classes, the record
   ``[m, s, a, z_t, hit]`` with ``m`` the max, ``s = sum exp(z - m)``,
   ``a = sum exp(z - m) (z - m)``, and the token's z when the token lies in this shard
   (``hit`` = 1; z_t = -inf when it is there but not kept).
2. One all-gather of the (rows, 5) records; ``merge_stats`` combines them in rank
   order (the same numbers on every rank): ``M = max m_p``, ``S = sum_p e^(m_p - M) s_p``,
   ``A = sum_p e^(m_p - M) (a_p + (m_p - M) s_p)``, so ``lse = M + log S``,
   ``logp = z_t - lse`` and ``H = log S - A / S`` (no cancelling ``lse - sum q z``).
3. ``local_grad``: the gradient of the local shard from (lse, H) alone, no collective.

top_p (with top_k only): what top_k kept is known in full from the gathered lists plus
one more all-gather of each shard's count of values equal to tau (``tie_counts``):
``top_p_threshold`` applies the nucleus rule to that multiset on every rank alike and
the kept set becomes ``z >= tau_p``. top_p without top_k would need the sorted mass of
the whole row: NotImplementedError (top_p = 1 is no mask and is accepted).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .reference_rl import scaled_logits, split_tokens, top_p_kept_sorted
from .rl_options import TokenLogprobOptions

RECORD_FIELDS = ("max", "sum_exp", "sum_exp_times_gap", "token_z", "token_here")
RECORD_WIDTH = len(RECORD_FIELDS)

__all__ = ["RECORD_FIELDS", "RECORD_WIDTH", "check_shard", "refuse_top_p", "local_scaled", "local_top_values",
           "top_k_threshold", "tie_counts", "top_p_threshold", "partial_stats", "merge_stats", "local_grad"]


def _int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_shard(width: int, vocab_start: Any, vocab_size: Any) -> tuple[int, int]:
    """(vocab_start, vocab_size) as ints, the shard lying inside [0, vocab_size)."""
    start, size = _int(vocab_start, "vocab_start"), _int(vocab_size, "vocab_size")
    if size < 1:
        raise ValueError(f"vocab_size must be at least 1 (the sum of the shard widths), got {size}")
    if start < 0 or start + width > size:
        raise ValueError(
            f"this shard's columns [{start}, {start + width}) do not lie inside the vocabulary [0, {size}); "
            "vocab_start must be the sum of the lower ranks' shard widths"
        )
    return start, size


def refuse_top_p(opts: TokenLogprobOptions) -> None:
    if opts.top_p is not None and opts.top_p < 1.0 and opts.top_k is None:
        raise NotImplementedError(
            "vocab_parallel_token_logprobs takes top_p only together with top_k (without it the nucleus needs "
            "the sorted mass of the whole vocabulary); pass top_k too, or gather the logits and call "
            "token_logprobs"
        )


def local_scaled(local_logits: np.ndarray, opts: TokenLogprobOptions) -> tuple[np.ndarray, Any]:
    """(z, dz/dx) of the (rows, width) shard in float64."""
    return scaled_logits(np.asarray(local_logits, dtype=np.float64), opts)


def local_top_values(z: np.ndarray, k: int) -> np.ndarray:
    """(rows, k): the shard's k largest z per row, largest first, padded with -inf."""
    rows, width = z.shape
    out = np.full((rows, k), -np.inf)
    n = min(k, width)
    if n:
        with np.errstate(invalid="ignore"):
            out[:, :n] = -np.sort(-z, axis=1)[:, :n]
    return out


def top_k_threshold(gathered: np.ndarray, k: int) -> np.ndarray:
    """(rows,): the k-th largest of every rank's top values, gathered as (P, rows, k)."""
    shards, rows, width = gathered.shape
    every = np.moveaxis(gathered, 0, 1).reshape(rows, shards * width)
    return -np.sort(-every, axis=1)[:, k - 1]


def tie_counts(z: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """(rows, 1): how many of the shard's z equal the top_k threshold (its ties may outnumber k)."""
    with np.errstate(invalid="ignore"):
        return (z == tau[:, None]).sum(axis=1, dtype=np.float64)[:, None]


def top_p_threshold(tops: np.ndarray, ties: np.ndarray, tau: np.ndarray, top_p: float) -> np.ndarray:
    """(rows,): the smallest z that top_p keeps of what top_k kept, from the gathered (P, rows, k)
    top values and (P, rows, 1) tie counts.

    What top_k kept is known in full: every z above tau is in some shard's list (fewer
    than k of them exist), and tau itself counts as often as the shards hold it."""
    shards, rows, k = tops.shape
    vals = np.moveaxis(tops, 0, 1).reshape(rows, shards * k)
    above = vals > tau[:, None]
    vals = np.concatenate([np.where(above, vals, -np.inf), tau[:, None]], axis=1)
    mult = np.concatenate([above.astype(np.float64), ties.sum(axis=0)], axis=1)
    with np.errstate(all="ignore"):
        w = np.where(mult > 0, mult * np.exp(vals - vals.max(axis=1, keepdims=True)), 0.0)
        q = w / w.sum(axis=1, keepdims=True)
        order, kept_sorted = top_p_kept_sorted(vals, q, top_p)
        kept = kept_sorted & (np.take_along_axis(mult, order, axis=1) > 0)
        return np.where(kept, np.take_along_axis(vals, order, axis=1), np.inf).min(axis=1)


def _local_keep(z: np.ndarray, tau: np.ndarray | None) -> np.ndarray:
    if tau is None:
        return np.ones(z.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return z >= tau[:, None]


def _local_tokens(tokens: np.ndarray, vocab_start: int, width: int, vocab_size: int, opts: TokenLogprobOptions):
    """(local index, token here, ignored rows, out-of-range rows) for the global tokens."""
    t, ignored, bad = split_tokens(tokens, vocab_size, opts)
    lt = t - vocab_start
    here = ~ignored & ~bad & (lt >= 0) & (lt < width)
    return np.where(here, lt, 0), here, ignored, bad


def partial_stats(z: np.ndarray, tau: np.ndarray | None, tokens: np.ndarray, vocab_start: int, vocab_size: int,
                  opts: TokenLogprobOptions) -> np.ndarray:
    """(rows, RECORD_WIDTH) float64: this shard's record per row (module docstring, step 1)."""
    rows, width = z.shape
    keep = _local_keep(z, tau)
    lt, here, _, _ = _local_tokens(tokens, vocab_start, width, vocab_size, opts)
    rec = np.zeros((rows, RECORD_WIDTH))
    with np.errstate(all="ignore"):
        zk = np.where(keep, z, -np.inf)
        m = zk.max(axis=1) if width else np.full(rows, -np.inf)
        gap = zk - m[:, None]
        e = np.where(zk == -np.inf, 0.0, np.exp(gap))  # a shard with nothing kept sums to 0, not NaN
        rec[:, 0] = np.where(np.isnan(z).any(axis=1), np.nan, m)  # a NaN the mask dropped still poisons the row
        rec[:, 1] = e.sum(axis=1)
        rec[:, 2] = np.where(e > 0, e * gap, 0.0).sum(axis=1)
        rec[:, 2] = np.where(np.isnan(m), np.nan, rec[:, 2])
        if width:
            rec[:, 3] = np.where(here, zk[np.arange(rows), lt], 0.0)
        rec[:, 4] = here
    return rec


def merge_stats(gathered: np.ndarray, tokens: np.ndarray, vocab_size: int, opts: TokenLogprobOptions):
    """(logp, entropy, lse) per row from the (P, rows, RECORD_WIDTH) records, merged in rank order."""
    m, s, a, zt, here = (gathered[..., i] for i in range(RECORD_WIDTH))
    _, ignored, bad = split_tokens(tokens, vocab_size, opts)
    with np.errstate(all="ignore"):
        big = m.max(axis=0)
        weight = np.exp(m - big)
        weight = np.where(m == -np.inf, 0.0, weight)  # an empty shard adds nothing
        spread = np.where(s > 0, (m - big) * s, 0.0)
        total = (weight * s).sum(axis=0)
        moment = (weight * (a + spread)).sum(axis=0)
        log_total = np.log(total)
        lse = big + log_total
        entropy = log_total - moment / total
        logp = (zt * here).sum(axis=0) - lse
        # NaN, +inf or no finite class in the row (the merged max says so): NaN, as the reference.
        row_bad = ~np.isfinite(big)
        logp = np.where(row_bad | bad, np.nan, logp)
        entropy = np.where(row_bad, np.nan, entropy)
    return np.where(ignored, 0.0, logp), np.where(ignored, 0.0, entropy), lse


def local_grad(z: np.ndarray, dz_dx: Any, tau: np.ndarray | None, tokens: np.ndarray, vocab_start: int,
               vocab_size: int, opts: TokenLogprobOptions, merged: tuple[np.ndarray, np.ndarray, np.ndarray],
               grad_logp: np.ndarray, grad_entropy: np.ndarray | None) -> np.ndarray:
    """(rows, width) float64: d(sum grad_logp logp + sum grad_entropy H) / d local logits.

    ``merged``: (logp, entropy, lse) of ``merge_stats``, the same on every rank."""
    logp, entropy, lse = merged
    rows, width = z.shape
    keep = _local_keep(z, tau)
    lt, here, ignored, bad = _local_tokens(tokens, vocab_start, width, vocab_size, opts)
    with np.errstate(all="ignore"):
        q = np.where(keep, np.exp(z - lse[:, None]), 0.0)
        gl = grad_logp.reshape(rows, 1)
        grad = -gl * q
        if width:
            r = np.arange(rows)
            token_kept = here & keep[r, lt]
            grad[r, lt] += np.where(token_kept, gl[:, 0], 0.0)
        # a token kept by no shard: log p = -inf, no gradient from it on any rank
        grad = np.where(np.isneginf(logp)[:, None], 0.0, grad)
        if grad_entropy is not None:
            mean_z = (lse - entropy)[:, None]
            grad -= grad_entropy.reshape(rows, 1) * np.where(q > 0, q * (z - mean_z), 0.0)
        grad = grad * dz_dx
        grad = np.where((bad | ~np.isfinite(lse))[:, None], np.nan, grad)
        return np.where(ignored[:, None], 0.0, grad)
