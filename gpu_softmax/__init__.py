"""gpu_softmax: hand-written CUDA kernels for softmax, log-softmax, logsumexp and fused
softmax cross-entropy, with a NumPy reference implementation of the same API.

Every function takes NumPy arrays (computed by :mod:`gpu_softmax.reference` on the
CPU) or CuPy arrays (computed by the CUDA kernels in ``cuda_src/``); the result lives
where the input lives. Arguments are checked once, before anything runs, by the same
code for both backends.
"""

from __future__ import annotations

from typing import Any

from . import _checks, _checks_linear, reference
from .options import CEOptions
from .rl import token_logprobs, token_logprobs_backward

__version__ = "0.1.0"

# The ops are those the reference offers (it mirrors this API), the RL ops, and the reference itself.
__all__ = [*reference.__all__, "token_logprobs", "token_logprobs_backward", "reference", "backend_info"]


_launchers: dict[str, Any] = {}


def _launcher(name: str):
    """The CUDA launcher of public function `name`: the CuPy launch modules are imported on
    the first CuPy call (a NumPy-only install never imports them), then one look-up per call."""
    if not _launchers:
        from ._cuda import cross_entropy, linear_cross_entropy, softmax

        _launchers.update({
            "softmax": softmax.softmax,
            "log_softmax": softmax.log_softmax,
            "logsumexp": softmax.logsumexp,
            "softmax_backward": softmax.softmax_backward,
            "log_softmax_backward": softmax.log_softmax_backward,
            "cross_entropy": cross_entropy.cross_entropy,
            "cross_entropy_with_grad": cross_entropy.cross_entropy_with_grad,
            "linear_cross_entropy_with_grad": linear_cross_entropy.linear_cross_entropy_with_grad,
        })
    return _launchers[name]


def _run(name: str, a, *args):
    """Checked arguments `a` to the computation of public function `name`: the reference's `<name>_checked`
    for NumPy arrays, the CUDA launcher for CuPy arrays."""
    if a.kind == "numpy":
        return getattr(reference, f"{name}_checked")(a, *args)
    return _launcher(name)(a, *args)


def softmax(x: Any, axis: int = -1, *, out: Any = None) -> Any:
    """Softmax along ``axis``: ``y_i = exp(x_i - max x) / sum_k exp(x_k - max x)``.

    Args:
        x: float16, float32 or float64 NumPy or CuPy array.
        axis: the axis to normalise over (any axis; the last is fastest on the GPU).
        out: optional array of x's shape and dtype to write into; may be ``x`` itself.

    Returns:
        An array of x's shape and dtype (``out`` when given). Rows holding NaN or
        +inf, and rows that are entirely -inf, come out NaN, as in PyTorch.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> gpu_softmax.softmax(np.array([[1.0, 2.0, 3.0]])).round(4)
        array([[0.09  , 0.2447, 0.6652]])
    """
    a = _checks.check_softmax(x, axis, out)
    return _run("softmax", a)


def log_softmax(x: Any, axis: int = -1, *, out: Any = None) -> Any:
    """Log-softmax along ``axis``: ``x_i - max x - log sum_k exp(x_k - max x)``.

    Args and return as :func:`softmax`.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> gpu_softmax.log_softmax(np.array([0.0, 0.0], dtype=np.float32))
        array([-0.6931472, -0.6931472], dtype=float32)
    """
    a = _checks.check_softmax(x, axis, out)
    return _run("log_softmax", a)


def logsumexp(x: Any, axis: int = -1) -> Any:
    """``log sum_k exp(x_k)`` along ``axis``, computed stably.

    Returns the per-row statistic in the accumulation dtype (float32 for float16 and
    float32 input, float64 for float64), with ``axis`` removed. As torch.logsumexp:
    a row of -inf gives -inf, a row holding +inf gives +inf, NaN gives NaN.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> float(gpu_softmax.logsumexp(np.log(np.array([1.0, 2.0, 3.0]))))
        1.791759469228055
    """
    a = _checks.check_softmax(x, axis)
    return _run("logsumexp", a)


