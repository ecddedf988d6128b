"""NumPy reference: the oracle every CUDA kernel is tested against.

Same functions and arguments as the top-level `gpu_softmax` API, for NumPy arrays.
Everything is computed in float64 and rounded once to the output dtype, so the
reference is as exact as float64 allows; the CUDA kernels accumulate in float32 for
float16/float32 input and are compared with this at a stated tolerance.

The formulas are those of the derivation the project grew from: for one row a,
    y_i = exp(a_i - max a) / sum_k exp(a_k - max a)
    dJ/da_j = y_j * sum_i t_i - t_j            (J = -sum_i t_i log y_i)
No C-by-C Jacobian is ever built: every temporary is at most the size of the input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import _checks
from ._checks import BackwardArgs, CrossEntropyArgs, SoftmaxArgs
from ._checks_linear import LinearCrossEntropyArgs, check_linear_cross_entropy
from .options import CEOptions

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "softmax_backward",
    "log_softmax_backward",
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy_with_grad",
]


def _require_numpy(kind: str) -> None:
    if kind != "numpy":
        raise TypeError(
            "gpu_softmax.reference computes on NumPy arrays; for CuPy arrays call the "
            "same function from gpu_softmax (which runs the CUDA kernels)"
        )


def _write(result: np.ndarray, out: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    # Rounding to float16 may overflow to -inf (log-probabilities below -65504):
    # that is the right answer, not a warning.
    with np.errstate(over="ignore"):
        if out is None:
            return result.astype(dtype, copy=False)
        out[...] = result
    return out


# ----------------------------------------------------------------------------------
# softmax family (checked-argument forms, shared with the top-level dispatcher)


def _row_max(xf: np.ndarray, axis: int) -> np.ndarray:
    # np.max propagates NaN, as torch does; an empty axis has max -inf.
    if xf.shape[axis] == 0:
        return np.full(xf.shape[:axis] + (1,) + xf.shape[axis + 1 :], -np.inf)
    return xf.max(axis=axis, keepdims=True)


def _log_sum_exp_shifted(z: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(z))) along `axis` for z = x - max(x), keepdims.

    The max element contributes exactly 1 to the sum, so when it dominates the sum
    is 1 + tiny, and log(1 + tiny) formed that way keeps only the digits of "tiny"
    that survive the addition (relative error ~1e-16 / tiny). Summing the others
    apart and taking log1p keeps them all: the oracle must be at least as exact as
    the kernels, which do the same.
    """
    at_max = z == 0
    rest = np.where(at_max, 0.0, np.exp(z)).sum(axis=axis, keepdims=True)
    return np.log1p(rest + (at_max.sum(axis=axis, keepdims=True) - 1))


def softmax_checked(a: SoftmaxArgs) -> np.ndarray:
    ax = a.layout.axis
    xf = a.x.astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(xf - _row_max(xf, ax))
        y = e / e.sum(axis=ax, keepdims=True)
    return _write(y, a.out, a.x.dtype)


def log_softmax_checked(a: SoftmaxArgs) -> np.ndarray:
    ax = a.layout.axis
    xf = a.x.astype(np.float64)
    with np.errstate(all="ignore"):
        z = xf - _row_max(xf, ax)
        y = z - _log_sum_exp_shifted(z, ax)
    return _write(y, a.out, a.x.dtype)


def logsumexp_checked(a: SoftmaxArgs) -> np.ndarray:
    ax = a.layout.axis
    xf = a.x.astype(np.float64)
    with np.errstate(all="ignore"):
        m = _row_max(xf, ax)
        # As torch.logsumexp and scipy: an infinite max shifts by 0, so a row of
        # -inf gives -inf and a row holding +inf gives +inf (not NaN).
        m = np.where(np.isinf(m), 0.0, m)
        lse = _log_sum_exp_shifted(xf - m, ax) + m
    return np.squeeze(lse, axis=ax).astype(_checks.result_dtype(a.x.dtype))


def softmax_backward_checked(a: BackwardArgs) -> np.ndarray:
    ax = a.layout.axis
    gy = a.grad_y.astype(np.float64)
    y = a.y.astype(np.float64)
    with np.errstate(all="ignore"):
        gx = y * (gy - (gy * y).sum(axis=ax, keepdims=True))
    return gx.astype(a.y.dtype)


