"""LPIPS perceptual distance (v0.1, VGG16 backbone) with offline weights, usable as a training loss.

Definition (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
version 0.1): both images in [-1, 1] are shifted and scaled per channel, passed through VGG16, and at
relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the features are normalised to unit length over channels;
the squared difference of the two normalised maps is weighted per channel by a learned non-negative
1x1 convolution ("lin" layer), averaged over space, and the five layer values are summed.

The weights are the converted LPIPS v0.1 VGG16 file installed by ``python -m vqkit.tools.assets install``
(see ``vqkit.tools.assets`` for their origin and licences).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import Tensor, nn

from vqkit.losses.base import LossInputs, LossTerm
from vqkit.tools.assets import LPIPS_VGG16, resolve_weights

# LPIPS v0.1 input scaling (applied to images in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# Indices in torchvision's ``vgg16().features`` of the ReLUs LPIPS reads: relu1_2 .. relu5_3.
TAPS = (3, 8, 15, 22, 29)
CHANNELS = (64, 128, 256, 512, 512)
EPS = 1e-10


def unit_normalize(features: Tensor) -> Tensor:
    """Divide each spatial position's feature vector by its L2 norm over channels (plus ``EPS``)."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with a VGG16 backbone, frozen and always in eval mode.

    Gradients flow to the inputs (not to the weights), so it can be used as a reconstruction loss. The
    computation runs in float32 even under autocast.

    Args:
        weights_path: a safetensors file with ``features.{i}.weight/bias`` and ``lin{k}.weight``; None
            uses the installed asset ``lpips_vgg16.safetensors``.
        option: the option that sets ``weights_path``, named in the error messages: this argument by default,
            a config key where a config builds the module, None where nothing can set it.

    Raises:
        FileNotFoundError: the weights file is missing (the message says how to install it).
    """

    def __init__(self, weights_path: str | Path | None = None, option: str | None = "weights_path") -> None:
        super().__init__()
        state = load_file(str(resolve_weights(LPIPS_VGG16, weights_path, option)))
        with torch.device("meta"):  # no random init: every parameter is assigned from the file below
            self.features = torchvision.models.vgg16(weights=None).features[: TAPS[-1] + 1]
            self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in CHANNELS)
        own = {key.replace("lin", "lins.", 1) if key.startswith("lin") else key: value for key, value in state.items()}
        self.load_state_dict(own, strict=True, assign=True)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode whatever ``mode`` is (a parent's ``.train()`` must not change the metric)."""
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance per sample.

        Args:
            x: images (B, 3, H, W) in [-1, 1].
            y: images of the same shape in [-1, 1].

        Returns:
            (B,) float32 distances, 0 for identical images.
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) batches of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = (torch.cat([x, y]).float() - self.shift) / self.scale
            distance = h.new_zeros(x.shape[0])
            for index, layer in enumerate(self.features):
                h = layer(h)
                if index in TAPS:
                    fx, fy = unit_normalize(h).chunk(2)
                    lin = self.lins[TAPS.index(index)]
                    distance = distance + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return distance


class LPIPSLoss(LossTerm):
    """The perceptual term: mean LPIPS distance between the reconstruction and its input (images in [-1, 1]).

    The network is frozen, stays in eval mode and is kept out of state dicts and checkpoints (a VGG16
    LPIPS would add ~60 MB to each); loading a checkpoint keeps the weights it was built with.

    Args:
        weight, warmup_steps: see ``LossTerm`` (SoftVQ-VAE: 1.0 with a 10k-step warm-up).
        weights_path: see ``LPIPS``.
    """

    frozen_networks = ("net",)

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, weights_path: str | Path | None = None) -> None:
        super().__init__(weight, warmup_steps)
        self.net = LPIPS(weights_path, option="module.losses.lpips.weights_path")

    def forward(self, batch: LossInputs) -> Tensor:
        return self.net(batch.output.reconstruction.float(), batch.inputs.float()).float().mean()
