"""Row chunks of the fused linear cross-entropy: how many rows of logits exist at once,
and what that costs in memory. One rule for every backend (CuPy, torch CUDA, torch CPU).

Each chunk of rows holds its (rows, V) logits in the input dtype; the cross-entropy
kernel overwrites them with their gradient, which the two gradient products read. The
chunk is the only temporary that grows with V and N together.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from . import _checks
from ._checks_linear import LinearCrossEntropyArgs

# Chunk buffer ceiling: large enough that the grad_weight product (k = chunk rows)
# stays compute-bound on tensor cores (k >= 2048 for bfloat16 at V = 128256, where
# each chunk also reads and writes the float32 accumulator), small enough for the
# memory goal. Never more than a quarter of the free device memory.
CHUNK_BUDGET_BYTES = 512 * 2**20
FREE_FRACTION = 4
ROW_ALIGN = 256  # tensor-core tile friendly chunk lengths when chunks are large


def chunk_rows(rows: int, classes: int, itemsize: int, free_bytes: int | None = None,
               budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk: the most whose logits fit the budget, then evened out over the chunks.

    Evening out keeps the last chunk from being a sliver (same number of chunks, equal
    sizes up to rounding to a multiple of 8).
    """
    cap = budget_bytes if free_bytes is None else min(budget_bytes, free_bytes // FREE_FRACTION)
    most = max(1, cap // (classes * itemsize))
    if most >= ROW_ALIGN:
        most -= most % ROW_ALIGN
    if rows <= most:
        return max(rows, 1)
    chunks = -(-rows // most)
    even = -(-rows // chunks)
    return min(most, -(-even // 8) * 8)


def extra_bytes(rows: int, classes: int, features: int, itemsize: int, acc_itemsize: int, chunk: int,
                bias: bool = False, grad_weight: bool = True, *, wide: bool = False, gathered: bool = True,
                grad_weight_acc: str = "float32") -> dict[str, int]:
    """Device memory the fused op needs beyond its inputs and its returned gradients.

    `accumulator` is the float32 (float64 for float64) grad_weight sum over chunks:
    for 16-bit weights it is extra, for float32/float64 weights (or grad_weight_acc
    "weight") it is the returned gradient itself (counted 0 here). `wide`: float16
    chunk logits held in float32 plus the float16 copy the products read. `gathered`:
    some rows are left out (ignored), so each chunk's hidden rows and their grad_hidden
    are gathered into (chunk, H) buffers, indexed by up to N int64 row numbers.
    `per_row` is the chunk's per-row statistics (loss, int64 target, scale).
    """
    chunk = min(chunk, max(rows, 1))
    own = grad_weight_acc == "weight" or acc_itemsize == itemsize
    acc = classes * features * acc_itemsize if grad_weight and not own else 0
    acc += classes * acc_itemsize if bias and not own else 0
    out = {
        "logits_chunk": chunk * classes * (itemsize + (acc_itemsize if wide else 0)),
        "accumulator": acc,
        "gathered": (2 * chunk * features * itemsize + rows * 8) if gathered else 0,
        "per_row": chunk * (acc_itemsize + 8 + itemsize),
    }
    out["total"] = sum(out.values())
    return out


def unfused_bytes(rows: int, classes: int, itemsize: int) -> int:
    """A lower bound on what `F.cross_entropy(F.linear(h, w).float(), t)` holds at once: the
    logits in the input dtype and the float32 (float64) log-probabilities autograd saves
    for the backward. (Its forward briefly holds a float32 copy as well.)"""
    return rows * classes * (itemsize + max(4, itemsize))


# ----------------------------------------------------------------------------------
# the chunk loop, one for every backend


@dataclasses.dataclass(frozen=True)
class Wants:
    """Which gradients to compute (a frozen weight skips its product and accumulator)."""

    hidden: bool = True
    weight: bool = True
    bias: bool = True

    @property
    def any(self) -> bool:
        return self.hidden or self.weight or self.bias


@dataclasses.dataclass(frozen=True)
class ChunkOps:
    """One backend's pieces of the loop (CuPy + cuBLAS + our kernel, or torch CPU + the reference).

    `xp` (numpy or cupy) holds the flat int64 targets (or (N, V) probabilities), the class
    weights and the row indices; `acc` the accumulation dtype. `allocate(wants, per_row_loss,
    zero_rows, zero_sums)` gives (loss, grad_hidden, grad_weight, grad_bias), the unwanted ones
    None (`zero_rows`: rows no chunk writes must read 0; `zero_sums`: no chunk runs).
    `rows(r)` the hidden rows `r` (a slice, or an index array: gathered); `logits(hc)` their
    ``hc @ weight.T (+ bias)``; `cross_entropy(rec, want_grad)` (loss part as the loss holds
    it, the gradient over the chunk's logits in the products' dtype, or None); the three
    products write or accumulate into the allocated gradients (`first`: nothing to add to).
    `capturing()`: whether the work is being captured into a CUDA graph (no host reads)."""

    kind: str
    xp: Any
    acc: Any
    allocate: Callable[[Wants, bool, bool, bool], tuple]
    rows: Callable[[Any], Any]
    logits: Callable[[Any], Any]
    cross_entropy: Callable[[Any, bool], tuple]
    grad_hidden: Callable[[Any, Any, Any], None]
    grad_weight: Callable[[Any, Any, bool, Any], None]
    grad_bias: Callable[[Any, int, bool, Any], None]
    capturing: Callable[[], bool] = lambda: False


def _hard_rows(ce, target, classes: int):
    """(valid, in range) masks of flat int64 class indices."""
    valid = target != ce.ignore_index
    return valid, (target >= 0) & (target < classes)


def mean_divisor(xp, ce, target, weight, rows: int, classes: int):
    """The mean's divisor as a float64 0-d array on `xp`'s device (no host read), as the reference:
    the loss-term count `rows` for probabilities; for class indices the summed target weights of the
    non-ignored rows (their count without class weights), NaN when a target is out of range."""
    if ce.soft:
        return xp.asarray(float(rows))
    valid, in_range = _hard_rows(ce, target, classes)
    ok = valid & in_range
    if weight is None:
        d = ok.sum(dtype=np.int64).astype(np.float64)  # exact past float32's 2**24
    else:
        w64 = weight.astype(np.float64)
        d = xp.where(ok, w64[xp.where(ok, target, 0)], 0.0).sum()
    return d + xp.where(valid & ~in_range, np.nan, 0.0).sum()


def kept_rows(xp, ce, target, weight, divisor, classes: int, rows: int):
    """Indices of the `rows` rows (each with target.size / rows loss terms) that can change the loss
    or a gradient, or None for all of them.

    Left out: ignored rows, and (with class weights, no smoothing and no z-loss, where
    such a row's loss and gradient are exactly 0) rows whose target has weight 0, unless
    every target weight is 0 (the mean is then NaN, its gradients too, as torch's).
    Counting them is a host read (``flatnonzero`` sizes its result)."""
    if ce.soft or rows == 0:
        return None
    valid, in_range = _hard_rows(ce, target, classes)
    keep = valid
    if weight is not None and not ce.label_smoothing and not ce.z_loss:
        zero = in_range & (weight[xp.where(in_range, target, 0)] == 0)
        keep = valid & ~(zero & (divisor > 0))
    idx = xp.flatnonzero(keep.reshape(rows, -1).any(axis=1))
    return None if int(idx.size) == rows else idx


def run_chunks(a: LinearCrossEntropyArgs, wants: Wants, ops: ChunkOps, target: Any, grad_output: Any,
               chunk: int) -> tuple:
    """(loss, grad_hidden, grad_weight, grad_bias) of ``a`` chunk by chunk; gradients of
    ``loss * grad_output`` (a scalar, or one value per row for reduction="none").

    `target`: flat int64 class indices (N * positions) or (N, V, *out_features) probabilities on
    `ops.xp`; ``a.ce.weight`` the class weights there (or None). With out_features (torch's
    K-dimensional loss) a row's (V * positions) logits are read as (V, *out_features), the
    classes along the second axis. Chunks reduce with "sum" (or "none"); the mean's
    divisor over ALL rows scales every chunk's gradient through grad_output and the summed
    loss once at the end. With class weights the z-loss's mean divides by the row count, not
    the weight sum: the chunks' z_loss is rescaled by their ratio (a host read of both)."""
    ce, n_rows, classes, xp, out = a.ce, a.rows, a.classes, ops.xp, a.out_features
    wants = dataclasses.replace(wants, bias=wants.bias and a.bias is not None)
    weight = ce.weight
    none = ce.reduction == "none"
    per_row_go = none and getattr(grad_output, "ndim", 0) > 0
    divisor = mean_divisor(xp, ce, target, weight, n_rows * a.positions, classes)
    capturing = ops.capturing()
    idx = kept_rows(xp, ce, target, weight, divisor, classes, n_rows) if a.skip_ignored and not capturing else None
    row_targets = target if ce.soft else target.reshape((n_rows,) + out)
    n_kept = n_rows if idx is None else int(idx.size)
    scale, z_loss = None, ce.z_loss
    if ce.reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):  # no rows: 1/0 = inf, the loss 0 * inf = NaN
            scale = (1.0 / divisor).astype(ops.acc)
        if z_loss and weight is not None and not ce.soft:
            if capturing:
                raise ValueError(
                    "z_loss with class weights and reduction='mean' reads the mean's two divisors on the host, "
                    "which a CUDA graph capture cannot; use reduction='sum' and divide, or capture without z_loss")
            n_valid = float((target != ce.ignore_index).sum())
            ratio = float(divisor) / n_valid if n_valid else 1.0
            z_loss = z_loss * ratio if 0 < ratio < np.inf else z_loss
    go = grad_output if scale is None else scale * grad_output
    loss, grad_h, grad_w, grad_b = ops.allocate(wants, none, idx is not None, n_kept == 0)
    row_loss = loss.reshape((n_rows,) + out) if none else None
    chunk_opts = ce.opts.replace(reduction="none" if none else "sum", validate=False, z_loss=z_loss)
    for start in range(0, n_kept, chunk):
        stop = min(n_kept, start + chunk)
        r = slice(start, stop) if idx is None else idx[start:stop]
        hc = ops.rows(r)
        shape = (stop - start, classes) + out
        rec = dataclasses.replace(
            ce, opts=chunk_opts, kind=ops.kind, logits=ops.logits(hc).reshape(shape), target=row_targets[r],
            weight=weight, layout=_checks.row_layout(shape, 1), inplace=wants.any,
            grad_output=go[r] if per_row_go else go,
        )
        part, grad = ops.cross_entropy(rec, wants.any)
        if grad is not None:
            grad = grad.reshape(stop - start, a.weight_rows)
        if none:
            row_loss[r] = part
        else:
            loss += part
        if wants.hidden:
            ops.grad_hidden(grad, r, grad_h)
        if wants.weight:
            ops.grad_weight(grad, hc, start == 0, grad_w)
        if wants.bias:
            ops.grad_bias(grad, stop - start, start == 0, grad_b)
    if scale is not None:
        with np.errstate(invalid="ignore"):  # all rows ignored: 0 * inf = NaN, as torch
            loss = loss * scale
    return loss, grad_h, grad_w, grad_b
