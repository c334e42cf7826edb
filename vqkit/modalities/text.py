"""Byte-level text encoder and segment decoder (GQ-VAE): bidirectional ALiBi transformer over UTF-8 bytes.

Inputs are rows of byte ids ``(B, T)`` in 0..255 with ``PAD_ID`` (256) after the end of each row.
The encoder gives one latent per byte; the decoder reads one (quantized) latent and predicts the up to
``max_token_len`` bytes that end at its position plus a length distribution (the GQ-VAE decoder).
The window helpers below define what the decoder's K slots hold (``window_targets``) and how its
length logits read as a segment length (``length_probs``, ``predicted_lengths``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.layers.alibi import ALiBiTransformer
from vqkit.modalities.text_bytes import BYTE_VOCAB, PAD_ID


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


def window_targets(byte_ids: Tensor, max_token_len: int) -> Tensor:
    """The bytes of the window ending at each position: (B, T) -> (B, T, K).

    Slot ``K-1-j`` holds byte ``t-j``; slots before the start of the row hold ``PAD_ID``.
    """
    padded = F.pad(byte_ids, (max_token_len - 1, 0), value=PAD_ID)  # (B, T+K-1)
    return padded.unfold(1, max_token_len, 1)


def length_probs(length_logits: Tensor) -> Tensor:
    """(..., K) probability that each slot is inside the segment: cumulative softmax over slots."""
    return torch.softmax(length_logits.float(), dim=-1).cumsum(-1).clamp(1e-6, 1.0 - 1e-6)


def predicted_lengths(length_logits: Tensor) -> Tensor:
    """(..., K) length logits -> (...) the segment length in bytes the length head predicts (at least 1)."""
    return (length_probs(length_logits) > 0.5).sum(-1).clamp_min(1)
