"""Convolutional waveform encoder/decoder in the SEANet style of SoundStream and EnCodec.

Encoder: a 7-tap input convolution, then per stride ``s`` residual units (dilated 3-tap
convolution + 1x1 convolution, identity skip) and a strided convolution (kernel ``2s``,
stride ``s``) that doubles the width; an optional LSTM over the frames (with a skip);
ELU and a 7-tap convolution to ``latent_dim``. The decoder mirrors it with transposed
convolutions. Mono audio only.

Frame rate. The hop is the product of the strides: ``hop = prod(strides)`` samples per
token, so the tokens come at ``sample_rate / hop`` Hz (EnCodec 24 kHz: strides
(2, 4, 5, 8), hop 320, 75 Hz). Inputs whose length is not a multiple of the hop are
padded with zeros at the end and the decoder trims its output back to the input length.

Shapes: ``encoder(x (B, 1, T) or (B, T)) -> (tokens (B, ceil(T / hop), latent_dim), T)``;
``decoder(tokens, T) -> (B, 1, T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

ConvNorm = Literal["weight_norm", "none"]


def _maybe_weight_norm(module: nn.Module, norm: ConvNorm) -> nn.Module:
    if norm == "weight_norm":
        return weight_norm(module)
    if norm == "none":
        return module
    raise ValueError(f"unknown convolution norm {norm!r}; expected 'weight_norm' or 'none'")


class PaddedConv1d(nn.Module):
    """Conv1d with explicit (left, right) zero padding so that ``T_out = T_in / stride`` for ``kernel = 2 stride``.

    Odd kernels with stride 1 keep the length (``(k - 1) * dilation`` split evenly).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
        norm: ConvNorm = "weight_norm",
    ) -> None:
        super().__init__()
        self.conv = _maybe_weight_norm(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation), norm
        )
        total = (kernel_size - 1) * dilation + 1 - stride
        self.padding = (total - total // 2, total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.padding))


class PaddedConvTranspose1d(nn.Module):
    """ConvTranspose1d (kernel ``2 stride``) trimmed so that ``T_out = T_in * stride``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: ConvNorm = "weight_norm"
    ) -> None:
        super().__init__()
        self.conv = _maybe_weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride), norm)
        total = kernel_size - stride
        self.trim = (total - total // 2, total // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y[..., self.trim[0] : y.shape[-1] - self.trim[1]]


class ResidualUnit(nn.Module):
    """ELU -> dilated conv (k, channels -> channels / compress) -> ELU -> 1x1 conv back; identity skip."""

    def __init__(
        self, channels: int, kernel_size: int = 3, dilation: int = 1, compress: int = 2,
        norm: ConvNorm = "weight_norm",
    ) -> None:
        super().__init__()
        hidden = max(channels // compress, 1)
        self.block = nn.Sequential(
            nn.ELU(),
            PaddedConv1d(channels, hidden, kernel_size, dilation=dilation, norm=norm),
            nn.ELU(),
            PaddedConv1d(hidden, channels, 1, norm=norm),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class FrameLSTM(nn.Module):
    """A stacked LSTM over the frames of (B, C, T) with a skip connection (EnCodec's SLSTM)."""

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.lstm(x.transpose(1, 2))
        return x + y.transpose(1, 2)


def _check_strides(strides: Sequence[int]) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    if not strides or min(strides) < 1:
        raise ValueError(f"strides must be a non-empty list of positive integers, got {list(strides)}")
    return strides


class _SEANetGeometry(nn.Module):
    """What the encoder and decoder share: strides, widths and the frame rate."""

    def __init__(
        self, latent_dim: int, channels: int, strides: Sequence[int], sample_rate: int, num_res_layers: int,
        dilation_base: int, lstm_layers: int, norm: ConvNorm,
    ) -> None:
        super().__init__()
        self.strides = _check_strides(strides)
        if sample_rate < 1 or latent_dim < 1 or channels < 1:
            raise ValueError(
                f"sample_rate, latent_dim and channels must be >= 1, got {sample_rate}, {latent_dim}, {channels}"
            )
        self.latent_dim = latent_dim
        self.channels = channels
        self.sample_rate = sample_rate
        self.num_res_layers = num_res_layers
        self.dilation_base = dilation_base
        self.lstm_layers = lstm_layers
        self.norm = norm

    @property
    def hop_length(self) -> int:
        """Samples per token: the product of the strides."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Tokens per second: ``sample_rate / hop_length``."""
        return self.sample_rate / self.hop_length

    def _res_units(self, width: int) -> list[nn.Module]:
        return [
            ResidualUnit(width, 3, dilation=self.dilation_base**j, norm=self.norm) for j in range(self.num_res_layers)
        ]


class ConvAudioEncoder(_SEANetGeometry):
    """Waveform (B, 1, T) -> tokens (B, ceil(T / hop), latent_dim) and the length T (see module docstring).

    Args:
        latent_dim: token width D.
        channels: width after the input convolution; doubles at every stride.
        strides: downsampling factors in encoder order (EnCodec 24 kHz: (2, 4, 5, 8)).
        sample_rate: Hz of the waveforms it is trained on (sets ``frame_rate``; the network itself does not use it).
        num_res_layers: residual units per stride, with dilations ``dilation_base ** j``.
        dilation_base: dilation growth of the residual units.
        lstm_layers: LSTM layers over the frames (0: none).
        norm: ``"weight_norm"`` (EnCodec) or ``"none"``.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        channels: int = 32,
        strides: Sequence[int] = (2, 4, 5, 8),
        sample_rate: int = 24_000,
        num_res_layers: int = 1,
        dilation_base: int = 2,
        lstm_layers: int = 2,
        norm: ConvNorm = "weight_norm",
    ) -> None:
        super().__init__(latent_dim, channels, strides, sample_rate, num_res_layers, dilation_base, lstm_layers, norm)
        layers: list[nn.Module] = [PaddedConv1d(1, channels, 7, norm=norm)]
        width = channels
        for stride in self.strides:
            layers += self._res_units(width)
            layers += [nn.ELU(), PaddedConv1d(width, 2 * width, 2 * stride, stride=stride, norm=norm)]
            width *= 2
        if lstm_layers > 0:
            layers.append(FrameLSTM(width, lstm_layers))
        layers += [nn.ELU(), PaddedConv1d(width, latent_dim, 7, norm=norm)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, int]:
        x = as_mono_batch(x)
        length = x.shape[-1]
        pad = -length % self.hop_length
        z = self.net(F.pad(x, (0, pad)))  # (B, D, N)
        return z.transpose(1, 2), length


class ConvAudioDecoder(_SEANetGeometry):
    """Tokens (B, N, latent_dim) and the length T -> waveform (B, 1, T); mirrors ``ConvAudioEncoder``.

    Takes the encoder's arguments (``strides`` in encoder order; they are applied reversed).
    """

    def __init__(
        self,
        latent_dim: int = 128,
        channels: int = 32,
        strides: Sequence[int] = (2, 4, 5, 8),
        sample_rate: int = 24_000,
        num_res_layers: int = 1,
        dilation_base: int = 2,
        lstm_layers: int = 2,
        norm: ConvNorm = "weight_norm",
    ) -> None:
        super().__init__(latent_dim, channels, strides, sample_rate, num_res_layers, dilation_base, lstm_layers, norm)
        width = channels * 2 ** len(self.strides)
        layers: list[nn.Module] = [PaddedConv1d(latent_dim, width, 7, norm=norm)]
        if lstm_layers > 0:
            layers.append(FrameLSTM(width, lstm_layers))
        for stride in reversed(self.strides):
            layers += [nn.ELU(), PaddedConvTranspose1d(width, width // 2, 2 * stride, stride, norm=norm)]
            width //= 2
            layers += self._res_units(width)
        layers += [nn.ELU(), PaddedConv1d(width, 1, 7, norm=norm)]
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: Tensor, length: int | Tensor | Sequence[int] | None = None) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.latent_dim:
            raise ValueError(f"expected tokens (B, N, {self.latent_dim}), got {tuple(tokens.shape)}")
        y = self.net(tokens.transpose(1, 2))  # (B, 1, N * hop)
        if length is not None:
            length = int(length[0] if isinstance(length, (list, tuple)) else length)
            if not 0 < length <= y.shape[-1]:
                raise ValueError(f"length {length} does not fit {tokens.shape[1]} tokens of {self.hop_length} samples")
            y = y[..., :length]
        return y


def as_mono_batch(x: Tensor) -> Tensor:
    """(B, T) or (B, 1, T) float waveforms -> (B, 1, T); a clear error for anything else."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"expected a float waveform tensor (B, 1, T), got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 2:
        x = x.unsqueeze(1)
    if x.dim() != 3 or x.shape[1] != 1:
        raise ValueError(
            f"expected mono waveforms (B, 1, T) or (B, T), got shape {tuple(x.shape)}; mix multi-channel audio "
            "down with x.mean(dim=1, keepdim=True)"
        )
    if x.shape[-1] == 0:
        raise ValueError("expected at least one sample, got an empty waveform")
    return x
