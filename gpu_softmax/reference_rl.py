"""NumPy reference of the token log-prob family: the oracle of its kernels and bridges.

Everything in float64, rounded once to the output dtype. Per row x of the logits,
with the options of :class:`gpu_softmax.rl_options.TokenLogprobOptions`:

    z = cap * tanh(x / cap) / T           (z = x / T without a soft-cap)
    K = the kept set: top_k, then top_p, on z (everything without a mask)
    q_i = exp(z_i - lse_K(z))  for i in K, 0 elsewhere
    logp = log q_t = z_t - lse_K(z)       (-inf when t is not in K)
    H = -sum_K q_i log q_i = lse_K(z) - sum_K q_i z_i

and the backward, the mask held constant:

    d logp / d z_j = [j == t] - q_j
    d H / d z_j    = -q_j (z_j - sum_K q_i z_i)
    d z_j / d x_j  = (1 - tanh(x_j / cap)**2) / T      (1 / T without a soft-cap)

Special values follow the cross-entropy reference: a row holding NaN or +inf (before
the soft-cap, which maps +inf to cap), or entirely -inf, gives NaN log p, entropy
and gradient; a row whose token is ``ignore_index`` gives exactly 0 for all three
(its logits are not read); with ``validate=False`` an out-of-range token gives a
NaN log p and a NaN gradient row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _checks
from ._checks_rl import TokenLogprobArgs, check_token_logprobs, raise_bad_tokens
from .reference import _log_sum_exp_shifted
from .rl_options import TokenLogprobOptions

__all__ = ["token_logprobs", "token_logprobs_backward", "token_logprobs_checked",
           "token_logprobs_backward_checked", "scaled_logits", "kept_set", "top_p_kept_sorted", "RowStats", "split_tokens"]


def _rows_last(a: TokenLogprobArgs) -> np.ndarray:
    return np.moveaxis(np.asarray(a.logits), a.layout.axis, -1).reshape(-1, a.layout.cols).astype(np.float64)


def scaled_logits(x: np.ndarray, opts: TokenLogprobOptions) -> tuple[np.ndarray, Any]:
    """(z, dz/dx) for float64 logits x: the soft-cap first, then the temperature."""
    with np.errstate(all="ignore"):
        if opts.logit_softcap is None:
            return x / opts.temperature, 1.0 / opts.temperature
        th = np.tanh(x / opts.logit_softcap)
        return (opts.logit_softcap * th) / opts.temperature, (1.0 - th * th) / opts.temperature


def _top_k_mask(z: np.ndarray, k: int) -> np.ndarray:
    cols = z.shape[1]
    k = min(k, cols)
    kth = np.partition(z, cols - k, axis=1)[:, cols - k : cols - k + 1]
    return z >= kth  # ties with the k-th largest are kept whole


def top_p_kept_sorted(values: np.ndarray, q: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(order, kept): the stable descending order of each row's `values` (probabilities `q`),
    and in that order whether the mass strictly before a value's tie group is < top_p."""
    order = np.argsort(-values, axis=1, kind="stable")
    v_sorted = np.take_along_axis(values, order, axis=1)
    q_sorted = np.take_along_axis(q, order, axis=1)
    mass_before = np.zeros_like(q_sorted)
    mass_before[:, 1:] = np.cumsum(q_sorted, axis=1)[:, :-1]
    # A tie group weighs what comes before its first member: ties are kept or dropped whole.
    first = np.ones(v_sorted.shape, dtype=bool)
    first[:, 1:] = v_sorted[:, 1:] != v_sorted[:, :-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(v_sorted.shape[1]), 0), axis=1)
    return order, np.take_along_axis(mass_before, group_start, axis=1) < top_p


