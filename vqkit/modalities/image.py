"""VQGAN-style convolutional image encoder and decoder.

The encoder downsamples by ``2 ** (len(channel_mult) - 1)`` (f4, f8, f16 ...) and
returns channels-last tokens (B, h*w, latent_dim); the decoder takes them back to
images. Images are expected in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from vqkit.layers.conv import Downsample2d, ResBlock2d, Upsample2d, group_norm


class ConvImageEncoder(nn.Module):
    """Images (B, C, H, W) -> tokens (B, H/f * W/f, latent_dim).

    Args:
        latent_dim: width of each token.
        channels: width of the first level.
        channel_mult: width multiplier per level; each level after the first halves H and W.
        num_res_blocks: residual blocks per level.
        in_channels: image channels.
    """

    def __init__(
        self,
        latent_dim: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        widths = [channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        prev = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock2d(prev, width))
                prev = width
            if level < len(widths) - 1:
                layers.append(Downsample2d(prev))
        layers += [ResBlock2d(prev, prev), group_norm(prev), nn.SiLU(), nn.Conv2d(prev, latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Returns tokens (B, N, D) and the latent grid size (h, w) the decoder needs."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ValueError(
                f"image size {h}x{w} is not divisible by the downsampling factor {self.downsample_factor}; "
                "crop or resize the data (data.image_size) to a multiple of it."
            )
        z = self.net(images)  # (B, D, h, w)
        return z.flatten(2).transpose(1, 2), (z.shape[-2], z.shape[-1])


class ConvImageDecoder(nn.Module):
    """Tokens (B, h*w, latent_dim) -> images (B, C, h*f, w*f); mirrors the encoder."""

    def __init__(
        self,
        latent_dim: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        widths = [channels * m for m in reversed(channel_mult)]
        prev = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(latent_dim, prev, 3, padding=1), ResBlock2d(prev, prev)]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock2d(prev, width))
                prev = width
            if level < len(widths) - 1:
                layers.append(Upsample2d(prev))
        layers += [group_norm(prev), nn.SiLU(), nn.Conv2d(prev, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        b, n, d = tokens.shape
        h, w = grid
        if n != h * w or d != self.latent_dim:
            raise ValueError(
                f"expected tokens (B, {h * w}, {self.latent_dim}) for grid {grid}, got {tuple(tokens.shape)}"
            )
        # contiguous: a reshaped transpose is a channels-last view, and the decoder would run (and DDP would bucket
        # its 1x1 weight gradients) in that layout
        return self.net(tokens.transpose(1, 2).reshape(b, d, h, w).contiguous())
