"""PatchGAN discriminator (pix2pix / VQGAN style): one real-vs-fake logit per overlapping image patch."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from vqkit.layers.conv import group_norm

NormKind = Literal["group", "batch", "none"]


def _norm(kind: NormKind, channels: int) -> nn.Module:
    if kind == "group":
        return group_norm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown discriminator norm {kind!r}; expected 'group', 'batch' or 'none'")


class NLayerDiscriminator(nn.Module):
    """Images (B, C, H, W) -> patch logits (B, 1, h, w).

    ``num_layers`` stride-2 4x4 convolutions (the first without a norm), one stride-1
    4x4 convolution, then a 4x4 convolution to one channel; widths double per layer up
    to 8 x ``channels``. With 3 layers each logit sees a 70x70 receptive field and a
    256x256 image gives 30x30 logits; the input must be at least ``3 * 2 ** num_layers``
    pixels on each side.

    Weights of convolutions are drawn from N(0, 0.02) and their biases set to 0; norm
    scales from N(1, 0.02) with zero shifts.

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        num_layers: number of stride-2 layers.
        norm: ``"group"`` (default) or ``"none"`` behave the same on every process count;
            ``"batch"`` (the original PatchGAN) keeps per-process batch statistics, so under
            DDP it needs ``trainer.sync_batchnorm=true``, and real and fake batches are
            normalized with different statistics since they go through separate calls.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: NormKind = "group") -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, num_layers + 1):
            prev, width = width, channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(prev, width, 4, stride=stride, padding=1, bias=bias),
                _norm(norm, width),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.min_size = 3 * 2**num_layers
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolutions ~ N(0, 0.02) with zero bias; norm scales ~ N(1, 0.02) with zero shift."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or min(images.shape[-2:]) < self.min_size:
            raise ValueError(
                f"expected images (B, C, H, W) with H, W >= {self.min_size}, got {tuple(images.shape)}; "
                "use fewer discriminator layers (module.discriminator.num_layers) for small images"
            )
        return self.net(images)
