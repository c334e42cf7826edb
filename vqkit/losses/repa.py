"""Representation alignment (REPA) of tokens to frozen pretrained features.

An MLP maps each token z_q (B, N, D) to the feature width; the loss is the negative
cosine similarity to the frozen encoder's patch features, averaged over tokens. When
the token count N differs from the patch count P (1-D tokenizers: 32-128 tokens), the
patch features are average-pooled along the sequence to N; for 2-D token grids with
N = h*w they are resized on the grid (``align="pool"``). ``align="repeat"`` is SoftVQ-VAE's: each token's
projection is compared with P/N consecutive patch features (raster order; P must be a multiple of N).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.layers.feature_encoder import FrozenFeatureEncoder
from vqkit.losses.base import LossInputs, LossTerm


class RepresentationAlignment(LossTerm):
    """The REPA term: -mean cos(MLP(z_q), features(images)) over tokens.

    Args:
        token_dim: width of the tokens.
        feature_encoder: the frozen encoder giving the target features.
        hidden_dim: width of the MLP's hidden layers (SoftVQ-VAE: 1024).
        align: ``"pool"`` (features brought to the token count) or ``"repeat"`` (each token stands for P/N
            consecutive patches, SoftVQ-VAE's ``repa_align: repeat``).
        weight, warmup_steps: see ``LossTerm`` (SoftVQ-VAE: 0.1). The frozen encoder is kept out of
            checkpoints; only the projector is trained and stored.
    """

    frozen_networks = ("feature_encoder",)  # rebuilt from its weights file: not stored in checkpoints

    def __init__(self, token_dim: int, feature_encoder: FrozenFeatureEncoder, hidden_dim: int = 512,
                 weight: float = 0.1, warmup_steps: int = 0, align: str = "pool") -> None:
        super().__init__(weight, warmup_steps)
        if align not in ("pool", "repeat"):
            raise ValueError(f"REPA align must be 'pool' or 'repeat', got {align!r}")
        self.align = align
        self.feature_encoder = feature_encoder
        self.projector = nn.Sequential(
            nn.Linear(token_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, feature_encoder.feature_dim),
        )

    @staticmethod
    def match_count(features: Tensor, n: int) -> Tensor:
        """Features (B, P, F) -> (B, n, F): grid resize when both are squares, else pooling along the sequence."""
        p = features.shape[1]
        if p == n:
            return features
        side_p, side_n = math.isqrt(p), math.isqrt(n)
        if side_p * side_p == p and side_n * side_n == n:
            grid = features.transpose(1, 2).reshape(features.shape[0], -1, side_p, side_p)
            grid = F.interpolate(grid, size=(side_n, side_n), mode="bilinear", antialias=side_n < side_p)
            return grid.flatten(2).transpose(1, 2)
        return F.adaptive_avg_pool1d(features.transpose(1, 2), n).transpose(1, 2)

    def forward(self, batch: LossInputs) -> Tensor:
        return self.alignment(batch.output.quantized.z_q, batch.data)

    def alignment(self, tokens: Tensor, images: Tensor) -> Tensor:
        """Tokens (B, N, D) and images in [0, 1] (B, 3, H, W) -> scalar loss in [-1, 1]."""
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            features = self.feature_encoder(images)
            pred = self.projector(tokens.float())
            if self.align == "repeat":
                p, n = features.shape[1], tokens.shape[1]
                if p % n:
                    raise ValueError(
                        f"REPA align='repeat' needs the feature count ({p}) to be a multiple of the token count ({n}); "
                        "change the teacher's image/patch size or use align=pool"
                    )
                return -F.cosine_similarity(pred.repeat_interleave(p // n, dim=1), features.float(), dim=-1).mean()
            target = self.match_count(features, tokens.shape[1])
            return -F.cosine_similarity(pred, target.float(), dim=-1).mean()
