"""Codebook usage over a whole split, by bincount, summed across processes."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Counts how often each code is chosen over everything passed to ``update``.

    ``compute`` returns:
        usage: fraction of codes chosen at least once.
        perplexity: exp(entropy) of the code histogram (K when perfectly uniform).
        dead: number of codes never chosen.

    Ids < 0 (masked positions) are ignored. Counts are int64 states reduced by sum,
    so under DDP the result covers the whole split, not one rank's shard.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, codebook_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.long), dist_reduce_fx="sum")
        self.last_counts: Tensor | None = None  # all-process counts of the last compute(), for plots

    def update(self, indices: Tensor) -> None:
        ids = indices.reshape(-1)
        ids = ids[ids >= 0]
        if ids.numel() and int(ids.max()) >= self.codebook_size:
            raise ValueError(f"code id {int(ids.max())} out of range for a codebook of {self.codebook_size}")
        self.counts += torch.bincount(ids, minlength=self.codebook_size)

    def compute(self) -> dict[str, Tensor]:
        self.last_counts = self.counts.detach().cpu().clone()
        counts = self.counts.double()
        p = counts / counts.sum().clamp_min(1.0)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        used = (self.counts > 0).sum()
        return {
            "usage": (used.double() / self.codebook_size).float(),
            "perplexity": entropy.exp().float(),
            "dead": (self.codebook_size - used).float(),
        }