def softmax_backward(grad_y: Any, y: Any, axis: int = -1) -> Any:
    """Gradient of softmax: with ``y = softmax(x)``, ``grad_x = y * (grad_y - sum(grad_y * y))``.

    That is the Jacobian ``dy_i/dx_j = y_i (delta_ij - y_j)`` contracted with grad_y,
    without building it. ``grad_y`` and ``y`` must share shape and dtype.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> y = gpu_softmax.softmax(np.array([1.0, 2.0]))
        >>> gpu_softmax.softmax_backward(np.ones(2), y)   # softmax sums to 1: no gradient
        array([0., 0.])
    """
    a = _checks.check_backward(grad_y, y, axis)
    return _run("softmax_backward", a)


def log_softmax_backward(grad_y: Any, y: Any, axis: int = -1) -> Any:
    """Gradient of log-softmax: with ``y = log_softmax(x)``, ``grad_x = grad_y - exp(y) * sum(grad_y)``.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> y = gpu_softmax.log_softmax(np.array([0.0, 0.0]))
        >>> gpu_softmax.log_softmax_backward(np.array([1.0, 0.0]), y)
        array([ 0.5, -0.5])
    """
    a = _checks.check_backward(grad_y, y, axis)
    return _run("log_softmax_backward", a)


def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    validate: bool = True,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_logsumexp: bool = False,
) -> Any:
    """Softmax cross-entropy with exactly ``torch.nn.functional.cross_entropy``'s semantics.

    Per row n (the class axis is ``axis``), with ``p = softmax(logits_n)`` and class
    weights ``w`` (all ones by default):

    - hard labels (integer ``target`` of logits' shape without the class axis):
      ``loss_n = (1-e) * (-w[t] log p[t]) + (e/C) * sum_c(-w_c log p_c)``, 0 where
      ``t == ignore_index``;
    - soft labels (float ``target`` of logits' shape, class probabilities):
      ``loss_n = -sum_c w_c t'_c log p_c`` with ``t' = t(1-e) + e/C``;
      ignore_index does not apply;
    - ``z_loss`` > 0 adds ``z_loss * logsumexp_n**2`` per non-ignored row (PaLM);
    - ``logit_softcap`` applies ``cap * tanh(x / cap)`` to the logits first.

    ``reduction="mean"`` divides the cross-entropy terms by the sum of ``w[t]`` over
    non-ignored rows (the number of rows for soft labels; NaN when every row is
    ignored, as in PyTorch) and the z-loss terms by the number of non-ignored rows;
    ``"sum"`` adds; ``"none"`` returns the per-row losses. Losses are float32 (float64
    for float64 logits).

    Args:
        logits: float16/float32/float64 array with the classes along ``axis``.
        target: integer class indices, or float class probabilities.
        weight: optional float array of shape (C,).
        validate: check hard targets lie in [0, C) or equal ignore_index, raising
            ValueError otherwise. On the GPU that check costs one device reduction and
            one scalar read (a host sync); ``validate=False`` skips it, and a row with
            an out-of-range target then gets a NaN loss (never an out-of-bounds read).
        return_logsumexp: also return each row's logsumexp of the (capped) logits, as
            the loss used it: ``(loss, lse)``. No second pass over the logits.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
        >>> round(float(gpu_softmax.cross_entropy(logits, np.array([0, 2]))), 4)
        0.6691
    """
    opts = CEOptions.checked(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                             validate=validate, z_loss=z_loss, logit_softcap=logit_softcap)
    a = _checks.check_cross_entropy(logits, target, axis=axis, weight=weight, options=opts)
    return _run("cross_entropy", a, return_logsumexp)


