"""FlowPrior: a small DiT/SiT-style transformer that generates continuous tokens (SoftVQ) by flow matching.

Training draws t ~ U(0, 1) and noise x0 ~ N(0, I) per item, forms x_t = t x1 + (1 - t) x0 between the noise and
the (standardised) data tokens x1, and regresses the velocity x1 - x0 (rectified flow / SiT's linear path).
Sampling integrates dx/dt = v(x, t) from noise at t = 0 to t = 1 with Euler steps; ``cfg_scale`` s mixes the
conditional and unconditional velocities as u + s (c - u). Blocks are conditioned on the time and the class by
adaLN-Zero (scale, shift and a gate per sub-block, the gates starting at zero so every block starts as identity).
Tokens are standardised per channel with the training set's mean and std (``set_normalization``), kept as buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.prior.ar import class_labels


def time_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (B, dim) of times t (B,) in [0, 1] (scaled by 1000 as diffusion timesteps are)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], -1)


class AdaLNBlock(nn.Module):
    """Bidirectional attention + MLP, each modulated by (shift, scale, gate) computed from the condition."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"prior.dim ({dim}) must be a multiple of prior.num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond)[:, None].chunk(6, -1)
        b, n, d = x.shape
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = x + gate1 * self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FlowPrior(nn.Module):
    """Class-conditional flow-matching prior over token sequences (B, seq_len, token_dim).

    Args:
        token_dim: width D of the tokenizer's continuous tokens.
        seq_len: tokens per item.
        num_classes: labels in [0, num_classes); 0 for an unconditional prior.
        dim, depth, num_heads, mlp_ratio: the transformer.
    """

    input_key = "tokens"

    def __init__(self, token_dim: int, seq_len: int, num_classes: int = 0, dim: int = 256, depth: int = 6,
                 num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if token_dim < 1 or seq_len < 1 or num_classes < 0:
            raise ValueError(f"need token_dim >= 1, seq_len >= 1, num_classes >= 0; got {token_dim}, {seq_len}, "
                             f"{num_classes}")
        self.token_dim, self.seq_len, self.num_classes, self.dim = token_dim, seq_len, num_classes, dim
        self.register_buffer("mean", torch.zeros(token_dim))
        self.register_buffer("std", torch.ones(token_dim))
        self.inp = nn.Linear(token_dim, dim)
        self.positions = nn.Parameter(torch.zeros(seq_len, dim))
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.classes = nn.Embedding(num_classes + 1, dim)  # index num_classes: no class
        self.blocks = nn.ModuleList(AdaLNBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, token_dim)
        nn.init.trunc_normal_(self.positions, std=0.02)
        nn.init.normal_(self.classes.weight, std=0.02)
        for layer in (self.final_modulation[1], self.out):  # the velocity starts at zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Per-channel statistics (D,) of the training tokens; the prior works on standardised tokens."""
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.clamp_min(1e-6).to(self.std))

    def _labels(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        return class_labels(labels, batch, self.num_classes, device)

    def velocity(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """Standardised tokens x (B, L, D) at times t (B,) -> the velocity (B, L, D)."""
        cond = self.time(time_embedding(t, self.dim)) + self.classes(self._labels(labels, x.shape[0], x.device))
        h = self.inp(x) + self.positions
        for block in self.blocks:
            h = block(h, cond)
        shift, scale = self.final_modulation(cond)[:, None].chunk(2, -1)
        return self.out(self.final_norm(h) * (1 + scale) + shift)

    def loss(self, tokens: Tensor, labels: Tensor | None = None) -> Tensor:
        """Flow-matching loss: mean squared error of the velocity, per standardised channel."""
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.seq_len, self.token_dim):
            raise ValueError(f"tokens must be (B, {self.seq_len}, {self.token_dim}), got {tuple(tokens.shape)}")
        x1 = (tokens.float() - self.mean) / self.std
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        xt = t[:, None, None] * x1 + (1 - t[:, None, None]) * x0
        return F.mse_loss(self.velocity(xt, t, labels).float(), x1 - x0)

    @torch.no_grad()
    def sample(self, num: int, labels: Tensor | None = None, steps: int = 50, cfg_scale: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` token sequences (num, seq_len, token_dim) in the tokenizer's scale (Euler, ``steps``)."""
        if num < 1 or steps < 1:
            raise ValueError(f"need num >= 1 and steps >= 1, got {num}, {steps}")
        device = self.positions.device
        labels = self._labels(labels, num, device)
        x = torch.randn(num, self.seq_len, self.token_dim, device=device, generator=generator)
        guided = cfg_scale != 1.0
        null = torch.full_like(labels, self.null_class)
        for i in range(steps):
            t = torch.full((num,), i / steps, device=device)
            if guided:
                v = self.velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
                cond, uncond = v.chunk(2)
                v = uncond + cfg_scale * (cond - uncond)
            else:
                v = self.velocity(x, t, labels)
            x = x + v / steps
        return x * self.std + self.mean
