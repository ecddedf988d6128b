"""CUDA launcher for the fused linear + cross-entropy: the LM-head loss and its three
gradients without the (N, V) logits ever existing.

Rows are processed in chunks (`gpu_softmax._chunking.chunk_rows`). Per chunk, on CuPy's
current stream:

1. ``logits = hidden_chunk @ weight.T (+ bias)`` into one reused (chunk, V) buffer, by
   cuBLAS (``gemmEx``, float32 compute: tensor cores for 16-bit inputs);
2. our fused cross-entropy kernel (`gpu_softmax._cuda.cross_entropy`) writes the chunk's
   losses and overwrites the logits IN PLACE with their gradient, scaled by the mean's
   divisor (reduced once over all rows, on the device) and ``grad_output``;
3. ``grad_hidden[chunk] = grad_logits @ weight`` (written in place, in the input dtype);
4. ``grad_weight += grad_logits.T @ hidden_chunk`` into a float32 (float64) accumulator;
5. ``grad_bias += grad_logits.T @ ones`` (a cuBLAS product too: bfloat16 words have no
   CuPy dtype to sum in).

Fixed chunking and a fixed order of products: deterministic for a given chunk size. No
host synchronisation with ``validate=False`` (``validate=True`` reads one scalar, the
count of bad targets, before anything is computed).

cuBLAS is column-major; a C-contiguous (r, c) array is the column-major (c, r) matrix
with leading dimension c, so each row-major product ``C = A @ B`` is issued as
``C^T = B^T A^T``. The leading-dimension arithmetic is checked on the CPU by
tests/test_linear_cross_entropy.py, which runs this loop with NumPy standing in for
CuPy and a column-major GEMM emulator standing in for cuBLAS.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import _checks, _chunking
from .._chunking import Wants
from .._checks_linear import LinearCrossEntropyArgs
from . import cross_entropy as ce_launch
from . import launch

# cudaDataType / cublasComputeType_t / cublasOperation_t / cublasGemmAlgo_t values.
CUDA_TYPE = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 14}
COMPUTE_32F, COMPUTE_64F = 68, 70
OP_N, OP_T = 0, 1
GEMM_DEFAULT = -1
BF16_ONE = 0x3F80  # 1.0 as a bfloat16 word


def _xp():
    import cupy

    return cupy


def _free_bytes() -> int:
    import cupy

    return int(cupy.cuda.runtime.memGetInfo()[0]) + int(cupy.get_default_memory_pool().free_bytes())


def _capturing() -> bool:
    """Whether CuPy's current stream is being captured into a CUDA graph (no host reads then)."""
    import cupy

    try:
        return bool(cupy.cuda.runtime.streamIsCapturing(cupy.cuda.get_current_stream().ptr))
    except cupy.cuda.runtime.CUDARuntimeError:  # the legacy stream while a global capture runs: read nothing
        return True


def _gemm(trans_a: int, trans_b: int, m: int, n: int, k: int, a, lda: int, b, ldb: int, c, ldc: int,
          beta: float, storage: str) -> None:
    """Column-major ``C = op(A) op(B) + beta C`` by cublasGemmEx (alpha = 1).

    A and B hold `storage` data; C holds `storage` data or the accumulation dtype.
    With beta == 0, C is not read. Empty products never reach cuBLAS (which refuses a
    leading dimension of 0): k == 0 is ``C = beta C`` (C, then, is exactly the matrix).
    """
    if m == 0 or n == 0:
        return
    if k == 0:
        if beta == 0:
            c[...] = 0
        return
    _cublas_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, beta, storage)


