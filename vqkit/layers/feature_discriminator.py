"""Discriminator on a frozen pretrained backbone with small trainable heads (SoftVQ-VAE's "DINO" discriminator).

The images go through a frozen timm network (a ViT such as DINO ViT-S/16, or a CNN); the feature maps of a
few of its depths each feed a small trainable head of 1-D convolutions that gives one logit per token.
Only the heads learn; gradients still flow through the frozen backbone to the images, so the generator is
trained against it. The construction follows SoftVQ-VAE's ``DinoDisc`` (itself from VAR):

- input in [-1, 1] -> [0, 1] -> ImageNet mean/std; in training, when both sides exceed ``image_size``, a
  random ``image_size`` crop with probability ``random_crop``, else a resize to ``image_size`` (area when
  shrinking, bicubic when enlarging);
- ViT backbones: the tokens after the position embedding (before the first block) and after each block of
  ``layers`` (0-based), without the final norm; each level's patch tokens plus its class token (when the
  ViT has one), as channels-first sequences (B, C, P);
- CNN backbones: timm ``forward_intermediates`` at ``layers``, each map flattened in raster order to (B, C, h*w);
- each head: [1x1 conv, norm, LeakyReLU(0.2)], then a residual [k-wide circular conv, norm, LeakyReLU(0.2)]
  with the sum scaled by 1/sqrt(2), then a 1x1 conv to one channel; convolutions spectrally normalised;
- output: the logits of all levels concatenated, (B, sum of token counts).

The backbone's tensors are left out of state dicts (it is rebuilt from its weights file) and it stays in
eval mode.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from vqkit.layers.feature_encoder import IMAGENET_MEAN, IMAGENET_STD, frozen_timm_model

HeadNorm = Literal["batch", "group", "none"]


def _head_norm(kind: HeadNorm, channels: int) -> nn.Module:
    if kind == "batch":  # statistics over batch and tokens; trainer.sync_batchnorm=true makes it SyncBatchNorm
        return nn.BatchNorm1d(channels, eps=1e-6)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown head norm {kind!r}; expected 'batch', 'group' or 'none'")


class _ScaledResidual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return (self.body(x) + x) * (1.0 / math.sqrt(2.0))


def feature_head(channels: int, kernel_size: int = 9, norm: HeadNorm = "batch", spectral: bool = True) -> nn.Sequential:
    """Features (B, C, P) -> logits (B, 1, P)."""

    def conv(c_in: int, c_out: int, k: int) -> nn.Module:
        layer = nn.Conv1d(c_in, c_out, k, padding=k // 2, padding_mode="circular")
        return _spectral_norm(layer) if spectral else layer

    def stage(k: int) -> nn.Sequential:
        return nn.Sequential(conv(channels, channels, k), _head_norm(norm, channels), nn.LeakyReLU(0.2))

    return nn.Sequential(stage(1), _ScaledResidual(stage(kernel_size)), conv(channels, 1, 1))


class PretrainedFeatureDiscriminator(nn.Module):
    """Images in [-1, 1] (B, 3, H, W) -> logits (B, T), T = the tokens of all feature levels.

    Args:
        model_name: timm architecture of the frozen backbone (SoftVQ-VAE: DINO ViT-S/16,
            ``vit_small_patch16_224.dino``).
        weights_path: its local weights file (None: only ``efficientnet_lite0``, whose ImageNet weights are
            packaged).
        layers: ViT: 0-based blocks whose outputs are read, plus always the input of the first block
            (SoftVQ-VAE: 2, 5, 8, 11); CNN: ``forward_intermediates`` indices.
        image_size: the backbone's input side.
        kernel_size: width of each head's residual convolution (9).
        norm: heads' normalisation; ``batch`` is SoftVQ-VAE's (a SyncBatchNorm there: run with
            ``trainer.sync_batchnorm=true`` under DDP).
        spectral_norm: spectral normalisation of the heads' convolutions.
        random_crop: probability of a random crop instead of a resize for inputs larger than ``image_size``.
        model_kwargs: more ``timm.create_model`` arguments.
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224.dino",
        weights_path: str | Path | None = None,
        layers: Sequence[int] = (2, 5, 8, 11),
        image_size: int = 224,
        kernel_size: int = 9,
        norm: HeadNorm = "batch",
        spectral_norm: bool = True,
        random_crop: float = 0.5,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(model_kwargs or {})
        self.backbone = frozen_timm_model(model_name, weights_path, "module.discriminator.weights_path", **kwargs)
        self.is_vit = all(hasattr(self.backbone, a) for a in ("patch_embed", "blocks", "_pos_embed"))
        self.layers = tuple(int(i) for i in layers)
        if self.is_vit:
            depth = len(self.backbone.blocks)
            bad = [i for i in self.layers if not 0 <= i < depth]
            if bad:
                raise ValueError(f"layers {bad} are not blocks of {model_name} (0 .. {depth - 1})")
        elif not hasattr(self.backbone, "forward_intermediates"):
            raise ValueError(f"{model_name} is neither a ViT nor a timm model with forward_intermediates")
        self.image_size = int(image_size)
        self.random_crop = float(random_crop)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, self.image_size, self.image_size))
        short = [f.shape[-1] for f in probe if f.shape[-1] < kernel_size // 2]
        if short:
            raise ValueError(
                f"feature levels of {short} tokens are too short for the heads' circular kernel {kernel_size}: "
                "raise image_size or lower kernel_size"
            )
        self.heads = nn.ModuleList(feature_head(f.shape[1], kernel_size, norm, spectral_norm) for f in probe)
        self.register_state_dict_post_hook(_drop_backbone)
        self.register_load_state_dict_pre_hook(_keep_backbone)

    def train(self, mode: bool = True) -> PretrainedFeatureDiscriminator:
        super().train(mode)
        self.backbone.eval()
        return self

    def prepare(self, images: Tensor) -> Tensor:
        """[-1, 1] images -> ImageNet-normalised ``image_size`` squares (crop or resize)."""
        x = ((images.float() + 1.0) * 0.5 - self.mean) / self.std
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) == (s, s):
            return x
        if self.training and h > s and w > s and random.random() < self.random_crop:
            top, left = random.randint(0, h - s), random.randint(0, w - s)
            return x[..., top : top + s, left : left + s]
        if h > s:
            return F.interpolate(x, size=(s, s), mode="area")
        return F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """Prepared images -> the backbone's feature levels, each (B, C, P)."""
        net = self.backbone
        if not self.is_vit:
            maps = net.forward_intermediates(x, indices=list(self.layers), intermediates_only=True)
            return [m.flatten(2) for m in maps]
        prefix = int(getattr(net, "num_prefix_tokens", 0))
        has_cls = getattr(net, "cls_token", None) is not None

        def readout(tokens: Tensor) -> Tensor:
            patches = tokens[:, prefix:]
            if has_cls:
                patches = patches + tokens[:, :1]
            return patches.transpose(1, 2)

        t = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        levels = [readout(t)]
        last = max(self.layers)
        for i, block in enumerate(net.blocks):
            if i > last:
                break
            t = block(t)
            if i in self.layers:
                levels.append(readout(t))
        return levels

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        levels = self.features(self.prepare(images))
        return torch.cat([head(f).flatten(1) for head, f in zip(self.heads, levels, strict=True)], dim=1)


def _drop_backbone(module: nn.Module, state_dict: dict, prefix: str, local_metadata: object) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}backbone.")]:
        del state_dict[key]


def _keep_backbone(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    for key, value in module.backbone.state_dict(prefix=f"{prefix}backbone.").items():
        state_dict.setdefault(key, value)
