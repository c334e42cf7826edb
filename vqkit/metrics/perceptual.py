"""Mean LPIPS over a whole split, summed across processes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from vqkit.losses.perceptual import LPIPS


class LPIPSMetric(Metric):
    """Mean LPIPS (v0.1, VGG16) between reconstructions and targets over everything passed to ``update``.

    The sum of distances (float64) and the number of images are states reduced by sum, so under DDP the
    mean covers the whole split.

    Args:
        weights_path: LPIPS safetensors file; None uses the installed asset (see ``vqkit.tools.assets``).
        option: the option named in the error messages as the one setting ``weights_path`` (see ``LPIPS``).
        **kwargs: ``torchmetrics.Metric`` options.

    Raises:
        FileNotFoundError: the weights file is missing (the message says how to install it).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, weights_path: str | Path | None = None, option: str | None = "weights_path",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.lpips = LPIPS(weights_path, option)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch: ``preds`` and ``target`` are images (B, 3, H, W) in [0, 1]."""
        with torch.no_grad():
            distances = self.lpips(preds * 2 - 1, target * 2 - 1)
        self.total += distances.double().sum()
        self.count += distances.numel()

    def compute(self) -> Tensor:
        """Mean distance (float32 scalar); NaN before any update."""
        return (self.total / self.count).float()