def _top_p_mask(z: np.ndarray, keep: np.ndarray, top_p: float) -> np.ndarray:
    """Of the classes `keep` holds, those whose strictly more probable classes weigh < top_p."""
    zk = np.where(keep, z, -np.inf)
    q = np.exp(zk - zk.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    order, kept_sorted = top_p_kept_sorted(zk, q, top_p)
    kept = np.empty_like(kept_sorted)
    np.put_along_axis(kept, order, kept_sorted, axis=1)
    return keep & kept


def kept_set(z: np.ndarray, opts: TokenLogprobOptions) -> np.ndarray:
    """(rows, C) bool: the classes the sampler's top_k / top_p mask keeps (all without one)."""
    keep = np.ones(z.shape, dtype=bool)
    with np.errstate(all="ignore"):
        if opts.top_k is not None:
            keep = _top_k_mask(z, opts.top_k)
        if opts.top_p is not None and opts.top_p < 1.0:  # top_p = 1 keeps every class, exactly
            keep = _top_p_mask(z, keep, opts.top_p)
    return keep


class RowStats:
    """The renormalised distribution over the kept set, per row, in float64."""

    def __init__(self, z: np.ndarray, keep: np.ndarray):
        with np.errstate(all="ignore"):
            zk = np.where(keep, z, -np.inf)
            m = zk.max(axis=1, keepdims=True)
            self.shifted = zk - m  # z - max over K; -inf outside K
            log_s = _log_sum_exp_shifted(self.shifted, 1)
            self.logq = self.shifted - log_s
            self.q = np.exp(self.logq)
            weighted = np.where(self.q > 0, self.q * self.shifted, 0.0)  # 0 * -inf is no term
            self.mean_shifted = weighted.sum(axis=1, keepdims=True)  # sum_K q_i (z_i - max)
            self.entropy = (log_s - self.mean_shifted)[:, 0]
            # NaN or +inf anywhere, or no finite class: the row's results are NaN.
            self.bad_row = ~np.isfinite(m[:, 0]) | np.isnan(z).any(axis=1)


def split_tokens(tokens: np.ndarray, classes: int, opts: TokenLogprobOptions):
    """(flat int64 tokens, ignored rows, out-of-range rows) of NumPy tokens against [0, classes).

    Out-of-range tokens raise (validate=True) or are marked (they index class 0)."""
    ignore = opts.ignore_index
    t = _checks.hard_targets_int64(np, np.asarray(tokens), classes, ignore)
    ignored = t == ignore
    bad = ~ignored & ((t < 0) | (t >= classes))
    if opts.validate and bad.any():
        raise_bad_tokens(int(bad.sum()), classes, ignore, int(np.asarray(tokens).reshape(-1)[np.flatnonzero(bad)[0]]))
    return np.where(ignored | bad, 0, t), ignored, bad


def _tokens(a: TokenLogprobArgs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return split_tokens(a.tokens, a.layout.cols, a.opts)


def _require_numpy(kind: str) -> None:
    if kind != "numpy":
        raise TypeError("gpu_softmax.reference_rl computes on NumPy arrays; for CuPy arrays call "
                        "gpu_softmax.token_logprobs")


def token_logprobs_checked(a: TokenLogprobArgs):
    """logp, or (logp, entropy) with return_entropy; the output shape, the accumulation dtype."""
    t, ignored, bad = _tokens(a)
    z, _ = scaled_logits(_rows_last(a), a.opts)
    st = RowStats(z, kept_set(z, a.opts))
    logp = st.logq[np.arange(t.size), t]
    logp = np.where(bad | st.bad_row, np.nan, logp)
    entropy = np.where(st.bad_row, np.nan, st.entropy)
    logp, entropy = (np.where(ignored, 0.0, v).reshape(a.out_shape).astype(a.out_dtype) for v in (logp, entropy))
    return (logp, entropy) if a.opts.return_entropy else logp


def _row_grad(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).reshape(-1, 1)


def token_logprobs_backward_checked(a: TokenLogprobArgs) -> np.ndarray:
    """d(sum grad_logp * logp + sum grad_entropy * entropy) / d logits, in logits' dtype."""
    t, ignored, bad = _tokens(a)
    z, dz_dx = scaled_logits(_rows_last(a), a.opts)
    st = RowStats(z, kept_set(z, a.opts))
    rows = np.arange(t.size)
    with np.errstate(all="ignore"):
        g_logp = _row_grad(a.grad_logp)
        # A token outside the kept set has log p = -inf whatever z is: no gradient from it.
        token_kept = np.isfinite(st.logq[rows, t])[:, None]
        grad = np.where(token_kept, -g_logp * st.q, 0.0)
        grad[rows, t] += np.where(token_kept[:, 0], g_logp[:, 0], 0.0)
        if a.grad_entropy is not None:
            centred = np.where(st.q > 0, st.q * (st.shifted - st.mean_shifted), 0.0)
            grad -= _row_grad(a.grad_entropy) * centred
        grad = grad * dz_dx
        grad = np.where((bad | st.bad_row)[:, None], np.nan, grad)
        grad = np.where(ignored[:, None], 0.0, grad)
    moved = np.moveaxis(np.asarray(a.logits), a.layout.axis, -1).shape
    with np.errstate(over="ignore"):
        return np.moveaxis(grad.reshape(moved), -1, a.layout.axis).astype(a.logits.dtype)


def token_logprobs(logits: np.ndarray, tokens: np.ndarray, *, axis: int = -1, **options: Any):
    """``gpu_softmax.token_logprobs`` for NumPy arrays."""
    a = check_token_logprobs(logits, tokens, axis=axis, **options)
    _require_numpy(a.kind)
    return token_logprobs_checked(a)


def token_logprobs_backward(logits: np.ndarray, tokens: np.ndarray, grad_logp: np.ndarray,
                            grad_entropy: np.ndarray | None = None, *, axis: int = -1, **options: Any) -> np.ndarray:
    """``gpu_softmax.token_logprobs_backward`` for NumPy arrays."""
    a = check_token_logprobs(logits, tokens, axis=axis, grad_logp=grad_logp, grad_entropy=grad_entropy,
                             backward=True, **options)
    _require_numpy(a.kind)
    return token_logprobs_backward_checked(a)
