"""ARPrior: a small causal transformer over a tokenizer's discrete ids (LlamaGen-style class-conditional GPT).

The sequence of an item is its ids in raster order (2-D grids row by row, 1-D tokens as they are, residual stages
innermost). Position 0 holds the class embedding (the last class index is "no class": unconditional items and
classifier-free guidance), and position i predicts id i from the class and ids 0..i-1. Sampling keeps a key/value
cache, so drawing L ids costs L single-position steps; with ``cfg_scale`` s != 1 the conditional and unconditional
logits are mixed as u + s (c - u).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = list[tuple[Tensor, Tensor] | None]


def class_labels(labels: Tensor | None, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """Labels (batch,) int64 on ``device``, checked to lie in [0, num_classes]; None: all ``num_classes`` (no class)."""
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    labels = labels.to(device=device, dtype=torch.long)
    if labels.shape != (batch,) or bool(((labels < 0) | (labels > num_classes)).any()):
        raise ValueError(f"labels must be ({batch},) in [0, {num_classes}] ({num_classes}: no class), "
                         f"got {tuple(labels.shape)}")
    return labels


class CausalBlock(nn.Module):
    """Pre-norm attention + MLP block; ``forward(x, cache, i)`` appends to block i's key/value cache."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"prior.dim ({dim}) must be a multiple of prior.num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, x: Tensor, cache: KVCache | None = None, index: int = 0) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        past = cache[index] if cache is not None else None
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        if cache is not None:
            cache[index] = (k, v)
        drop = self.dropout if self.training else 0.0
        # with a cache, the new positions are the last ones: causal masking is only needed within them
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=past is None and n > 1)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class ARPrior(nn.Module):
    """Class-conditional autoregressive prior over ids in [0, vocab_size).

    Args:
        vocab_size: the tokenizer's codebook size.
        seq_len: ids per item.
        num_classes: labels in [0, num_classes); 0 for an unconditional prior.
        dim, depth, num_heads, mlp_ratio, dropout: the transformer.
    """

    input_key = "ids"

    def __init__(self, vocab_size: int, seq_len: int, num_classes: int = 0, dim: int = 256, depth: int = 6,
                 num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if vocab_size < 2 or seq_len < 1 or num_classes < 0:
            raise ValueError(f"need vocab_size >= 2, seq_len >= 1, num_classes >= 0; got {vocab_size}, {seq_len}, "
                             f"{num_classes}")
        self.vocab_size, self.seq_len, self.num_classes = vocab_size, seq_len, num_classes
        self.tokens = nn.Embedding(vocab_size, dim)
        self.classes = nn.Embedding(num_classes + 1, dim)  # index num_classes: no class
        self.positions = nn.Parameter(torch.zeros(seq_len, dim))
        self.blocks = nn.ModuleList(CausalBlock(dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(self._init)
        nn.init.trunc_normal_(self.positions, std=0.02)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for layer in (block.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _labels(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        return class_labels(labels, batch, self.num_classes, device)

    def forward(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """ids (B, L <= seq_len) -> logits (B, L, vocab_size); logits[:, i] predicts ids[:, i] from ids[:, :i]."""
        if ids.dim() != 2 or not 1 <= ids.shape[1] <= self.seq_len:
            raise ValueError(f"ids must be (B, L) with 1 <= L <= {self.seq_len}, got {tuple(ids.shape)}")
        if ids.is_floating_point() or bool(((ids < 0) | (ids >= self.vocab_size)).any()):
            raise ValueError(f"ids must be integers in [0, {self.vocab_size})")
        b, n = ids.shape
        cond = self.classes(self._labels(labels, b, ids.device))[:, None]
        x = torch.cat([cond, self.tokens(ids[:, :-1].long())], 1) + self.positions[:n]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def loss(self, ids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Mean cross-entropy (nats per id) of predicting every id of ``ids`` (B, seq_len)."""
        logits = self(ids, labels)
        return F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten().long())

    @torch.no_grad()
    def sample(self, num: int, labels: Tensor | None = None, temperature: float = 1.0, top_k: int = 0,
               cfg_scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` items -> ids (num, seq_len) int64.

        Args:
            labels: (num,) classes (None: unconditional).
            temperature: > 0; the logits are divided by it.
            top_k: keep the k most likely ids at each step (0: all).
            cfg_scale: classifier-free guidance scale (1: none; needs labels and a prior trained with class dropout).
            generator: for reproducible draws (on the prior's device).
        """
        if temperature <= 0 or top_k < 0 or num < 1:
            raise ValueError(f"need num >= 1, temperature > 0 and top_k >= 0, got {num}, {temperature}, {top_k}")
        device = self.positions.device
        labels = self._labels(labels, num, device)
        guided = cfg_scale != 1.0
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])
        cache: KVCache = [None] * len(self.blocks)
        x = self.classes(labels)[:, None] + self.positions[:1]
        out = torch.empty(num, self.seq_len, dtype=torch.long, device=device)
        for i in range(self.seq_len):
            for j, block in enumerate(self.blocks):
                x = block(x, cache, j)
            logits = self.head(self.norm(x[:, -1])).float()
            if guided:
                cond, uncond = logits.chunk(2)
                logits = uncond + cfg_scale * (cond - uncond)
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, self.vocab_size), -1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            ids = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            out[:, i] = ids
            if i + 1 < self.seq_len:
                step = ids.repeat(2) if guided else ids
                x = self.tokens(step)[:, None] + self.positions[i + 1]
        return out
