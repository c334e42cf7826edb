"""Byte-level text encoder and segment decoder (GQ-VAE): bidirectional ALiBi transformer over UTF-8 bytes.

Inputs are rows of byte ids ``(B, T)`` in 0..255 with ``PAD_ID`` (256) after the end of each row.
The encoder gives one latent per byte; the decoder reads one (quantized) latent and predicts the up to
``max_token_len`` bytes that end at its position plus a length distribution (the GQ-VAE decoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.modalities.text_bytes import BYTE_VOCAB, PAD_ID


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


class ByteEncoder(nn.Module):
    """Byte ids (B, T) -> latents (B, T, latent_dim), one per byte.

    Args:
        latent_dim: width of the latents handed to the quantizer.
        width: transformer width.
        depth: transformer blocks (paper: 4).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / width.
    """

    def __init__(self, latent_dim: int = 64, width: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.embed = nn.Embedding(BYTE_VOCAB, width)
        self.transformer = ALiBiTransformer(width, depth, num_heads, mlp_ratio)
        self.to_latent = nn.Linear(width, latent_dim)

    def forward(self, byte_ids: Tensor) -> Tensor:
        if byte_ids.dim() != 2 or byte_ids.dtype not in (torch.int64, torch.int32, torch.int16):
            raise ValueError(
                f"ByteEncoder expects integer byte ids (B, T), got {byte_ids.dtype} {tuple(byte_ids.shape)}"
            )
        if byte_ids.numel() and (int(byte_ids.min()) < 0 or int(byte_ids.max()) > PAD_ID):
            raise ValueError(f"byte ids must lie in [0, {PAD_ID}] ({PAD_ID} = padding)")
        byte_ids = byte_ids.long()
        return self.to_latent(self.transformer(self.embed(byte_ids), byte_ids == PAD_ID))


class SegmentDecoder(nn.Module):
    """One latent -> the bytes of the segment ending at its position, and the segment's length.

    Args:
        latent_dim: width of the (quantized) latents.
        width: hidden width of the residual MLP stack.
        depth: residual MLP blocks (paper: 4).
        max_token_len: K, the longest segment in bytes.

    ``forward(z)`` with z (..., latent_dim) returns ``byte_logits`` (..., K, 256), where slot
    K-1 is the byte at the latent's own position and slot K-1-j the byte j positions before it,
    and ``length_logits`` (..., K): softmax over slots whose cumulative sum is the probability that
    a slot belongs to the segment (slot K-L starts a segment of L bytes).
    """

    def __init__(self, latent_dim: int = 64, width: int = 256, depth: int = 4, max_token_len: int = 10) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.max_token_len = max_token_len
        self.inp = nn.Linear(latent_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, max_token_len * 257)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = self.inp(z)
        for block in self.blocks:
            h = h + block(h)
        out = self.out(self.norm(h)).unflatten(-1, (self.max_token_len, 257))
        return out[..., :256], out[..., 256]
