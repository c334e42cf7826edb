"""Vector quantization with an exponential-moving-average codebook (VQ-VAE-2, SoundStream).

The codes are not trained by gradients: each training step moves them toward the
mean of the latents assigned to them. Counts and sums are taken by bincount and
index_add and summed over ranks before the update, so every rank holds the same
codebook. Only the commitment loss reaches the encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqkit.quantizers.distributed import all_reduce_sum
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import cluster_sums
from vqkit.quantizers.vq import VectorQuantizer, mean_squared_error


@register_quantizer("ema_vq")
class EMAVectorQuantizer(VectorQuantizer):
    """Nearest-code quantizer whose codebook follows an EMA of its assigned latents.

    Args:
        decay: EMA decay of the counts and sums (0.99 typical; audiocraft uses 0.8).
        eps: Laplace smoothing of the counts, so unused codes never divide by zero.
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2, the only loss term.
        **kwargs: everything ``VectorQuantizer`` takes except ``codebook_weight`` and
            ``swap_loss_weights``, which have no meaning without a learned codebook. Revived codes
            (any ``revival`` strategy) get their EMA statistics reset in the same step.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        decay: float = 0.99,
        eps: float = 1e-5,
        commit_weight: float = 0.25,
        **kwargs,
    ) -> None:
        for unused in ("codebook_weight", "swap_loss_weights"):
            if unused in kwargs:
                raise TypeError(f"ema_vq has no learned codebook, so {unused!r} does not apply; remove it.")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.eps = eps
        super().__init__(dim, codebook_size, commit_weight=commit_weight, **kwargs)

    def _init_codebook_storage(self) -> None:
        init = self._random_codes()
        self.register_buffer("embed", init.clone())
        self.register_buffer("embed_avg", init.clone())
        self.register_buffer("cluster_size", torch.ones(init.shape[0]))

    def _raw_codebook(self) -> Tensor:
        return self.embed

    @torch.no_grad()
    def replace_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Overwrite the codes ``rows`` (R,) with ``vectors`` (R, C) and restart their EMA statistics.

        The statistics restart at the new vectors with a mass of ``max(dead_code_threshold, 1)``, so the
        next update does not pull the codes back toward the stale means they had before.
        """
        mass = max(self.dead_code_threshold, 1.0)
        vectors = vectors.to(self.embed.dtype)
        self.embed[rows] = vectors
        self.embed_avg[rows] = vectors * mass
        self.cluster_size[rows] = mass
        self.code_usage[rows] = self.dead_code_threshold

    @torch.no_grad()
    def _update_codebook(self, z_code: Tensor, indices: Tensor, counts: Tensor) -> None:
        _, sums = cluster_sums(z_code, indices, self.codebook_size)
        all_reduce_sum(sums)  # ``counts`` arrive already summed over ranks
        self.cluster_size.lerp_(counts.to(self.cluster_size.dtype), 1.0 - self.decay)
        self.embed_avg.lerp_(sums.to(self.embed_avg.dtype), 1.0 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))

    def _weighted_losses(self, z_code: Tensor, codes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        commit = mean_squared_error(z_code, codes.detach())
        return self.commit_weight * commit, {"commit": commit.detach()}
