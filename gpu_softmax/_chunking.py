"""Row chunks of the fused linear cross-entropy: how many rows of logits exist at once,
and what that costs in memory. One rule for every backend (CuPy, torch CUDA, torch CPU).

Each chunk of rows holds its (rows, V) logits in the input dtype; the cross-entropy
kernel overwrites them with their gradient, which the two gradient products read. The
chunk is the only temporary that grows with V and N together.
"""

from __future__ import annotations

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
