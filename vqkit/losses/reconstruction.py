"""Pixel/sample-space reconstruction terms, in the model's (normalized) input space."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vqkit.losses.base import LossInputs, LossTerm


def _pair(batch: LossInputs) -> tuple[Tensor, Tensor]:
    reconstruction, target = batch.output.reconstruction, batch.inputs
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ")
    return reconstruction.float(), target.float()


class L1(LossTerm):
    """Mean absolute error between the reconstruction and its (normalized) input."""

    def forward(self, batch: LossInputs) -> Tensor:
        return F.l1_loss(*_pair(batch))


class L2(LossTerm):
    """Mean squared error between the reconstruction and its (normalized) input."""

    def forward(self, batch: LossInputs) -> Tensor:
        return F.mse_loss(*_pair(batch))
