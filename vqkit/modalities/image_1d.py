"""1-D (TiTok-style) transformer image tokenizer, the encoder/decoder of SoftVQ-VAE.

The encoder runs a ViT over the image patches plus ``num_latent_tokens`` learnable
latent tokens and keeps only the latent tokens, so the number of tokens does not
depend on the image size. The decoder runs a ViT over one mask token per patch
position plus the (projected) latent tokens and turns the patch positions back into
pixels. Both follow the ``ConvImageEncoder``/``ConvImageDecoder`` interface:
``encoder(images) -> (tokens (B, N, D), (H, W))`` and ``decoder(tokens, (H, W)) -> images``.

Sizes: ``size`` picks a preset of :data:`SIZES` (width / depth / heads); ``width``,
``depth`` and ``num_heads`` given explicitly win over the preset. The positional
embeddings are learned for one ``image_size``; other input sizes are rejected (no
interpolation). Images are expected in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import Tensor, nn

# Transformer sizes of TiTok (arXiv 2406.07550), shared by encoder and decoder. SoftVQ-VAE's
# B and L agree with timm's ViT-B / ViT-L; its S is timm's ViT-S (width 384, depth 12, 6 heads),
# reachable with explicit width/depth/num_heads. XS is not from a paper: a CPU-sized default.
SIZES: dict[str, dict[str, int]] = {
    "XS": {"width": 128, "depth": 3, "num_heads": 4},
    "S": {"width": 512, "depth": 8, "num_heads": 8},
    "B": {"width": 768, "depth": 12, "num_heads": 12},
    "L": {"width": 1024, "depth": 24, "num_heads": 16},
}


def resolve_size(
    size: str | None, width: int | None = None, depth: int | None = None, num_heads: int | None = None
) -> tuple[int, int, int]:
    """(width, depth, num_heads) from a :data:`SIZES` preset, explicit values winning.

    Raises:
        ValueError: unknown preset, a value neither given nor set by a preset, or a width
            that ``num_heads`` does not divide.
    """
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown transformer size {size!r}; known: {', '.join(SIZES)}")
    preset = SIZES[size] if size is not None else {}
    given = {"width": width, "depth": depth, "num_heads": num_heads}
    values = {k: v if v is not None else preset.get(k) for k, v in given.items()}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"set size (one of {', '.join(SIZES)}) or give {', '.join(missing)} explicitly")
    if values["width"] % values["num_heads"]:
        raise ValueError(f"width {values['width']} is not divisible by num_heads {values['num_heads']}")
    return values["width"], values["depth"], values["num_heads"]


def _image_hw(image_size: int | Sequence[int], patch_size: int) -> tuple[int, int]:
    """(H, W) of ``image_size`` (an int or an (H, W) pair), checked against ``patch_size``."""
    hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) <= 0 or patch_size <= 0:
        raise ValueError(
            f"image_size must be a positive int or (H, W) and patch_size a positive int, got {image_size} and "
            f"{patch_size}"
        )
    if hw[0] % patch_size or hw[1] % patch_size:
        raise ValueError(
            f"image size {hw[0]}x{hw[1]} is not divisible by the patch size {patch_size}; "
            "set data.image_size / model.encoder.image_size to a multiple of model.encoder.patch_size."
        )
    return hw


def _vit(width: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float) -> nn.Sequential:
    """Pre-norm ViT blocks (drop path rising linearly to ``drop_path_rate``) and a final LayerNorm."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist()
    blocks = [Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r) for r in rates]
    return nn.Sequential(*blocks, LayerNorm(width))


class _LatentTokenTransformer(nn.Module):
    """What encoder and decoder share: patch geometry, size preset, positional embeddings, the ViT."""

    def __init__(
        self,
        latent_dim: int,
        image_size: int | Sequence[int],
        patch_size: int,
        num_latent_tokens: int,
        size: str | None,
        width: int | None,
        depth: int | None,
        num_heads: int | None,
        mlp_ratio: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.width, self.depth, self.num_heads = resolve_size(size, width, depth, num_heads)
        self.image_size = _image_hw(image_size, patch_size)
        self.patch_size = patch_size
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_latent_tokens = num_latent_tokens
        self.latent_dim = latent_dim
        self.patch_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, self.width))
        self.latent_pos_embed = nn.Parameter(torch.zeros(1, num_latent_tokens, self.width))
        self.transformer = _vit(self.width, self.depth, self.num_heads, mlp_ratio, drop_path_rate)


