"""Pixel/sample-space reconstruction loss with per-term weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReconstructionLoss(nn.Module):
    """Weighted sum of L1 and L2 between a reconstruction and its target.

    A term whose weight is 0 is still computed and logged, but not optimized.

    Args:
        l1: weight of the mean absolute error.
        l2: weight of the mean squared error.
    """

    def __init__(self, l1: float = 1.0, l2: float = 0.0) -> None:
        super().__init__()
        if l1 < 0 or l2 < 0:
            raise ValueError(f"loss weights must be >= 0, got l1={l1}, l2={l2}")
        self.weights = {"l1": l1, "l2": l2}

    def forward(self, reconstruction: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if reconstruction.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ")
        reconstruction, target = reconstruction.float(), target.float()
        terms = {"l1": F.l1_loss(reconstruction, target), "l2": F.mse_loss(reconstruction, target)}
        total = torch.stack([w * terms[k] for k, w in self.weights.items()]).sum()
        return total, {k: v.detach() for k, v in terms.items()}
