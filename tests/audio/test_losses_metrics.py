"""Multi-scale mel loss and the waveform metrics (SI-SNR, mel distance)."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.losses import LossInputs, LossTerm
from vqkit.losses.spectral import MultiScaleMelLoss
from vqkit.metrics.audio import MelDistance, ScaleInvariantSNR, si_snr
from vqkit.models import ModelOutput
from vqkit.quantizers import QuantizerOutput

RATE = 8_000


def tone(freq: float, n: int = 8000) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / RATE
    return torch.sin(2 * math.pi * freq * t).float()


def speechlike(seed: int = 0, b: int = 2, n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 1, n, generator=g) * torch.linspace(0, 1, n).sin()).clamp(-1, 1) * 0.3


def test_spectral_loss_is_zero_for_identical_audio_and_grows_with_noise() -> None:
    loss = MultiScaleMelLoss(RATE, windows=(32, 64, 256))
    x = speechlike()
    total, terms = loss.distance(x, x)
    assert float(total) == 0.0 and set(terms) == {"mel_l1", "mel_l2", "log_mel_l1", "waveform_l1"}
    small, _ = loss.distance(x + 0.01 * speechlike(1), x)
    large, _ = loss.distance(x + 0.1 * speechlike(1), x)
    assert 0 < float(small) < float(large)
    # as a loss term: the distance of the model's reconstruction to its input
    y = x + 0.1 * speechlike(1)
    quantized = QuantizerOutput(z_q=torch.zeros(2, 5, 4), indices=torch.zeros(2, 5, dtype=torch.long),
                                loss=torch.zeros(()))
    output = ModelOutput(reconstruction=y, quantized=quantized, latents=quantized.z_q)
    batch = LossInputs(inputs=x, data=x, output=output)
    value, parts = loss(batch)
    assert isinstance(loss, LossTerm) and float(value) == float(large) and parts.keys() == terms.keys()


def test_spectral_loss_gradient_and_zero_weight_is_logged_only() -> None:
    x = speechlike()
    y = (x + 0.05 * speechlike(2)).requires_grad_(True)
    loss = MultiScaleMelLoss(RATE, windows=(64,), mel_l1=0, mel_l2=0, log_mel_l1=0, waveform_l1=1)
    total, terms = loss.distance(y, x)
    total.backward()
    torch.testing.assert_close(total, (y - x).abs().mean())
    assert terms["log_mel_l1"] > 0  # computed and logged
    with pytest.raises(ValueError, match="shape"):
        MultiScaleMelLoss(RATE).distance(x, x[..., :-1])
    with pytest.raises(ValueError, match=">= 0"):
        MultiScaleMelLoss(RATE, mel_l1=-1)


def test_spectral_loss_stays_fp32_under_autocast() -> None:
    loss = MultiScaleMelLoss(RATE, windows=(64,))
    x = speechlike()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss.distance(x.bfloat16(), x)
    assert total.dtype == torch.float32


def test_si_snr_known_values() -> None:
    x = tone(100.0)  # 100 Hz and 300 Hz tones over whole periods: orthogonal and zero-mean
    noise = tone(300.0)
    assert float(si_snr(x + 0.1 * noise, x)) == pytest.approx(20.0, abs=1e-3)
    assert float(si_snr(x + noise, x)) == pytest.approx(0.0, abs=1e-3)
    assert float(si_snr(x, x)) > 100  # identical: only eps limits it
    # scale invariance: a scaled copy of the estimate scores the same
    assert float(si_snr(3.7 * (x + 0.1 * noise), x)) == pytest.approx(20.0, abs=1e-3)
    # an offset is removed (zero-mean) before the projection
    assert float(si_snr(x + 0.1 * noise + 0.5, x)) == pytest.approx(20.0, abs=1e-3)


def test_si_snr_metric_averages_clips() -> None:
    x = torch.stack([tone(100.0), tone(200.0)]).unsqueeze(1)  # (2, 1, T)
    estimate = x + torch.stack([0.1 * tone(300.0), tone(500.0)]).unsqueeze(1)
    metric = ScaleInvariantSNR()
    metric.update(estimate[:1], x[:1])
    metric.update(estimate[1:], x[1:])
    assert float(metric.compute()) == pytest.approx(10.0, abs=1e-3)  # mean of 20 dB and 0 dB


def test_mel_distance() -> None:
    metric = MelDistance(RATE, n_fft=256, n_mels=32)
    x = speechlike()
    metric.update(x, x)
    assert float(metric.compute()) == 0.0
    metric.reset()
    metric.update(x + 0.05 * speechlike(3), x)
    near = float(metric.compute())
    metric.reset()
    metric.update(0.2 * speechlike(4), x)
    assert 0 < near < float(metric.compute())
