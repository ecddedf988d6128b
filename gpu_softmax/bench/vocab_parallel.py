"""Vocabulary-parallel cross entropy: one rank's kernels on this one GPU against the one-GPU fused loss."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import numpy as np

import gpu_softmax as gs
from gpu_softmax import vocab_parallel as vp

from .cases import Row, itemsize, op_bytes
from .timing import time_gpu


def _row(impl: str, dtype: str, shape, ms: list[float], nbytes: int, copy, note: str = "",
         speedup: dict | None = None) -> dict:
    med = statistics.median(ms)
    q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [med] * 9
    gbps = nbytes / med / 1e6
    return asdict(Row("vocab_parallel_cross_entropy", impl, dtype, list(shape), med, q[0], q[-1], gbps,
                      100.0 * gbps / copy if copy else None, "cuda", note=note, bytes=nbytes, reps=len(ms),
                      speedup=speedup or {}))


def _one_rank(shard, t, vocab: int, ranks: int):
    """One rank's work: the statistics kernel, then the finishing kernel fed the records of
    all ranks (this rank's, repeated: the same bytes the all-gather would deliver)."""
    import cupy

    rec = vp.partial_stats(shard, t, 0, vocab, validate=False)
    gathered = cupy.broadcast_to(rec, (ranks,) + rec.shape)
    return vp.finish(shard, t, 0, vocab, cupy.ascontiguousarray(gathered), validate=False)


def vocab_parallel_rows(shapes: list[tuple[int, int]], ranks=(2, 4), dtype: str = "float32",
                        bandwidth: dict | None = None, reps: int = 20) -> list[dict]:
    """Per-rank compute of the vocabulary-parallel loss against the one-GPU fused loss.

    For each (N, V) and P, one rank's work on its (N, V/P) shard is timed on this one
    GPU. The collective itself is not included, since one GPU cannot time it; its
    payload is 20 bytes per row and rank (the note says so). The one-GPU row is
    ``cross_entropy_with_grad`` on the full (N, V) logits, in the same run.
    """
    import cupy

    rng = np.random.default_rng()
    copy = (bandwidth or {}).get("copy_gbps")
    out = []
    isz = itemsize(dtype)
    for n_rows, vocab in shapes:
        x = cupy.asarray(rng.standard_normal((n_rows, vocab), dtype=np.float32)).astype(dtype)
        t = cupy.asarray(rng.integers(0, vocab, size=n_rows))
        full_ms = time_gpu(lambda: gs.cross_entropy_with_grad(x, t, validate=False), [()], 3, reps).kernel
        full_bytes = op_bytes("cross_entropy_with_grad", n_rows, vocab, isz)
        out.append(_row("gpu_softmax (1 GPU, full V)", dtype, (n_rows, vocab), full_ms, full_bytes, copy))
        for p in ranks:
            width = -(-vocab // p)
            shard = cupy.ascontiguousarray(x[:, :width])
            ms = time_gpu(lambda: _one_rank(shard, t, vocab, p), [()], 3, reps).kernel
            # the shard read twice (statistics, then the gradient pass), the gradient written once
            nbytes = 3 * n_rows * width * isz
            out.append(_row(f"gpu_softmax (per rank, P={p})", dtype, (n_rows, width), ms, nbytes, copy,
                            note="per-rank kernels only; the all-gather of 20 B/row/rank is not timed",
                            speedup={"1 GPU, full V": statistics.median(full_ms) / statistics.median(ms)}))
        del x, t
    return out
