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

    Multi-stage ids (residual quantizers, ``num_stages`` = S): ``update`` takes ids (..., S)
    and counts every stage's codebook separately; ``compute`` adds ``stage{k}/usage``,
    ``stage{k}/perplexity`` and ``stage{k}/dead`` per stage and reports the mean over stages
    as ``usage``, ``perplexity`` and ``dead``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, codebook_size: int, num_stages: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        shape = (codebook_size,) if num_stages is None else (num_stages, codebook_size)
        self.add_state("counts", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.last_counts: Tensor | None = None  # all-process counts of the last compute(), for plots

    def update(self, indices: Tensor) -> None:
        if self.num_stages is None:
            self.counts += self._bincount(indices.reshape(-1))
            return
        if indices.dim() == 0 or indices.shape[-1] > self.num_stages:
            raise ValueError(f"expected ids (..., s) with s <= {self.num_stages} stages, got {tuple(indices.shape)}")
        for k in range(indices.shape[-1]):
            self.counts[k] += self._bincount(indices[..., k].reshape(-1))

    def _bincount(self, ids: Tensor) -> Tensor:
        ids = ids[ids >= 0]
        if ids.numel() and int(ids.max()) >= self.codebook_size:
            raise ValueError(f"code id {int(ids.max())} out of range for a codebook of {self.codebook_size}")
        return torch.bincount(ids, minlength=self.codebook_size)

    def compute(self) -> dict[str, Tensor]:
        self.last_counts = self.counts.detach().cpu().clone()
        if self.num_stages is None:
            return _usage_stats(self.counts, self.codebook_size)
        stages = [_usage_stats(counts, self.codebook_size) for counts in self.counts]
        result = {name: torch.stack([s[name] for s in stages]).mean() for name in stages[0]}
        for k, stats in enumerate(stages):
            result.update({f"stage{k}/{name}": value for name, value in stats.items()})
        return result


def _usage_stats(counts: Tensor, codebook_size: int) -> dict[str, Tensor]:
    """usage, perplexity and dead codes of one codebook's counts (K,)."""
    p = counts.double() / counts.sum().clamp_min(1).double()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    used = (counts > 0).sum()
    return {
        "usage": (used.double() / codebook_size).float(),
        "perplexity": entropy.exp().float(),
        "dead": (codebook_size - used).float(),
    }