def log_softmax_backward_checked(a: BackwardArgs) -> np.ndarray:
    ax = a.layout.axis
    gy = a.grad_y.astype(np.float64)
    y = a.y.astype(np.float64)
    with np.errstate(all="ignore"):
        gx = gy - np.exp(y) * gy.sum(axis=ax, keepdims=True)
    return gx.astype(a.y.dtype)


# ----------------------------------------------------------------------------------
# cross entropy


def _rows_last(x: np.ndarray, axis: int, cols: int) -> np.ndarray:
    """(rows, C) float64 view-or-copy with the class axis last."""
    if axis != x.ndim - 1:  # (moveaxis costs more than a tiny row's whole computation)
        x = np.moveaxis(x, axis, -1)
    return x.reshape(-1, cols).astype(np.float64)


def hard_target_check(a: CrossEntropyArgs, hint: str = _checks.VALIDATE_HINT) -> None:
    """validate=True for NumPy input: every target in [0, C) or == ignore_index."""
    if a.soft or not a.validate:
        return
    _checks.validate_targets(np, a.target, a.layout.cols, a.ignore_index, hint=hint)


def _cross_entropy_rows(a: CrossEntropyArgs, want_grad: bool, hint: str = _checks.VALIDATE_HINT):
    """Per-row terms, all float64.

    Returns (ce, zl, lse, valid, divisor, n_valid, grad_pieces) where the loss of
    row n is ce[n] + zl[n], mean reduction is sum(ce)/divisor + sum(zl)/n_valid,
    and grad_pieces = (p, q, qsum, dcap) gives the gradient of row n's loss:
        (p * qsum - q)            for the cross-entropy term, and
        2 * z_loss * lse * p      for the z-loss term,
    both multiplied by dcap (the softcap's derivative) when a softcap is on.
    """
    C = a.layout.cols
    x = _rows_last(a.logits, a.layout.axis, C)
    R = x.shape[0]
    eps = a.label_smoothing
    w = None if a.weight is None else a.weight.astype(np.float64)  # None: all ones

    with np.errstate(all="ignore"):
        if a.logit_softcap is not None:
            th = np.tanh(x / a.logit_softcap)
            xc = a.logit_softcap * th
            dcap = 1.0 - th * th
        else:
            xc, dcap = x, None
        m = xc.max(axis=1, keepdims=True)
        z = xc - m
        log_s = _log_sum_exp_shifted(z, 1)
        lp = z - log_s  # log_softmax of the (capped) logits
        lse = (m + log_s)[:, 0]
        p = np.exp(lp)

        if a.soft:
            t = _rows_last(a.target, a.layout.axis, C)
            q = t * (1.0 - eps) + eps / C
            if w is not None:
                q = w * q
            ce = -(q * lp).sum(axis=1)
            valid = np.ones(R, dtype=bool)
            bad = np.zeros(R, dtype=bool)
            divisor = float(R)
        else:
            t = _checks.hard_targets_int64(np, a.target, C, a.ignore_index)
            valid = t != a.ignore_index
            in_range = (t >= 0) & (t < C)
            bad = valid & ~in_range
            if a.validate:  # the count that validate=True raises on (the one error: _checks)
                n_bad = int(bad.sum())
                if n_bad:
                    example = int(a.target.reshape(-1)[np.flatnonzero(bad)[0]])
                    _checks.raise_bad_targets(n_bad, C, a.ignore_index, example, hint=hint)
            ok = valid & in_range
            tt = np.where(ok, t, 0)
            w_t = ok.astype(np.float64) if w is None else np.where(ok, w[tt], 0.0)
            rows = np.arange(R)
            ce = np.where(ok, -w_t * lp[rows, tt], 0.0)
            if eps > 0.0:
                # Only when smoothing is on, as in torch: a -inf logit makes this
                # term +inf, and 0 * inf must not turn an unsmoothed loss into NaN.
                smooth = np.where(ok, -(lp if w is None else lp * w).sum(axis=1), 0.0)
                ce = (1.0 - eps) * ce + (eps / C) * smooth
            divisor = float(w_t.sum())
            if divisor == 0.0:  # a mean over zero total target weight is NaN (torch's answer, smoothing or not)
                divisor = np.nan
            q = None
            if want_grad:
                q = np.zeros((R, C))
                q[rows[ok], tt[ok]] = (1.0 - eps) * w_t[ok]
                if eps > 0.0:
                    q[ok] += (eps / C) * (1.0 if w is None else w)
        zl = np.where(valid, a.z_loss * lse * lse, 0.0) if a.z_loss else np.zeros(R)
        n_valid = float(valid.sum())
        # validate=False: an out-of-range target poisons its row and the mean.
        if bad.any():
            ce = np.where(bad, np.nan, ce)
            divisor = np.nan

        pieces = None
        if want_grad:
            qsum = q.sum(axis=1, keepdims=True)
            pieces = (p, q, qsum, dcap, valid, bad)
    return ce, zl, lse, valid, divisor, n_valid, pieces


