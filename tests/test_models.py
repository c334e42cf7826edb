"""Every model config (conf/model/*.yaml) trains a step, exports, loads with vqkit.load_tokenizer, and the
artifact is the trained model: same tensors, same codes, and codes that decode back to the input's shape."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import vqkit
from tests.conftest import fast_overrides
from vqkit.config import CONF_DIR
from vqkit.export import export_tokenizer
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.lit.run_config import module_from_config
from vqkit.models import TokenizerModel
from vqkit.train import train

ONE_STEP = ["trainer.max_steps=1", "test=false", "callbacks.progress_bar.refresh_rate=0"]
NO_PICTURES = [  # image/audio callbacks (callbacks=text has none of them)
    "callbacks.reconstruction_grid=null", "callbacks.codebook_usage_plot=null", "callbacks.audio_samples=null",
]
# Tiny discriminators: a 2-layer PatchGAN takes images from 12 pixels; two short STFT scales for waveforms. The
# LPIPS term (a VGG16, not part of the model) is left out: tests/test_tokenizer_module.py trains with it.
GAN = {"image": ["module.discriminator.channels=8", "module.discriminator.num_layers=2", "module.losses.lpips=null"],
       "audio": ["module.discriminator.windows=[64,32]", "module.discriminator.channels=4"]}


def model_overrides(name: str) -> list[str]:
    """``model=<name>`` with the embedded data of its modality."""
    if name.startswith("text"):
        return [f"model={name}", "data=shakespeare"]
    overrides = [f"model={name}", *NO_PICTURES] + (["data=speech"] if name.startswith("audio") else [])
    if name.endswith("_gan"):
        overrides += GAN["audio" if name.startswith("audio") else "image"]
    return overrides


MODELS = [p.stem for p in sorted((CONF_DIR / "model").glob("*.yaml"))]


def sample_input(model: TokenizerModel, cfg) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if model.modality == "image":
        return torch.rand(2, 3, cfg.data.image_size, cfg.data.image_size, generator=g)
    length = 50 * model.hop_length  # whole frames: the decoder gives N * hop samples back
    t = torch.arange(length) / model.sample_rate
    return (0.5 * torch.sin(2 * math.pi * 220 * t) + 0.1 * torch.randn(2, 1, length, generator=g)).clamp(-1, 1)


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_exports_and_loads_as_the_trained_model(name: str, tmp_path: Path) -> None:
    from tests.conftest import compose_config

    overrides = model_overrides(name) + ONE_STEP
    cfg = compose_config(fast_overrides(overrides) + overrides, tmp_path / "run")
    check_artifact_is_the_trained_model(cfg, train(cfg), tmp_path / "artifact")


def check_artifact_is_the_trained_model(cfg, result: dict, out: Path) -> None:
    """Export the checkpoint of a one-step run to ``out``, load it with vqkit.load_tokenizer, and check it is the
    trained model: text tokenizers round-trip a line losslessly; image/audio artifacts hold the same tensors,
    encode the same codes, decode them to the input's shape, and hard codes decode to the model's reconstruction."""
    checkpoint = load_checkpoint(result["checkpoint"])
    assert checkpoint["global_step"] == 1
    export_tokenizer(result["checkpoint"], out)
    tok = vqkit.load_tokenizer(out)

    if tok.modality == "text":
        text = "Shall I compare thee to a summer's day?\n"
        assert tok.decode(tok.encode(text)) == text  # the text tokenizer is lossless
        return

    module = module_from_config(OmegaConf.create(checkpoint["vqkit_config"]))
    module.load_state_dict(checkpoint["state_dict"])
    model = module.model.eval()
    assert type(tok) is type(model) and not tok.training
    state = model.state_dict()
    assert tok.state_dict().keys() == state.keys()
    assert all(torch.equal(t, state[k]) for k, t in tok.state_dict().items()), "the artifact's tensors differ"

    x = sample_input(tok, cfg)
    codes = tok.encode(x)
    assert torch.equal(codes, model.encode(x)), "the artifact encodes differently from the trained model"
    assert tok.decode(codes).shape == x.shape
    if not tok.soft:
        assert not codes.is_floating_point()
        # the same network either way; only the straight-through sum z + (q - z) rounds differently from q
        torch.testing.assert_close(model.decode(codes), model.reconstruct(x), atol=1e-5, rtol=0)
