"""The loss modules of :mod:`gpu_softmax.torch`: thin ``torch.nn.Module`` forms of its functions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .functional import cross_entropy
from .linear import linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss"]

# The settings a module's repr shows only when they differ from these defaults (its __init__'s).
_CE_DEFAULTS = {"label_smoothing": 0.0, "z_loss": 0.0, "logit_softcap": None, "inplace_backward": False}
_LCE_DEFAULTS = {"label_smoothing": 0.0, "z_loss": 0.0, "logit_softcap": None, "chunk_size": None, "options": None,
                 "grad_weight_acc": "float32", "skip_ignored": True}


def _settings_repr(module: torch.nn.Module, shown: tuple[str, ...], defaults: dict[str, Any]) -> str:
    """``name=value`` of each attribute in `shown`, then of each in `defaults` not at its default."""
    names = list(shown) + [name for name, default in defaults.items()
                           if not _is_default(getattr(module, name), default)]
    return ", ".join(f"{name}={getattr(module, name)!r}" for name in names)


def _is_default(value: Any, default: Any) -> bool:
    # None compares by identity: an options object may define == its own way.
    return value is None if default is None else value == default


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` on our fused kernels; arguments as :func:`cross_entropy`.

    ``weight`` is a buffer (it moves with ``.to()``).

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> crit = gst.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = crit(torch.zeros(4, 10), torch.tensor([1, 2, 3, 4]))
        >>> round(loss.item(), 4)
        2.3026
    """

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0, logit_softcap: float | None = None,
                 inplace_backward: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.logit_softcap = logit_softcap
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            z_loss=self.z_loss, logit_softcap=self.logit_softcap, inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        return _settings_repr(self, ("ignore_index", "reduction"), _CE_DEFAULTS)


class LinearCrossEntropyLoss(torch.nn.Module):
    """``torch.nn.LinearCrossEntropyLoss`` on :func:`linear_cross_entropy`: it owns its linear
    layer (``self.linear``, a ``torch.nn.Linear(in_features, num_classes)``) and the class weights
    (the ``weight`` buffer), under torch's names, so a torch module's ``state_dict`` loads.

    Arguments as torch's (``out_features``: a K-dimensional loss, the linear layer then holds
    ``num_classes * prod(out_features)`` rows, as torch's; ``options`` as
    :func:`linear_cross_entropy` reads it) plus ours: ``z_loss``,
    ``logit_softcap``, ``chunk_size``, ``grad_weight_acc``, ``skip_ignored``.
    ``forward(input, target)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> loss_fn = gst.LinearCrossEntropyLoss(8, 100, bias=True, label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(4, 8), torch.tensor([1, 2, 3, 4]))
        >>> loss.backward(); loss_fn.linear.weight.grad.shape
        torch.Size([100, 8])
    """

    def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (),
                 bias: bool = False, device: Any = None, dtype: Any = None, reduction: str = "mean",
                 weight: Tensor | None = None, ignore_index: int | None = None, label_smoothing: float = 0.0,
                 options: Any = None, z_loss: float = 0.0, logit_softcap: float | None = None,
                 chunk_size: int | None = None, grad_weight_acc: str = "float32",
                 skip_ignored: bool = True) -> None:
        super().__init__()
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({num_classes},): one per class")
        self.register_buffer("weight", weight)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.options = options
        self.z_loss = z_loss
        self.logit_softcap = logit_softcap
        self.chunk_size = chunk_size
        self.grad_weight_acc = grad_weight_acc
        self.skip_ignored = skip_ignored
        rows = math.prod(self.out_features, start=num_classes)
        self.linear = torch.nn.Linear(in_features, rows, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        shape = (self.num_classes,) + self.out_features
        bias = None if self.linear.bias is None else self.linear.bias.reshape(shape)
        return linear_cross_entropy(
            input, self.linear.weight.reshape(shape + (self.linear.in_features,)), target, linear_bias=bias,
            weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            z_loss=self.z_loss, logit_softcap=self.logit_softcap, chunk_size=self.chunk_size,
            grad_weight_acc=self.grad_weight_acc, skip_ignored=self.skip_ignored, options=self.options,
        )

    def extra_repr(self) -> str:
        layer = (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                 f"out_features={self.out_features}, bias={self.linear.bias is not None}")
        return f"{layer}, {_settings_repr(self, ('reduction', 'ignore_index'), _LCE_DEFAULTS)}"