def _reduce(a: CrossEntropyArgs, ce, zl, divisor, n_valid):
    with np.errstate(all="ignore"):
        if a.reduction == "none":
            loss = (ce + zl).reshape(a.loss_shape)
        elif a.reduction == "sum":
            loss = np.asarray((ce + zl).sum())
        else:
            loss = np.asarray(ce.sum() / divisor + (zl.sum() / n_valid if a.z_loss else 0.0))
    return loss.astype(a.loss_dtype)


def cross_entropy_checked(a: CrossEntropyArgs, return_logsumexp: bool = False, *,
                          hint: str = _checks.VALIDATE_HINT):
    ce, zl, lse, _, divisor, n_valid, _ = _cross_entropy_rows(a, False, hint)
    loss = _reduce(a, ce, zl, divisor, n_valid)
    if return_logsumexp:
        return loss, lse.reshape(a.loss_shape).astype(a.loss_dtype)
    return loss


def cross_entropy_with_grad_checked(a: CrossEntropyArgs, return_logsumexp: bool = False, *,
                                    hint: str = _checks.VALIDATE_HINT):
    """`hint`: the bad-target error's advice (see _checks.raise_bad_targets)."""
    ce, zl, lse, valid, divisor, n_valid, pieces = _cross_entropy_rows(a, True, hint)
    loss = _reduce(a, ce, zl, divisor, n_valid)
    p, q, qsum, dcap, valid, bad = pieces
    g = np.asarray(a.grad_output, dtype=np.float64)
    with np.errstate(all="ignore"):
        if a.reduction == "none":
            g_rows = np.broadcast_to(g, a.loss_shape).reshape(-1, 1)
            ce_scale = zl_scale = g_rows
        elif a.reduction == "sum":
            ce_scale = zl_scale = g
        else:
            ce_scale = g / divisor
            zl_scale = g / n_valid
        grad = (p * qsum - q) * ce_scale
        if a.z_loss:
            grad = grad + (2.0 * a.z_loss) * (lse[:, None] * p) * zl_scale
        if dcap is not None:
            grad = grad * dcap
        # Ignored rows get an exact zero gradient (no read of their logits needed);
        # rows with an out-of-range target get NaN.
        if not valid.all():
            grad = np.where(valid[:, None], grad, 0.0)
        if bad.any():
            grad = np.where(bad[:, None], np.nan, grad)
    if a.layout.axis == a.logits.ndim - 1:
        grad = grad.reshape(a.logits.shape)
    else:
        moved = np.moveaxis(a.logits, a.layout.axis, -1).shape
        grad = np.moveaxis(grad.reshape(moved), -1, a.layout.axis)
    if a.inplace:
        a.logits[...] = grad
        grad_out = a.logits
    else:
        grad_out = grad.astype(a.logits.dtype)
    if return_logsumexp:
        return loss, grad_out, lse.reshape(a.loss_shape).astype(a.loss_dtype)
    return loss, grad_out


# ----------------------------------------------------------------------------------
# fused linear + cross entropy (the oracle: unchunked, float64 logits)


def linear_cross_entropy_with_grad_checked(a: LinearCrossEntropyArgs, want_grad: bool = True):
    """(loss, grad_hidden, grad_weight[, grad_bias]) from float64 logits built in full.

    The oracle of the chunked backends, not a memory saver: it holds the (N, V) logits
    in float64. Gradients are d(loss * grad_output)/d input in each input's dtype;
    with want_grad=False only the loss is returned.
    """
    n, v, out = a.rows, a.classes, a.out_features
    h = a.hidden.reshape(n, a.features).astype(np.float64)
    w = a.weight.reshape(a.weight_rows, a.features).astype(np.float64)
    logits = h @ w.T
    if a.bias is not None:
        logits += a.bias.reshape(-1).astype(np.float64)
    go = a.ce.grad_output
    rec = dataclasses.replace(
        a.ce, kind="numpy", logits=logits.reshape((n, v) + out),
        target=a.target.reshape(((n, v) if a.ce.soft else (n,)) + out), layout=_checks.row_layout((n, v) + out, 1),
        grad_output=go.reshape((n,) + out) if isinstance(go, np.ndarray) and go.ndim else go, inplace=True,
    )
    loss_dtype = _checks.result_dtype(a.hidden.dtype)
    if not want_grad:
        loss = cross_entropy_checked(rec)
        return loss.reshape(a.loss_shape if a.ce.reduction == "none" else ()).astype(loss_dtype)
    loss, g = cross_entropy_with_grad_checked(rec)
    loss = loss.reshape(a.loss_shape if a.ce.reduction == "none" else ()).astype(loss_dtype)
    g = g.reshape(n, a.weight_rows)
    grads = [loss, (g @ w).reshape(a.hidden.shape).astype(a.hidden.dtype),
             (g.T @ h).reshape(a.weight.shape).astype(a.weight.dtype)]
    if a.bias is not None:
        grads.append(g.sum(axis=0).reshape(a.bias.shape).astype(a.bias.dtype))
    return tuple(grads)


