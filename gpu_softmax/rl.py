"""Token log-probabilities and entropy for RL post-training: the public NumPy/CuPy API.

The arguments are checked once (:mod:`gpu_softmax._checks_rl`), then NumPy arrays go
to the float64 reference (:mod:`gpu_softmax.reference_rl`) and CuPy arrays to the
launchers of :mod:`gpu_softmax._cuda.token_logprobs` (imported on the first CuPy call,
so a NumPy-only install never imports them). The module is ``rl`` rather than
``token_logprobs``: the package exports a function of that name, which would hide it.
"""

from __future__ import annotations

from typing import Any

from . import reference_rl
from ._checks_rl import check_token_logprobs

__all__ = ["token_logprobs", "token_logprobs_backward"]


def _run(name: str, a):
    """Checked arguments `a` to the reference's `<name>_checked` (NumPy arrays) or the CuPy
    launcher `name` (its module is imported on the first CuPy call)."""
    if a.kind == "numpy":
        return getattr(reference_rl, f"{name}_checked")(a)
    from ._cuda import token_logprobs as launchers

    return getattr(launchers, name)(a)


def token_logprobs(
    logits: Any,
    tokens: Any,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int | None = None,
    top_p: float | None = None,
    return_entropy: bool = False,
    validate: bool = True,
    axis: int = -1,
) -> Any:
    """log p(token) under the sampling distribution, and optionally the entropy, per row.

    With ``z = logit_softcap * tanh(logits / logit_softcap) / temperature`` (no tanh
    without a cap) and K the classes the sampler's ``top_k`` / ``top_p`` mask keeps
    (every class without a mask), per row: ``logp = z_t - logsumexp_K(z)`` (-inf when
    the token is not in K) and ``entropy = logsumexp_K(z) - sum_K q_i z_i`` for the
    renormalised ``q = softmax_K(z)``. Rows whose token is ``ignore_index`` give 0.

    Args:
        logits: float16/float32/float64 array, classes along ``axis``.
        tokens: integer class indices of logits' shape without the class axis.
        temperature: > 0, the sampling temperature.
        logit_softcap: None, or a positive cap applied before the temperature.
        top_k: None, or keep the classes whose z is >= the k-th largest (ties whole).
        top_p: None, or in (0, 1]: of what top_k kept, keep a class when the mass of the
            classes strictly more probable than it is < top_p (ties whole). 1 keeps all.
        return_entropy: also return the entropy: ``(logp, entropy)``.
        validate: check tokens lie in [0, C) or equal ignore_index (ValueError);
            with False such a row gets a NaN log p.

    Returns:
        ``logp`` (or ``(logp, entropy)``) of the tokens' shape, float32 (float64 for
        float64 logits). Formulas and mask semantics: docs/rl.md.

    Example:
        >>> import numpy as np, gpu_softmax
        >>> logits = np.log(np.array([[0.5, 0.25, 0.25]]))
        >>> gpu_softmax.token_logprobs(logits, np.array([1]), top_k=2).round(4)   # ties at 0.25 kept whole
        array([-1.3863])
    """
    a = check_token_logprobs(
        logits, tokens, axis=axis, temperature=temperature, logit_softcap=logit_softcap, ignore_index=ignore_index,
        top_k=top_k, top_p=top_p, return_entropy=return_entropy, validate=validate,
    )
    return _run("token_logprobs", a)


def token_logprobs_backward(
    logits: Any,
    tokens: Any,
    grad_logp: Any,
    grad_entropy: Any = None,
    *,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int | None = None,
    top_p: float | None = None,
    return_entropy: bool = False,
    validate: bool = True,
    axis: int = -1,
) -> Any:
    """The gradient with respect to ``logits`` of ``sum(grad_logp * logp) + sum(grad_entropy * entropy)``.

    ``grad_logp`` (and ``grad_entropy``, or None when the entropy is not
    differentiated) have the tokens' shape. Per row, with the mask held constant:
    ``(grad_logp ([j == t] - q_j) - grad_entropy q_j (z_j - sum_K q_i z_i)) * dz_j/dx_j``,
    0 outside the kept set, 0 on ignored rows, no log p term when the token is not
    kept. Returned in logits' dtype. Options as :func:`token_logprobs`
    (``return_entropy`` is accepted and has no effect here).

    Example:
        >>> import numpy as np, gpu_softmax
        >>> gpu_softmax.token_logprobs_backward(np.zeros((1, 2)), np.array([0]), np.ones(1))
        array([[ 0.5, -0.5]])
    """
    a = check_token_logprobs(
        logits, tokens, axis=axis, grad_logp=grad_logp, grad_entropy=grad_entropy, backward=True,
        temperature=temperature, logit_softcap=logit_softcap, ignore_index=ignore_index, top_k=top_k, top_p=top_p,
        return_entropy=return_entropy, validate=validate,
    )
    return _run("token_logprobs_backward", a)