def _cublas_gemm(trans_a: int, trans_b: int, m: int, n: int, k: int, a, lda: int, b, ldb: int, c, ldc: int,
                 beta: float, storage: str) -> None:
    from cupy.cuda import device
    from cupy_backends.cuda.libs import cublas

    acc = launch.acc_dtype(storage)
    c_type = CUDA_TYPE[storage] if c.dtype == a.dtype else CUDA_TYPE[acc.name]
    compute = COMPUTE_64F if storage == "float64" else COMPUTE_32F
    alpha_h, beta_h = np.array(1.0, dtype=acc), np.array(beta, dtype=acc)
    handle = device.get_cublas_handle()
    host = getattr(cublas, "CUBLAS_POINTER_MODE_HOST", 0)
    if cublas.getPointerMode(handle) != host:  # alpha and beta live on the host
        cublas.setPointerMode(handle, host)
    cublas.gemmEx(handle, trans_a, trans_b, m, n, k, alpha_h.ctypes.data,
                  a.data.ptr, CUDA_TYPE[storage], lda, b.data.ptr, CUDA_TYPE[storage], ldb,
                  beta_h.ctypes.data, c.data.ptr, c_type, ldc, compute, GEMM_DEFAULT)


def run(a: LinearCrossEntropyArgs, wants: Wants = Wants(), *, storage: str | None = None,
        free_bytes: int | None = None):
    """(loss, grad_hidden, grad_weight_acc, grad_bias_acc); gradients not wanted are None.

    Gradients are d(loss * a.ce.grad_output)/d input. grad_hidden has hidden's shape and
    dtype; the weight and bias gradients are the float32 (float64) accumulators, or with
    ``a.grad_weight_acc == "weight"`` sums in the weight's own storage: the caller casts
    them (bfloat16 has no CuPy dtype). The loss is float32 (float64).

    float16 chunk logits are made and read in float32 (the kernel's accumulation dtype):
    a float16 product can overflow where the float64 reference's loss is finite; their
    gradient (bounded by the scale) is rounded to float16 for the two gradient products.
    """
    xp = _xp()
    st = launch.storage_of(a.hidden.dtype, storage)
    acc = launch.acc_dtype(st)
    # `classes` below: the weight's rows as a (V * positions, H) matrix, the logits' columns
    n_rows, feats, classes = a.rows, a.features, a.weight_rows
    if a.ce.soft:
        t = xp.ascontiguousarray(a.target).reshape((n_rows, a.classes) + a.out_features)
    else:
        t = _checks.hard_targets_int64(xp, a.target, a.classes, a.ce.ignore_index)
        if a.ce.validate:
            _checks.validate_targets(xp, t, a.classes, a.ce.ignore_index)  # the one host read of validate=True
    h = xp.ascontiguousarray(a.hidden).reshape(n_rows, feats)
    w = xp.ascontiguousarray(a.weight).reshape(classes, feats)
    b = None if a.bias is None else xp.ascontiguousarray(a.bias).reshape(classes)
    cw = None if a.ce.weight is None else xp.ascontiguousarray(a.ce.weight, dtype=acc)
    go = a.ce.grad_output
    if getattr(go, "ndim", 0) > 0:
        go = xp.ascontiguousarray(go, dtype=acc).reshape((n_rows,) + a.out_features)
    wide = st == "float16"  # chunk logits in float32, see above
    chunk = a.chunk_size or _chunking.chunk_rows(
        n_rows, classes, h.itemsize + (acc.itemsize if wide else 0),
        _free_bytes() if free_bytes is None else free_bytes)
    rows_max = min(chunk, max(n_rows, 1))
    buf = xp.empty((rows_max, classes), dtype=acc if wide else h.dtype)
    gbuf = xp.empty((rows_max, classes), dtype=h.dtype) if wide and wants.any else None
    hbuf = hgrad = None  # gathered rows and their grad_hidden, allocated at the first gather
    ones = xp.full(rows_max, BF16_ONE if st == "bfloat16" else 1, dtype=h.dtype) if b is not None else None
    sum_dtype = h.dtype if a.grad_weight_acc == "weight" else acc

    def allocate(wants: Wants, per_row: bool, zero_rows: bool, zero_sums: bool):
        rows_alloc = xp.zeros if zero_rows else xp.empty
        sums = xp.zeros if zero_sums else xp.empty  # the first chunk's products overwrite (beta 0)
        grads = (rows_alloc((n_rows, feats), dtype=h.dtype) if wants.hidden else None,
                 sums((classes, feats), dtype=sum_dtype) if wants.weight else None,
                 sums(classes, dtype=sum_dtype) if wants.bias else None)
        return (rows_alloc(n_rows * a.positions, dtype=acc) if per_row else xp.zeros((), dtype=acc),) + grads

    def rows(r):
        nonlocal hbuf
        if isinstance(r, slice):
            return h[r]
        if hbuf is None:
            hbuf = xp.empty((rows_max, feats), dtype=h.dtype)
        out = hbuf[: r.size]
        xp.take(h, r, axis=0, out=out)
        return out

    def logits(hc):
        out = buf[: hc.shape[0]]
        if b is not None:
            out[...] = b
        # logits^T (V, rows) = W^T^T (W is col-major (H, V)) @ hc^T (col-major (H, rows))
        _gemm(OP_T, OP_N, classes, hc.shape[0], feats, w, feats, hc, feats, out, classes,
              1.0 if b is not None else 0.0, st)
        return out

    def cross_entropy(rec, want_grad: bool):
        ce_storage = None if wide else storage
        if not want_grad:
            return ce_launch.cross_entropy(rec, storage=ce_storage), None
        part, grad = ce_launch.cross_entropy_with_grad(rec, storage=ce_storage)
        if wide:
            narrow = gbuf[: grad.shape[0]]
            narrow[...] = grad.reshape(narrow.shape)
            grad = narrow
        return part, grad

    def grad_hidden(grad, r, out) -> None:
        nonlocal hgrad
        m = grad.shape[0]
        if isinstance(r, slice):
            target_rows = out[r]
        else:
            if hgrad is None:
                hgrad = xp.empty((rows_max, feats), dtype=h.dtype)
            target_rows = hgrad[:m]
        # grad_h^T (H, rows) = W^T (col-major (H, V)) @ grad^T (col-major (V, rows))
        _gemm(OP_N, OP_N, feats, m, classes, w, feats, grad, classes, target_rows, feats, 0.0, st)
        if not isinstance(r, slice):
            out[r] = target_rows

    def grad_weight(grad, hc, first: bool, out) -> None:
        # grad_w^T (H, V) += hc^T (col-major (H, rows)) @ grad (grad^T is col-major (V, rows))
        _gemm(OP_N, OP_T, feats, classes, hc.shape[0], hc, feats, grad, classes, out, feats,
              0.0 if first else 1.0, st)

    def grad_bias(grad, m: int, first: bool, out) -> None:
        # grad_b (V, 1) += grad^T (col-major (V, rows)) @ ones (rows, 1)
        _gemm(OP_N, OP_N, classes, 1, m, grad, classes, ones[:m], m, out, classes, 0.0 if first else 1.0, st)

    ops = _chunking.ChunkOps("cupy", xp, acc, allocate, rows, logits, cross_entropy, grad_hidden, grad_weight,
                             grad_bias, _capturing)
    a = dataclasses.replace(a, ce=dataclasses.replace(a.ce, weight=cw))
    loss, grad_h, grad_w, grad_b = _chunking.run_chunks(a, wants, ops, t, go, chunk)
    return (loss.reshape(a.loss_shape) if a.ce.reduction == "none" else loss,
            None if grad_h is None else grad_h.reshape(a.hidden.shape), grad_w, grad_b)


def linear_cross_entropy_with_grad(a: LinearCrossEntropyArgs, *, storage: str | None = None) -> tuple:
    """The public CuPy form: (loss, grad_hidden, grad_weight[, grad_bias]) in the inputs' dtypes."""
    loss, gh, gw, gb = run(a, storage=storage)
    out = [loss, gh, gw.reshape(a.weight.shape).astype(a.weight.dtype, copy=False)]
    if a.bias is not None:
        out.append(gb.reshape(a.bias.shape).astype(a.bias.dtype, copy=False))
    return tuple(out)