class TransformerImageEncoder(_LatentTokenTransformer):
    """Images (B, C, H, W) -> tokens (B, num_latent_tokens, latent_dim).

    Args:
        latent_dim: width of each output token.
        image_size: the (square int or (H, W)) input size the positional embeddings are learned for.
        patch_size: side of the square patches; must divide both image sides.
        num_latent_tokens: number of output tokens.
        size: preset of :data:`SIZES` (XS, S, B, L); None needs width, depth and num_heads.
        width: transformer width; overrides the preset.
        depth: number of transformer blocks; overrides the preset.
        num_heads: attention heads; overrides the preset.
        mlp_ratio: MLP hidden width over ``width``.
        drop_path_rate: stochastic depth of the last block (0 = off).
        in_channels: image channels.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        image_size: int | Sequence[int] = 256,
        patch_size: int = 16,
        num_latent_tokens: int = 32,
        size: str | None = "B",
        width: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__(latent_dim, image_size, patch_size, num_latent_tokens, size, width, depth, num_heads,
                         mlp_ratio, drop_path_rate)
        self.in_channels = in_channels
        self.patch_embed = nn.Conv2d(in_channels, self.width, patch_size, stride=patch_size)
        self.latent_tokens = nn.Parameter(torch.zeros(1, num_latent_tokens, self.width))
        self.proj = nn.Linear(self.width, latent_dim)

        self.apply(init_weights_vit_timm)
        for p in (self.patch_pos_embed, self.latent_tokens, self.latent_pos_embed):
            trunc_normal_(p, std=0.02)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Returns tokens (B, num_latent_tokens, latent_dim) and the image size (H, W) the decoder needs."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        hw = (images.shape[-2], images.shape[-1])
        if hw != self.image_size:
            raise ValueError(
                f"image size {hw[0]}x{hw[1]} differs from the encoder's image_size "
                f"{self.image_size[0]}x{self.image_size[1]} (its positional embeddings are learned for it); "
                "set model.encoder.image_size to the data's image size."
            )
        b = images.shape[0]
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, width), P = H/p * W/p
        patches = patches + self.patch_pos_embed
        latents = (self.latent_tokens + self.latent_pos_embed).expand(b, -1, -1)  # (B, L, width)
        x = self.transformer(torch.cat([patches, latents], dim=1))  # (B, P + L, width)
        return self.proj(x[:, self.num_patches :]), hw  # (B, L, latent_dim)


class TransformerImageDecoder(_LatentTokenTransformer):
    """Tokens (B, num_latent_tokens, latent_dim) -> images (B, C, H, W).

    Args:
        latent_dim: width of each input token.
        image_size: the (square int or (H, W)) output size the positional embeddings are learned for.
        patch_size: side of the square patches; must divide both image sides.
        num_latent_tokens: number of input tokens.
        size: preset of :data:`SIZES` (XS, S, B, L); None needs width, depth and num_heads.
        width: transformer width; overrides the preset.
        depth: number of transformer blocks; overrides the preset.
        num_heads: attention heads; overrides the preset.
        mlp_ratio: MLP hidden width over ``width``.
        drop_path_rate: stochastic depth of the last block (0 = off).
        out_channels: image channels.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        image_size: int | Sequence[int] = 256,
        patch_size: int = 16,
        num_latent_tokens: int = 32,
        size: str | None = "B",
        width: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        out_channels: int = 3,
    ) -> None:
        super().__init__(latent_dim, image_size, patch_size, num_latent_tokens, size, width, depth, num_heads,
                         mlp_ratio, drop_path_rate)
        self.out_channels = out_channels
        self.embed = nn.Linear(latent_dim, self.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.width))
        self.to_pixels = nn.Linear(self.width, patch_size * patch_size * out_channels)

        self.apply(init_weights_vit_timm)
        for p in (self.latent_pos_embed, self.mask_token, self.patch_pos_embed):
            trunc_normal_(p, std=0.02)

    def forward(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Tokens (B, L, latent_dim) and the encoder's (H, W) -> images (B, C, H, W)."""
        b, n, d = tokens.shape
        if n != self.num_latent_tokens or d != self.latent_dim:
            raise ValueError(
                f"expected tokens (B, {self.num_latent_tokens}, {self.latent_dim}), got {tuple(tokens.shape)}"
            )
        hw = (int(image_size[0]), int(image_size[1]))
        if hw != self.image_size:
            raise ValueError(
                f"image size {hw[0]}x{hw[1]} differs from the decoder's image_size "
                f"{self.image_size[0]}x{self.image_size[1]} (its positional embeddings are learned for it)"
            )
        masks = (self.mask_token + self.patch_pos_embed).expand(b, -1, -1)  # (B, P, width)
        latents = self.embed(tokens) + self.latent_pos_embed  # (B, L, width)
        x = self.transformer(torch.cat([masks, latents], dim=1))  # (B, P + L, width)
        x = self.to_pixels(x[:, : self.num_patches])  # (B, P, p*p*C)
        (gh, gw), p = self.grid_size, self.patch_size
        x = x.reshape(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(b, self.out_channels, gh * p, gw * p)
