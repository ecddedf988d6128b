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
from ._checks import LinearCrossEntropyArgs

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
                bias: bool = False, grad_weight: bool = True) -> dict[str, int]:
    """Device memory the fused op needs beyond its inputs and its returned gradients.

    `accumulator` is the float32 (float64 for float64) grad_weight sum over chunks:
    for 16-bit weights it is extra, for float32/float64 weights it becomes the
    returned gradient itself (counted 0 here). `per_row` is the chunk's per-row
    statistics (loss, int64 target, scale) and the bias-gradient ones vector.
    """
    chunk = min(chunk, max(rows, 1))
    acc = classes * features * acc_itemsize if grad_weight and acc_itemsize != itemsize else 0
    acc += classes * acc_itemsize if bias else 0
    out = {
        "logits_chunk": chunk * classes * itemsize,
        "accumulator": acc,
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

    `allocate(wants, per_row_loss)` gives (loss, grad_hidden, grad_weight, grad_bias), the
    unwanted ones None; `mean_scale(target)` 1 / (non-ignored rows) in whatever form the
    backend scales by (a device scalar on the GPU: no sync); `logits(start, stop)` the rows'
    ``hidden @ weight.T (+ bias)``; `cross_entropy(rec, want_grad)` (loss part as the loss
    holds it, the gradient over the chunk's logits or None); the three products write or
    accumulate into the allocated gradients (`first`: the first chunk, nothing to add to)."""

    kind: str
    allocate: Callable[[Wants, bool], tuple]
    mean_scale: Callable[[Any], Any]
    logits: Callable[[int, int], Any]
    cross_entropy: Callable[[Any, bool], tuple]
    grad_hidden: Callable[[Any, int, int, Any], None]
    grad_weight: Callable[[Any, int, int, bool, Any], None]
    grad_bias: Callable[[Any, int, int, bool, Any], None]


def run_chunks(a: LinearCrossEntropyArgs, wants: Wants, ops: ChunkOps, target: Any, grad_output: Any,
               chunk: int) -> tuple:
    """(loss, grad_hidden, grad_weight, grad_bias) of ``a`` chunk by chunk; gradients of
    ``loss * grad_output`` (a scalar, or one value per row for reduction="none").

    Chunks reduce with "sum" (or "none"); the mean's divisor over ALL rows scales every
    chunk's gradient through grad_output and the summed loss once at the end."""
    ce, n_rows, classes = a.ce, a.rows, a.classes
    wants = dataclasses.replace(wants, bias=wants.bias and a.bias is not None)
    none = ce.reduction == "none"
    per_row_go = none and getattr(grad_output, "ndim", 0) > 0
    scale = ops.mean_scale(target) if ce.reduction == "mean" else None
    go = grad_output if scale is None else scale * grad_output
    loss, grad_h, grad_w, grad_b = ops.allocate(wants, none)
    chunk_opts = ce.opts.replace(reduction="none" if none else "sum", validate=False)
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        rec = dataclasses.replace(
            ce, opts=chunk_opts, kind=ops.kind, logits=ops.logits(start, stop), target=target[start:stop],
            layout=_checks.row_layout((stop - start, classes), 1), inplace=wants.any,
            grad_output=go[start:stop] if per_row_go else go,
        )
        part, grad = ops.cross_entropy(rec, wants.any)
        if none:
            loss[start:stop] = part
        else:
            loss += part
        if wants.hidden:
            ops.grad_hidden(grad, start, stop, grad_h)
        if wants.weight:
            ops.grad_weight(grad, start, stop, start == 0, grad_w)
        if wants.bias:
            ops.grad_bias(grad, start, stop, start == 0, grad_b)
    if scale is not None:
        with np.errstate(invalid="ignore"):  # all rows ignored: 0 * inf = NaN, as torch
            loss = loss * scale
    return loss, grad_h, grad_w, grad_b
