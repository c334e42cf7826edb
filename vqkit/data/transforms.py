"""Image transforms shared by the image DataModules.

Every pipeline maps a PIL image to a float tensor (3, S, S) in [0, 1], the value range of the
batch contract (``{"image": (B, 3, H, W)}``); the model normalises to [-1, 1] itself.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def train_transform(image_size: int, min_crop_area: float = 0.35) -> v2.Compose:
    """Random resized crop (area fraction in [min_crop_area, 1], aspect 3/4..4/3) + horizontal flip.

    Args:
        image_size: side S of the square output.
        min_crop_area: smallest crop area as a fraction of the image; 1.0 gives whole-image crops
            (only the aspect ratio jitters), ImageNet classifiers use 0.08 (too aggressive for tokenizers).

    Returns:
        PIL image -> float tensor (3, S, S) in [0, 1].
    """
    if not 0.0 < min_crop_area <= 1.0:
        raise ValueError(f"min_crop_area must be in (0, 1], got {min_crop_area}")
    return v2.Compose(
        [
            v2.ToImage(),  # uint8 (3, H, W)
            v2.RandomResizedCrop(image_size, scale=(min_crop_area, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.ToPureTensor(),
        ]
    )


def eval_transform(image_size: int) -> v2.Compose:
    """Resize the short side to ``image_size`` and take the center square; deterministic.

    Returns:
        PIL image -> float tensor (3, S, S) in [0, 1].
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.ToPureTensor(),
        ]
    )


AUGMENT_VIEWS = {"none": 1, "flip": 2, "tencrop": 10}


def tokenize_views(images: torch.Tensor, augment: str) -> torch.Tensor:
    """Views of a batch (B, 3, S, S) for pre-tokenization -> (B, V, 3, S, S) (``none``: V = 1).

    ``flip``: the image and its mirror. ``tencrop`` (as LlamaGen's code extraction): the image is enlarged by 1.1,
    then its four corner crops and the center crop of side S, and the mirrors of those five.
    """
    if augment not in AUGMENT_VIEWS:
        raise ValueError(f"augment must be one of {sorted(AUGMENT_VIEWS)}, got {augment!r}")
    if augment == "none":
        return images[:, None]
    if augment == "flip":
        return torch.stack([images, images.flip(-1)], 1)
    size = tuple(images.shape[-2:])
    big = v2.functional.resize(images, [round(s * 1.1) for s in size], antialias=True)
    return torch.stack(list(v2.functional.ten_crop(big, list(size))), 1).clamp(0, 1)
