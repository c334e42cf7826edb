"""Networks that turn a codebook into another codebook (the VQBridge of FVQ, ``vqkit.quantizers.vqbridge``).

``PatchBridge`` treats the K codes as an H x W image with C channels: it compresses p x p patches of codes
into tokens (a stride-p convolution), processes the tokens with transformer blocks and recovers p x p
codes per token (LayerNorm, Linear, unpatchify). Two block flavours, as in the FVQ release:

- ``adaptive=True`` (FVQ ``qbridge.py``, the one its training scripts run): DiT blocks with adaLN-Zero.
  A single learned condition vector (the unconditional case) gives each block a shift, scale and gate
  for its attention and MLP branch, and the final norm a shift and scale. The modulation Linears start
  at zero, so every block starts as the identity.
- ``adaptive=False`` (FVQ ``qbridge_ViT.py``): the same pre-norm blocks without modulation.

Both use LayerNorm without affine parameters (eps 1e-6), attention with qkv bias, a tanh-GELU MLP,
xavier-uniform Linears and patch embedding with zero bias, and a zero-initialised output Linear, so the
bridge outputs exactly zero at initialisation. ``PerCodeBridge`` is the per-code ablation (Linear or MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.layers.positions import sincos_positions

POSITIONS = ("sincos", "learned", "none")


class SelfAttention(nn.Module):
    """Multi-head self-attention over (B, T, width): one qkv Linear (with bias), SDPA, output Linear."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width={width} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class FeedForward(nn.Sequential):
    """Linear, tanh-approximated GELU, Linear."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


def _norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


def _modulation(width: int, parts: int) -> nn.Sequential:
    """SiLU then a Linear to ``parts`` x width; zero-initialised by ``PatchBridge``."""
    return nn.Sequential(nn.SiLU(), nn.Linear(width, parts * width))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class BridgeBlock(nn.Module):
    """Pre-norm transformer block; with ``adaptive`` the condition sets shift/scale/gate of both branches."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, adaptive: bool) -> None:
        super().__init__()
        self.norm1, self.attn = _norm(width), SelfAttention(width, num_heads)
        self.norm2, self.mlp = _norm(width), FeedForward(width, int(width * mlp_ratio))
        self.modulation = _modulation(width, 6) if adaptive else None

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.modulation is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).unsqueeze(1).chunk(6, dim=-1)
        x = x + gate1 * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class PatchBridge(nn.Module):
    """(K, C) codes on a row-major H x W grid -> (K, D): compress p x p patches, blocks, recover, unpatchify.

    Args:
        in_dim: C, width of the input codes.
        out_dim: D, width of the output codes.
        grid: (H, W) with H * W = K; both divisible by ``patch``.
        patch: p, codes per patch side.
        width: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``width``.
        adaptive: DiT blocks with adaLN-Zero modulation from one learned condition vector.
        positions: ``sincos`` (fixed, not trained), ``learned`` (N(0, 0.02), trained) or ``none``.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], patch: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, adaptive: bool, positions: str) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if grid[0] % patch or grid[1] % patch:
            raise ValueError(f"the {grid[0]} x {grid[1]} code grid is not divisible by patch={patch}")
        self.in_dim, self.out_dim, self.grid, self.patch = in_dim, out_dim, grid, patch
        self.token_grid = (grid[0] // patch, grid[1] // patch)
        self.compress = nn.Conv2d(in_dim, width, kernel_size=patch, stride=patch)
        if positions == "sincos":
            self.register_buffer("pos_embed", sincos_positions(self.token_grid, width), persistent=False)
        elif positions == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, self.token_grid[0] * self.token_grid[1], width) * 0.02)
        else:
            self.pos_embed = None
        self.condition = nn.Parameter(torch.randn(1, width) * 0.02) if adaptive else None
        self.blocks = nn.ModuleList(BridgeBlock(width, num_heads, mlp_ratio, adaptive) for _ in range(depth))
        self.norm = _norm(width)
        self.out_modulation = _modulation(width, 2) if adaptive else None
        self.recover = nn.Linear(width, patch * patch * out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.compress.weight.view(self.compress.out_channels, -1))  # as a Linear
        nn.init.zeros_(self.compress.bias)
        zeroed = [self.recover] + [m[-1] for m in (self.out_modulation, *(b.modulation for b in self.blocks))
                                   if m is not None]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, codes: Tensor) -> Tensor:
        (h, w), p = self.grid, self.patch
        image = codes.reshape(1, h, w, self.in_dim).permute(0, 3, 1, 2)  # (1, C, H, W)
        x = self.compress(image).flatten(2).transpose(1, 2)  # (1, T, width), T = (H/p) * (W/p)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, self.condition)
        x = self.norm(x)
        if self.out_modulation is not None:
            shift, scale = self.out_modulation(self.condition).unsqueeze(1).chunk(2, dim=-1)
            x = _modulate(x, shift, scale)
        out = self.recover(x)  # (1, T, p * p * D)
        out = out.reshape(h // p, w // p, p, p, self.out_dim).permute(0, 2, 1, 3, 4)  # (H/p, p, W/p, p, D)
        return out.reshape(h * w, self.out_dim)


class PerCodeBridge(nn.Module):
    """(K, C) -> (K, D) applied to each code alone: Linear, or Linear-GELU-Linear; last layer zero-init."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None) -> None:
        super().__init__()
        last = nn.Linear(hidden or in_dim, out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = last if hidden is None else nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), last)

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes)
