"""Differentiable augmentation of discriminator inputs (DiffAugment, Zhao et al., NeurIPS 2020).

The same random transforms are applied to real and generated images before the discriminator sees them,
so it cannot tell them apart by artefacts the augmentation hides, and the generator still gets gradients
through them (every transform is differentiable in the pixels). Three groups, each applied to the whole
batch with probability ``prob`` and with its own random draw per image:

- ``color``: brightness ``x + u - 0.5``, then saturation ``(x - mean_c) * 2u + mean_c`` (mean over channels),
  then contrast ``(x - mean_chw) * (u + 0.5) + mean_chw`` (mean over the image), u ~ U(0, 1) per image;
- ``translation``: shift by up to ``translation`` x the side (rounded) in each direction, integer pixels,
  zeros shifted in;
- ``cutout``: zero a square of ``cutout`` x the side (rounded) at a random centre (clipped at the border).

SoftVQ-VAE uses ``color,translation,cutout`` with cutout 0.2 and p = 0.5 on every discriminator input, and
a strong view (cutout 0.5, p = 1) for its consistency term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GROUPS = ("color", "translation", "cutout")


def _uniform(x: Tensor) -> Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)


def color(x: Tensor) -> Tensor:
    """Random brightness, saturation and contrast per image."""
    x = x + (_uniform(x) - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * (2.0 * _uniform(x))
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    return level + (x - level) * (_uniform(x) + 0.5)


def translate(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by a random integer offset in [-r, r] rows and columns (r = round(ratio * side))."""
    b, _, h, w = x.shape
    rh, rw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-rh, rh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-rw, rw + 1, (b, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)  # (B, 1, H, W)
    flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    moved = x.reshape(b, x.shape[1], h * w).gather(2, flat).view_as(x)
    return moved * inside.to(x.dtype)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one square of side round(ratio * side) per image, centred uniformly (clipped at the border)."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # centres as in the DiffAugment reference: one more position for even sizes
    cy = torch.randint(0, h + (1 - sh % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - sw % 2), (b, 1, 1), device=x.device)
    top, left = cy - sh // 2, cx - sw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


class DiffAugment(nn.Module):
    """Images (B, C, H, W) -> augmented images of the same shape, differentiable in the pixels.

    Active in training and evaluation alike (it is only ever called on discriminator inputs).

    Args:
        policy: comma-separated groups out of ``color``, ``translation``, ``cutout``, applied in that order
            of the string.
        prob: probability that a group is applied to a batch (one draw per group and call).
        translation: maximum shift as a fraction of the side.
        cutout: side of the zeroed square as a fraction of the image side.
    """

    def __init__(self, policy: str = "color,translation,cutout", prob: float = 0.5, translation: float = 0.125,
                 cutout: float = 0.2) -> None:
        super().__init__()
        groups = tuple(p.strip() for p in policy.split(",") if p.strip())
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown DiffAugment group(s) {unknown}; known: {', '.join(GROUPS)}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"DiffAugment prob must be in [0, 1], got {prob}")
        if not (0.0 <= translation < 1.0 and 0.0 <= cutout <= 1.0):
            raise ValueError(f"translation must be in [0, 1) and cutout in [0, 1], got {translation}, {cutout}")
        self.groups = groups
        self.prob = float(prob)
        self.translation = float(translation)
        self.cutout = float(cutout)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"DiffAugment expects images (B, C, H, W), got {tuple(images.shape)}")
        x = images
        for group in self.groups:
            if self.prob < 1.0 and torch.rand(()) >= self.prob:
                continue
            if group == "color":
                x = color(x)
            elif group == "translation":
                x = translate(x, self.translation)
            else:
                x = cutout(x, self.cutout)
        return x.contiguous()

    def extra_repr(self) -> str:
        policy = ",".join(self.groups)
        return f"policy={policy!r}, prob={self.prob}, translation={self.translation}, cutout={self.cutout}"
