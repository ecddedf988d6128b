"""CUDA launchers of the token log-prob family (kernels: ``cuda_src/token_logprobs.cu``).

One block per row. The plan (kernel and block size) is a function of the row length
and the storage alone, never of the row count, and each block reduces a whole row
in an order fixed by the block size: a row's log p, entropy and gradient are
bitwise the same whatever batch it arrives in and at whatever position
(:func:`plan_for`; tests/emulator/run_token_logprobs.py checks it). The grid only
says how many rows run at once.

Forward: one pass over the logits without a mask; with ``top_k`` / ``top_p`` the
kept set's threshold is bisected on chip first (docs/rl.md, "Cost of the masked
forms"). It saves a (rows, 4) record per row (max, log-sum, mean, threshold) for the
backward, nothing of size rows x classes. Backward: one read of the logits and one
write of the gradient; without a record it runs the forward first.

Host synchronisation: none with ``validate=False``; ``validate=True`` counts bad
tokens on the device and reads that count (one host sync) before any kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .._checks_rl import TokenLogprobArgs, raise_bad_tokens
from . import device, kernels, launch
from .abi import NULL, cdiv
from .kernels import TLP_RECORD, tlp_bwd_name, tlp_fwd_name

ENTRY_POINTS = kernels.entry_points("token_logprobs")
FAMILY = "token_logprobs"
MAX_THREADS = kernels.TLP_BOUNDS[0]
MIN_THREADS = 32
SLOTS_PER_THREAD = 2  # the block size aims at this many 16-byte slots per thread and row
MAX_GRID = 1 << 20  # rows beyond this walk grid-stride (the results do not depend on it)
MAX_COLS = 2**31 - 64  # the kernels index a row with int


@dataclass(frozen=True)
class TlpPlan:
    kernel: str
    block: int


def block_threads(cols: int, storage: str) -> int:
    """Threads per block: a function of the row length (and storage) alone."""
    slots = cdiv(cols, kernels.VEC[storage])
    return min(MAX_THREADS, max(MIN_THREADS, launch.next_pow2(cdiv(slots, SLOTS_PER_THREAD))))


@lru_cache(maxsize=None)
def plan_for(cols: int, storage: str, direction: str, masked: bool = False) -> TlpPlan:
    """The launch of one direction ("fwd" | "bwd"); no row count in the key."""
    name = tlp_fwd_name(storage, masked) if direction == "fwd" else tlp_bwd_name(storage)
    return TlpPlan(name, block_threads(cols, storage))


def _grid(rows: int) -> int:
    return max(1, min(rows, MAX_GRID))


def _storage(a: TokenLogprobArgs, storage: str | None) -> str:
    st = launch.storage_of(a.logits.dtype, storage)
    if a.layout.cols > MAX_COLS:
        raise ValueError(f"token_logprobs on the GPU takes rows of at most {MAX_COLS} classes, got {a.layout.cols}")
    return st


def _tokens(a: TokenLogprobArgs):
    """Flat int64 tokens in row order; validate=True: the range check (one host read)."""
    cp = launch.cupy()
    t = cp.ascontiguousarray(a.tokens.reshape(-1)).astype(np.int64, copy=False)
    if a.opts.validate and t.size:
        cols, ignore = a.layout.cols, a.opts.ignore_index
        bad = (t != ignore) & ((t < 0) | (t >= cols))
        n_bad = int(bad.sum())
        if n_bad:
            raise_bad_tokens(n_bad, cols, ignore, int(t[bad][0]))
    return t


def _scalars(a: TokenLogprobArgs) -> dict:
    o = a.opts
    return {"ignore": o.ignore_index, "inv_t": 1.0 / o.temperature,
            "cap": 0.0 if o.logit_softcap is None else o.logit_softcap}


def _mask_scalars(a: TokenLogprobArgs) -> dict:
    o = a.opts
    top_p = 1.0 if o.top_p is None else o.top_p
    return {"top_k": 0 if o.top_k is None else o.top_k, "top_p": top_p}


def forward_stats(a: TokenLogprobArgs, storage: str | None = None, tokens=None):
    """(logp, entropy, record) per row in the accumulation dtype; logp and entropy
    flat (rows,), record (rows, 4)."""
    cp = launch.cupy()
    st = _storage(a, storage)
    acc = launch.acc_dtype(st)
    rows, cols = a.layout.rows, a.layout.cols
    logp = cp.empty(rows, dtype=acc)
    ent = cp.empty(rows, dtype=acc)
    rec = cp.empty((rows, TLP_RECORD), dtype=acc)
    t = _tokens(a) if tokens is None else tokens
    if rows == 0:
        return logp, ent, rec
    x = launch.rows_last(a.logits, a.layout)
    p = plan_for(cols, st, "fwd", a.opts.masked)
    args = kernels.ENTRIES[p.kernel].sig.pack(x=x, tok=t, logp=logp, ent=ent, rec=rec, rows=rows, cols=cols,
                                              **_scalars(a), **_mask_scalars(a))
    device.current().launch(FAMILY, p.kernel, _grid(rows), p.block, args)
    return logp, ent, rec


def token_logprobs(a: TokenLogprobArgs, storage: str | None = None):
    """``gpu_softmax.token_logprobs`` for CuPy arrays: logp, or (logp, entropy)."""
    logp, ent, _ = forward_stats(a, storage)
    shape = a.out_shape
    logp, ent = logp.reshape(shape), ent.reshape(shape)
    return (logp, ent) if a.opts.return_entropy else logp


def _row_vector(g, rows: int, acc):
    cp = launch.cupy()
    return cp.ascontiguousarray(g.reshape(rows)).astype(acc, copy=False)


def backward_rows(a: TokenLogprobArgs, storage: str | None = None, record=None, tokens=None):
    """The gradient as a C-contiguous (rows, cols) array in the logits' storage."""
    cp = launch.cupy()
    st = _storage(a, storage)
    acc = launch.acc_dtype(st)
    rows, cols = a.layout.rows, a.layout.cols
    t = _tokens(a) if tokens is None else tokens
    x = launch.rows_last(a.logits, a.layout)
    grad = cp.empty((rows, cols), dtype=x.dtype)
    if rows == 0:
        return grad
    if record is None:
        record = forward_stats(a, storage, tokens=t)[2]
    gl = _row_vector(a.grad_logp, rows, acc)
    ge = NULL if a.grad_entropy is None else _row_vector(a.grad_entropy, rows, acc)
    p = plan_for(cols, st, "bwd")
    args = kernels.ENTRIES[p.kernel].sig.pack(x=x, grad=grad, tok=t, rec=record, g_logp=gl, g_ent=ge, rows=rows,
                                              cols=cols, **_scalars(a))
    device.current().launch(FAMILY, p.kernel, _grid(rows), p.block, args)
    return grad


def token_logprobs_backward(a: TokenLogprobArgs, storage: str | None = None, record=None):
    """``gpu_softmax.token_logprobs_backward`` for CuPy arrays, in the logits' dtype and layout.

    `record`: the (rows, 4) record of :func:`forward_stats` for the same logits,
    tokens and options (saves the forward pass the backward otherwise runs)."""
    cp = launch.cupy()
    grad = backward_rows(a, storage, record)
    shape = tuple(a.logits.shape)
    axis = a.layout.axis
    moved = shape[:axis] + shape[axis + 1:] + (shape[axis],)
    return cp.moveaxis(grad.reshape(moved), -1, axis)
