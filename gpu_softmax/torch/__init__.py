"""PyTorch drop-in for gpu_softmax: ``cross_entropy``, ``CrossEntropyLoss``, ``softmax``,
``log_softmax`` and ``logsumexp`` on torch tensors, with autograd.

On CUDA tensors every op runs our CUDA kernels (``gpu_softmax._cuda``); on CPU tensors
the same ops compute through the NumPy reference (``gpu_softmax.reference``), so the
whole module is testable without a GPU. Results follow ``torch.nn.functional``:
shapes, dtypes, options and gradients.

How it works:

- **Operators.** Each op is a ``torch.library.custom_op`` (namespace ``gpu_softmax``)
  with a fake (meta) implementation and an autograd formula registered with
  ``register_autograd``, so ``torch.compile`` traces through it without graph breaks
  and a training step can be captured in a CUDA graph.
- **Fused cross entropy.** The forward runs the fused loss+gradient kernel once
  (``cross_entropy_with_grad`` with ``grad_output=1``, the logits read once and the
  gradient written once) and saves the gradient. The backward scales that buffer in
  place and hands it on: on CUDA the scale kernel reads ``grad_output`` on the device
  and returns at once when it is 1, so ``loss.backward()`` touches no N x C memory (a
  second backward through the same loss then raises); on CPU a scalar 1 returns the
  saved buffer and anything else a scaled copy. When the logits do not need a
  gradient, only the loss is computed. Regimes and memory: docs/cross_entropy_kernels.md.
- **Zero copy, streams** (:mod:`gpu_softmax.torch._bridge`, shared with
  :mod:`gpu_softmax.torch.parallel`). CUDA tensors go to CuPy through DLPack (no host
  round trip); launches run on PyTorch's current stream of the tensor's device, and
  every buffer the launchers allocate comes from PyTorch's caching allocator on that
  stream (so CUDA graph capture puts them in the graph's private pool). Results come
  back through DLPack.
- **bfloat16.** CuPy has no bfloat16 type: bf16 tensors are handed to the kernels as
  16-bit words (``tensor.view(torch.int16)`` then DLPack, read as ``uint16``) and the
  kernels convert, accumulating in float32. bf16 soft targets and weights are
  converted to float32 (small, or the same size as the logits for soft targets). On
  the CPU, bf16 goes through float32 NumPy and back.
- **No host sync.** On CUDA, hard targets are not range-checked on the host
  (``validate=False``): an out-of-range target gives a NaN loss, never a bad access.
  (PyTorch raises a device-side assert there.) On CPU the reference validates and
  raises ``ValueError``. The mean's divisor is computed on the device.
- **CUDA graphs.** Run a step before capturing (as PyTorch requires anyway): the
  first call on a device compiles the kernels and caches occupancy queries.
- **inplace_backward=True** writes the gradient over the logits through a mutating
  custom op (the version counter moves on, so autograd raises "modified by an
  inplace operation" if anything saved the old values), inside an
  ``autograd.Function`` that marks the logits dirty (not possible for views, where
  the version counter alone guards) and scales the gradient in place in backward
  (the same device-decided scale).
  A leaf that requires grad (or a view of one) is refused with a message. Using the overwritten tensor
  afterwards in a differentiable way raises in eager mode. Under ``torch.compile``
  such a use cannot be detected, so there ``inplace_backward=True`` takes the
  out-of-place path (same loss and gradient, without the memory saving). Logits
  whose elements share memory (``expand()``, ``as_strided()``) are refused.
- **torch.func**: ``vmap`` works (torch's per-sample fallback); ``grad``/``vjp``/
  ``jacrev``/``jvp``/``jacfwd`` raise ``NotImplementedError`` naming the transform.
- **Argument checks** are those of :mod:`gpu_softmax._checks` (same error texts as the
  NumPy/CuPy API), run on (shape, dtype) descriptions of the tensors (bfloat16 is
  described as float16); an accepted cross-entropy call is remembered by its
  description, so the operator's own check (needed under torch.compile) costs a
  dictionary lookup. Only checks that are about torch itself (a non-tensor argument,
  tensors on different devices, gradients we do not provide) live in the bridge.

Differences from ``torch.nn.functional.cross_entropy`` (documented, not fought):
ignored rows get an exact 0 gradient (torch gives NaN when an ignored row's logits
hold NaN); no gradient flows to soft targets or to ``weight`` (asking for one raises);
no double backward; the deprecated ``size_average``/``reduce`` arguments are absent.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ModuleNotFoundError as exc:  # the bridge's one hard requirement, said plainly
    raise ModuleNotFoundError(
        "gpu_softmax.torch needs PyTorch (torch >= 2.4), which is not installed: "
        'pip install "torch>=2.4" (or, in the checkout, pip install -e ".[torch]"); '
        "the NumPy/CuPy API, gpu_softmax, works without it",
        name="torch",
    ) from exc

from . import _autograd  # noqa: F401  (registers the operators' autograd formulas)
from .functional import cross_entropy, log_softmax, logsumexp, softmax
from .linear import linear_cross_entropy
from .modules import CrossEntropyLoss, LinearCrossEntropyLoss
from .parallel import vocab_parallel_cross_entropy
from .rl import linear_token_logprobs, token_logprobs, vocab_parallel_token_logprobs

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "softmax",
    "log_softmax",
    "logsumexp",
    "vocab_parallel_cross_entropy",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "token_logprobs",
    "linear_token_logprobs",
    "vocab_parallel_token_logprobs",
]
