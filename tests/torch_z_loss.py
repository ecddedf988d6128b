"""The documented z_loss term added to a torch loss, written once for the torch oracles of the reference and of
gpu_softmax.torch. Imported only by test modules that have already skipped where torch is missing."""

from __future__ import annotations

import torch


def add_z_loss(loss, lse, valid, z_loss: float, reduction: str):
    """loss plus z_loss * lse^2 per valid row, reduced like loss; under mean the term is divided by the number of
    valid rows (not by the weight sum F.cross_entropy divides by), as gpu_softmax documents."""
    zl = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
    if reduction == "none":
        return loss + zl
    if reduction == "sum":
        return loss + zl.sum()
    return loss + zl.sum() / valid.sum()
