"""Per-channel mean and std of latent tokens over a split (the scaling a latent diffusion model needs)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class LatentStatistics(Metric):
    """Running float64 sums of z_q and z_q^2 per channel, summed across processes.

    ``compute()`` returns per-channel ``mean``/``std`` lists, the scalar ``global_mean``/
    ``global_std`` over all channels, ``scale_factor`` = 1 / global_std (to bring the
    latents to unit variance) and the number of tokens seen.
    """

    full_state_update = False

    def __init__(self, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.add_state("total", default=torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", default=torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count_images", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, z_q: Tensor, mask: Tensor | None = None) -> None:
        """``z_q`` (B, N, D); ``mask`` (B, N) bool keeps only real tokens."""
        flat = z_q.detach().double()[mask] if mask is not None else z_q.detach().double().reshape(-1, self.dim)
        self.total += flat.sum(0)
        self.total_sq += flat.pow(2).sum(0)
        self.tokens += flat.shape[0]
        self.count_images += z_q.shape[0]

    def compute(self) -> dict[str, object]:
        n = self.tokens.clamp_min(1.0)
        mean = self.total / n
        var = (self.total_sq / n - mean.pow(2)).clamp_min(0.0)
        global_mean = self.total.sum() / (n * self.dim)
        global_var = (self.total_sq.sum() / (n * self.dim) - global_mean.pow(2)).clamp_min(0.0)
        global_std = float(global_var.sqrt())
        return {
            "mean": mean.tolist(),
            "std": var.sqrt().tolist(),
            "global_mean": float(global_mean),
            "global_std": global_std,
            "scale_factor": 1.0 / global_std if global_std > 0 else None,
            "tokens": int(self.tokens),
        }