def cross_entropy_with_grad(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    validate: bool = True,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    grad_output: Any = 1.0,
    inplace: bool = False,
    return_logsumexp: bool = False,
) -> Any:
    """Loss and its gradient in one pass: ``(loss, grad_logits)``.

    ``grad_logits`` is d(loss * grad_output)/d logits: per row, ``p * sum(q) - q`` with
    ``q`` the (weighted, smoothed) target distribution (``p - onehot(t)`` in the plain
    case), plus ``2 z_loss lse p``, scaled by ``grad_output`` and the mean's divisor,
    times the softcap's derivative when a cap is on. Ignored rows get exactly 0.
    The gradient has logits' dtype. ``grad_output`` is a scalar, or for
    ``reduction="none"`` also an array of the loss's shape.

    With ``inplace=True`` the gradient overwrites ``logits`` and the returned gradient
    is that same array: peak memory for a 128k vocabulary halves.
    Other arguments as :func:`cross_entropy`; ``return_logsumexp=True`` returns
    ``(loss, grad_logits, lse)``.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> loss, grad = gpu_softmax.cross_entropy_with_grad(np.zeros((1, 2)), np.array([1]))
        >>> grad
        array([[ 0.5, -0.5]])
    """
    opts = CEOptions.checked(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                             validate=validate, z_loss=z_loss, logit_softcap=logit_softcap)
    a = _checks.check_cross_entropy(logits, target, axis=axis, weight=weight, grad_output=grad_output,
                                    inplace=inplace, options=opts)
    return _run("cross_entropy_with_grad", a, return_logsumexp)


def linear_cross_entropy_with_grad(
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any = None,
    *,
    class_weight: Any = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    validate: bool = True,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    grad_output: Any = 1.0,
    grad_weight_acc: str = "float32",
    skip_ignored: bool = True,
) -> tuple:
    """``cross_entropy(hidden @ weight.T + bias, target)`` and its gradients, without the logits.

    The language-model head's loss: ``hidden`` is (..., H), ``weight`` (V, H) as in
    ``torch.nn.Linear``, ``bias`` (V,) or None, ``target`` integer class indices of
    hidden's shape without the last dimension, or class probabilities (..., V);
    ``class_weight`` (V,) per-class weights (torch's ``weight``). Returns ``(loss,
    grad_hidden, grad_weight)``, plus ``grad_bias`` when a bias is given: the gradients of
    ``loss * grad_output`` in each input's dtype. Options and semantics are those of
    :func:`cross_entropy` (torch's F.cross_entropy on the logits, with our z_loss/softcap).

    On CuPy arrays the rows are processed ``chunk_size`` at a time (chosen from N, V
    and the free memory when None): cuBLAS makes a chunk's logits (float32 for float16
    inputs), our fused kernel overwrites them with their gradient, two more products give
    the chunk's share of ``grad_hidden`` and ``grad_weight``. ``grad_weight_acc="float32"``
    sums grad_weight/grad_bias over chunks in float32 (float64 for float64), ``"weight"`` in
    the weight's dtype. ``skip_ignored=True`` leaves ignored rows (and, without smoothing
    or z-loss, rows of class weight 0) out of every product: counting them is one host
    read. NumPy arrays go to the reference, which builds the float64 logits in full (the
    tests' oracle). See docs/linear_cross_entropy.md.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> h = np.array([[1.0, 0.0], [0.0, 1.0]]); w = np.eye(2)
        >>> loss, gh, gw = gpu_softmax.linear_cross_entropy_with_grad(h, w, np.array([0, 1]))
        >>> round(float(loss), 4)
        0.3133
    """
    opts = CEOptions.checked(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
                             validate=validate, z_loss=z_loss, logit_softcap=logit_softcap)
    a = _checks_linear.check_linear_cross_entropy(hidden, weight, target, bias, chunk_size=chunk_size,
                                           grad_output=grad_output, class_weight=class_weight,
                                           grad_weight_acc=grad_weight_acc, skip_ignored=skip_ignored, options=opts)
    return _run("linear_cross_entropy_with_grad", a)


def backend_info() -> dict:
    """What this machine can run: CuPy, the GPU, NVRTC, and where the kernels are."""
    from ._cuda import info

    return info.backend_info()
