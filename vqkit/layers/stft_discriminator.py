"""Multi-scale STFT discriminator for waveforms (EnCodec's MS-STFT-D).

Each scale takes the complex STFT of the waveform (window ``w``, hop ``w / 4``), stacks its
real and imaginary parts as two channels of a (time x frequency) image and runs a small 2-D
CNN on it: a (3, 9) convolution, ``num_layers`` (3, 9) convolutions with time dilations
1, 2, 4, ... and frequency stride 2, a (3, 3) convolution and a (3, 3) convolution to one
channel, LeakyReLU(0.2) in between, weight norm on every convolution.

``forward`` returns the logits of all scales flattened and concatenated, (B, M), so the
adversarial module and its hinge / non-saturating losses take it as one logit map; a scale
weighs in proportion to its number of logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm


def _conv(norm: str, *args, **kwargs) -> nn.Module:
    conv = nn.Conv2d(*args, **kwargs)
    if norm == "weight_norm":
        return _weight_norm(conv)
    if norm == "none":
        return conv
    raise ValueError(f"unknown discriminator norm {norm!r}; expected 'weight_norm' or 'none'")


class STFTScaleDiscriminator(nn.Module):
    """One STFT resolution: waveform (B, 1, T) -> logits (B, 1, frames', freq')."""

    def __init__(self, window: int, channels: int = 32, num_layers: int = 3, norm: str = "weight_norm") -> None:
        super().__init__()
        self.window = window
        self.hop = max(window // 4, 1)
        self.register_buffer("stft_window", torch.hann_window(window), persistent=False)
        layers: list[nn.Module] = [_conv(norm, 2, channels, (3, 9), padding=(1, 4)), nn.LeakyReLU(0.2)]
        for i in range(num_layers):
            dilation = 2**i
            layers += [
                _conv(norm, channels, channels, (3, 9), stride=(1, 2), dilation=(dilation, 1), padding=(dilation, 4)),
                nn.LeakyReLU(0.2),
            ]
        layers += [_conv(norm, channels, channels, (3, 3), padding=1), nn.LeakyReLU(0.2)]
        layers.append(_conv(norm, channels, 1, (3, 3), padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            spec = torch.stft(x.float().flatten(1), self.window, self.hop, window=self.stft_window, return_complex=True)
            image = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, frames, freq)
        return self.net(image)


class MultiScaleSTFTDiscriminator(nn.Module):
    """Waveforms (B, 1, T) -> logits (B, M) of every STFT scale, concatenated (see module docstring).

    Args:
        windows: STFT window lengths, one sub-discriminator each (EnCodec 24 kHz: 2048, 1024, 512, 256, 128).
        channels: width of every sub-discriminator.
        num_layers: dilated, frequency-strided layers per sub-discriminator.
        in_channels: audio channels; only mono (1) is supported.
        norm: ``"weight_norm"`` (EnCodec) or ``"none"``.
    """

    def __init__(self, windows: Sequence[int] = (2048, 1024, 512, 256, 128), channels: int = 32,
                 num_layers: int = 3, in_channels: int = 1, norm: str = "weight_norm") -> None:
        super().__init__()
        if not windows or min(windows) < 16:
            raise ValueError(f"windows must be STFT lengths >= 16, got {list(windows)}")
        if in_channels != 1:
            raise ValueError(f"the STFT discriminator takes mono audio (in_channels=1), got in_channels={in_channels}")
        self.scales = nn.ModuleList(STFTScaleDiscriminator(int(w), channels, num_layers, norm) for w in windows)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected mono waveforms (B, 1, T), got {tuple(x.shape)}")
        shortest = max(scale.window for scale in self.scales)
        if x.shape[-1] < shortest // 2:
            raise ValueError(f"waveforms of {x.shape[-1]} samples are too short for a {shortest}-sample STFT window")
        return torch.cat([scale(x).flatten(1) for scale in self.scales], dim=1)
