"""Waveform reconstruction metrics (torchmetrics: sums over a split, reduced across processes).

* ``si_snr``: scale-invariant signal-to-noise ratio in dB (Le Roux et al., 2019). Both signals
  are made zero-mean; the target is projected onto: ``s = <x_hat, x> x / ||x||^2``,
  ``e = x_hat - s``, ``SI-SNR = 10 log10(||s||^2 / ||e||^2)``. Scaling ``x_hat`` by any
  positive factor leaves it unchanged; identical signals give a very large value (capped
  by ``eps``). ``ScaleInvariantSNR`` averages it over clips.
* ``MelDistance``: mean absolute difference of log10 mel spectrograms (one scale), averaged
  over every time-frequency bin of the split: 0 for identical audio.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchaudio.transforms import MelSpectrogram
from torchmetrics import Metric


def si_snr(x_hat: Tensor, x: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-clip SI-SNR in dB of ``x_hat`` against ``x``, both (..., T); returns (...,), fp32 (fp64 inside)."""
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have one shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    x_hat = x_hat.double() - x_hat.double().mean(-1, keepdim=True)
    x = x.double() - x.double().mean(-1, keepdim=True)
    scale = (x_hat * x).sum(-1, keepdim=True) / (x.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * x
    noise = x_hat - target
    ratio = (target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio)).float()


class ScaleInvariantSNR(Metric):
    """Mean SI-SNR (dB) over every clip passed to ``update(x_hat (B, 1, T), x (B, 1, T))``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, eps: float = 1e-8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        values = si_snr(x_hat.flatten(1), x.flatten(1), self.eps)
        self.total += values.double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class MelDistance(Metric):
    """Mean |log10 mel(x_hat) - log10 mel(x)| over all bins of all clips.

    Args:
        sample_rate: Hz of the audio.
        n_fft: STFT length (window = n_fft, hop = n_fft / 4).
        n_mels: mel bands.
        eps: floor before the log.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, sample_rate: int, n_fft: int = 1024, n_mels: int = 80, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mel = MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, power=1.0)
        self.eps = eps
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat and x must have one shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            diff = torch.log10(self.mel(x_hat.float()) + self.eps) - torch.log10(self.mel(x.float()) + self.eps)
        self.total += diff.abs().double().sum()
        self.count += diff.numel()

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()
