"""Multi-scale STFT discriminator and adversarial training of the waveform model."""

from __future__ import annotations

import pytest
import torch

from vqkit.layers.stft_discriminator import MultiScaleSTFTDiscriminator
from vqkit.train import train


def test_logits_of_every_scale_and_gradients() -> None:
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(windows=(128, 64, 32), channels=4, num_layers=2)
    x = torch.randn(2, 1, 800, requires_grad=True)
    logits = disc(x)
    assert logits.dim() == 2 and logits.shape[0] == 2
    per_scale = [scale(x).flatten(1).shape[1] for scale in disc.scales]
    assert logits.shape[1] == sum(per_scale) and len(set(per_scale)) == 3
    logits.mean().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in disc.parameters())
    with pytest.raises(ValueError, match="mono"):
        disc(torch.randn(2, 2, 800))
    with pytest.raises(ValueError, match="in_channels"):
        MultiScaleSTFTDiscriminator(in_channels=2)


def test_gan_model_trains_with_the_discriminator(make_config) -> None:
    cfg = make_config("model=audio_conv_gan", "data=speech", "quantizer=residual", "quantizer.num_stages=2",
                      "module.discriminator.windows=[64,32]", "module.discriminator.channels=4", "module.disc_start=0",
                      "debug=fdr")
    result = train(cfg)
    metrics = result["metrics"]
    assert metrics["train/loss"] > 0 and "train/d_loss" in metrics and "train/g_loss" in metrics
    assert "train/mel" in metrics and not any(k.startswith("train/lpips") for k in metrics)  # no perceptual term
