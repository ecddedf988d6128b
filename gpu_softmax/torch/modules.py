"""The loss modules of :mod:`gpu_softmax.torch`: thin ``torch.nn.Module`` forms of its functions."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks
from .functional import cross_entropy
from .linear import linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss"]


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
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.logit_softcap is not None:
            parts.append(f"logit_softcap={self.logit_softcap}")
        if self.inplace_backward:
            parts.append("inplace_backward=True")
        return ", ".join(parts)


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`linear_cross_entropy`: ``loss_fn(hidden, weight, target, bias=None)``.

    Example:
        >>> import torch, gpu_softmax.torch as gst
        >>> head = torch.nn.Linear(8, 100)
        >>> loss_fn = gst.LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(torch.randn(4, 8), head.weight, torch.tensor([1, 2, 3, 4]), head.bias)
        >>> loss.backward(); head.weight.grad.shape
        torch.Size([100, 8])
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 z_loss: float = 0.0, logit_softcap: float | None = None, chunk_size: int | None = None,
                 class_weight: Tensor | None = None) -> None:
        super().__init__()
        _checks.refuse_class_weight(class_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.logit_softcap = logit_softcap
        self.chunk_size = chunk_size

    def forward(self, hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None = None) -> Tensor:
        return linear_cross_entropy(
            hidden, weight, target, bias, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction, z_loss=self.z_loss, logit_softcap=self.logit_softcap,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        parts = [f"ignore_index={self.ignore_index}", f"reduction={self.reduction!r}"]
        for name in ("label_smoothing", "z_loss"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)}")
        for name in ("logit_softcap", "chunk_size"):
            if getattr(self, name) is not None:
                parts.append(f"{name}={getattr(self, name)}")
        return ", ".join(parts)