# ----------------------------------------------------------------------------------
# public NumPy API (same signatures as gpu_softmax.*)


def softmax(x: np.ndarray, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    a = _checks.check_softmax(x, axis, out)
    _require_numpy(a.kind)
    return softmax_checked(a)


def log_softmax(x: np.ndarray, axis: int = -1, *, out: np.ndarray | None = None) -> np.ndarray:
    a = _checks.check_softmax(x, axis, out)
    _require_numpy(a.kind)
    return log_softmax_checked(a)


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    a = _checks.check_softmax(x, axis)
    _require_numpy(a.kind)
    return logsumexp_checked(a)


def softmax_backward(grad_y: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    a = _checks.check_backward(grad_y, y, axis)
    _require_numpy(a.kind)
    return softmax_backward_checked(a)


def log_softmax_backward(grad_y: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    a = _checks.check_backward(grad_y, y, axis)
    _require_numpy(a.kind)
    return log_softmax_backward_checked(a)


def cross_entropy(
    logits: np.ndarray,
    target: np.ndarray,
    *,
    axis: int = -1,
    weight: np.ndarray | None = None,
    return_logsumexp: bool = False,
    **options: Any,
) -> Any:
    """``gpu_softmax.cross_entropy`` on NumPy arrays; ``options`` (ignore_index, label_smoothing,
    reduction, validate, z_loss, logit_softcap) and semantics as there."""
    opts = CEOptions.from_keywords(options, "cross_entropy")
    a = _checks.check_cross_entropy(logits, target, axis=axis, weight=weight, options=opts)
    _require_numpy(a.kind)
    return cross_entropy_checked(a, return_logsumexp)


def cross_entropy_with_grad(
    logits: np.ndarray,
    target: np.ndarray,
    *,
    axis: int = -1,
    weight: np.ndarray | None = None,
    grad_output: Any = 1.0,
    inplace: bool = False,
    return_logsumexp: bool = False,
    **options: Any,
) -> Any:
    """``gpu_softmax.cross_entropy_with_grad`` on NumPy arrays (options as :func:`cross_entropy`)."""
    opts = CEOptions.from_keywords(options, "cross_entropy_with_grad")
    a = _checks.check_cross_entropy(logits, target, axis=axis, weight=weight, grad_output=grad_output,
                                    inplace=inplace, options=opts)
    _require_numpy(a.kind)
    return cross_entropy_with_grad_checked(a, return_logsumexp)


def linear_cross_entropy_with_grad(
    hidden: np.ndarray,
    weight: np.ndarray,
    target: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    class_weight: np.ndarray | None = None,
    chunk_size: int | None = None,
    grad_output: Any = 1.0,
    grad_weight_acc: str = "float32",
    skip_ignored: bool = True,
    **options: Any,
) -> tuple:
    """``gpu_softmax.linear_cross_entropy_with_grad`` on NumPy arrays (options as :func:`cross_entropy`;
    `chunk_size`, `grad_weight_acc` and `skip_ignored` are checked and have no effect: the
    oracle builds the float64 logits in full)."""
    opts = CEOptions.from_keywords(options, "linear_cross_entropy_with_grad")
    a = check_linear_cross_entropy(hidden, weight, target, bias, chunk_size=chunk_size,
                                           grad_output=grad_output, class_weight=class_weight,
                                           grad_weight_acc=grad_weight_acc, skip_ignored=skip_ignored,
                                           options=opts)
    _require_numpy(a.kind)
    return linear_cross_entropy_with_grad_checked(a)
