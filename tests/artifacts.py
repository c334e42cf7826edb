"""Tiny models as configs (image, 1-D image, audio), vqkit.train-shaped checkpoints and artifact folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vqkit.models import TokenizerModel

# A model small enough to build in milliseconds: f = 2, 4-dim tokens, 16 codes.
TINY_MODEL: dict[str, Any] = {
    "_target_": "vqkit.models.ImageTokenizer",
    "encoder": {
        "_target_": "vqkit.modalities.image.ConvImageEncoder",
        "latent_dim": 4,
        "channels": 4,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
    },
    "decoder": {
        "_target_": "vqkit.modalities.image.ConvImageDecoder",
        "latent_dim": 4,
        "channels": 4,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
    },
    "quantizer": {"_target_": "vqkit.quantizers.VectorQuantizer", "dim": 4, "codebook_size": 16},
    "normalization": {"mean": 0.5, "std": 0.5, "range": [0.0, 1.0]},
}
# A 1-D (TiTok-style) model: 6 tokens per 8x8 image.
TINY_1D = {
    "image_size": 8,
    "patch_size": 4,
    "num_latent_tokens": 6,
    "latent_dim": 4,
    "size": None,
    "width": 16,
    "depth": 1,
    "num_heads": 2,
}
TINY_1D_MODEL: dict[str, Any] = {
    **TINY_MODEL,
    "encoder": {"_target_": "vqkit.modalities.image_1d.TransformerImageEncoder", **TINY_1D},
    "decoder": {"_target_": "vqkit.modalities.image_1d.TransformerImageDecoder", **TINY_1D},
}
SOFTVQ = {"_target_": "vqkit.quantizers.SoftVectorQuantizer", "dim": 4, "codebook_size": 16}
# A mono waveform model: 8 kHz, hop 8 (strides 2 x 4), 2 residual stages of 16 codes; builds in milliseconds.
TINY_AUDIO_CODEC = {
    "latent_dim": 8,
    "channels": 4,
    "strides": [2, 4],
    "sample_rate": 8000,
    "num_res_layers": 1,
    "dilation_base": 2,
    "lstm_layers": 0,
    "norm": "weight_norm",
}
TINY_AUDIO_MODEL: dict[str, Any] = {
    "_target_": "vqkit.models.AudioTokenizer",
    "encoder": {"_target_": "vqkit.modalities.audio.ConvAudioEncoder", **TINY_AUDIO_CODEC},
    "decoder": {"_target_": "vqkit.modalities.audio.ConvAudioDecoder", **TINY_AUDIO_CODEC},
    "quantizer": {"_target_": "vqkit.quantizers.ResidualQuantizer", "dim": 8, "codebook_size": 16, "num_stages": 2},
    "normalization": {"mean": 0.0, "std": 1.0, "range": [-1.0, 1.0]},
}
# Entries of a training module's state dict that are not the model's: export must leave them out.
NOT_THE_MODEL = {"discriminator.net.0.weight": torch.ones(3), "losses.repa.projector.0.weight": torch.ones(2, 2)}


def tiny_checkpoint(
    path: Path, model: dict[str, Any] = TINY_MODEL, config: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """A checkpoint shaped like vqkit.train's: ``vqkit_config.model`` = ``config`` (default ``model``) and the
    ``model.*`` weights of ``model``, beside weights of other modules (``NOT_THE_MODEL``)."""
    weights = TokenizerModel.from_config(model).state_dict()
    checkpoint = {
        "state_dict": {**{f"model.{name}": t for name, t in weights.items()}, **NOT_THE_MODEL},
        "vqkit_config": {"model": config or model},
        "global_step": 7,
        "epoch": 1,
        "pytorch-lightning_version": "2.6.6",
        **extra,
    }
    torch.save(checkpoint, path)
    return path


def edit_config(directory: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``edit`` to the parsed config.json of an artifact folder and write it back."""
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
