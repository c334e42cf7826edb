"""Bidirectional transformer blocks with ALiBi distance biases (Press et al.), no positional embeddings.

Used by the byte encoder of the text models (``vqkit.modalities.text.ByteEncoder``) and by the boundary
gate of the gated quantizer (``vqkit.quantizers.gq.BoundaryGate``). Shapes: ``x`` (B, T, W), ``key_padding``
(B, T) bool, True where a position is padding (it is never attended to).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al.): a geometric sequence 2^(-8/n), 2^(-16/n), ... for n heads."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor([2 ** (-8.0 * (i + 1) / closest) for i in range(closest)])
    if closest == num_heads:
        return base
    extra = torch.tensor([2 ** (-4.0 * (2 * i + 1) / closest) for i in range(num_heads - closest)])
    return torch.cat([base, extra])


class ALiBiSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with ALiBi distance biases (no positional embeddings)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """x: (B, T, W); key_padding: (B, T) bool, True where the key is padding. Returns (B, T, W)."""
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(t, device=x.device)
        distance = (pos[None, :] - pos[:, None]).abs().float()  # (T, T)
        bias = -self.slopes.to(x.device)[:, None, None] * distance  # (H, T, T)
        bias = bias.unsqueeze(0).expand(b, -1, -1, -1)
        if key_padding is not None:
            bias = bias.masked_fill(key_padding[:, None, None, :], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class TransformerBlock(nn.Module):
    """Pre-norm attention + MLP block."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = ALiBiSelfAttention(width, num_heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


class ALiBiTransformer(nn.Module):
    """A stack of bidirectional ALiBi blocks with a final LayerNorm: (B, T, W) -> (B, T, W)."""

    def __init__(self, width: int, depth: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(width, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        if key_padding is not None:
            # A row that is all padding would attend to nothing (NaN); let its first key stay visible.
            key_padding = key_padding.clone()
            key_padding[:, 0] = False
        for block in self.blocks:
            x = block(x, key_padding)
        return self.norm(x)
