"""The audio tokenizer model: waveforms <-> codes.

    >>> tok = load_tokenizer("artifacts/speech-rvq")
    >>> codes = tok.encode("speech.wav")        # int64 (1, N, S): N frames x S residual stages
    >>> wave = tok.decode(codes[..., :2])       # (1, 1, T) in [-1, 1] from the first 2 stages only
    >>> tok.bitrate_kbps, tok.frame_rate        # e.g. 6.4, 200.0
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vqkit.models.base import TokenizerModel
from vqkit.quantizers.base import Quantizer

AudioInput = Tensor | str | os.PathLike


class AudioTokenizer(TokenizerModel):
    """Mono waveforms <-> codes at the encoder's frame rate.

    Waveforms are float in [-1, 1] at ``sample_rate``: a batch (B, 1, T) or (B, T), one clip (T,)
    (a batch of one), or the path of an audio file (wav/flac/ogg; mixed down to mono and
    resampled to ``sample_rate``).

    Shapes (F = ``frame_rate``, N = ceil(T / hop), S = stages):
        - ``encode(audio)``: hard quantizers -> ids int64 (B, N) for single-stage quantizers,
          (B, N, S) for residual ones; soft quantizers -> tokens (B, N, D).
        - ``encode(audio, num_stages=s)``: residual quantizers, ids of the first ``s`` stages.
        - ``decode(codes, length=None)``: ids (B, N) / (B, N, s <= S) or tokens (B, N, D) ->
          waveforms (B, 1, N * hop) in [-1, 1], cut to ``length`` samples if given.

    ``bitrate_kbps`` = frame rate x stages x log2(codebook size) / 1000 (ids sent at a fixed width).

    Args:
        encoder: waveform encoder ``(B, 1, T) -> (tokens (B, N, D), T)`` with ``sample_rate`` and ``hop_length``.
        decoder: waveform decoder ``(tokens, T) -> (B, 1, T)``.
        quantizer: any backend of the quantizer contract (residual: multi-stage ids).
        normalization: ``{mean, std, range}``; waveforms in [-1, 1] pass unchanged by default.
    """

    modality = "audio"
    data_key = "audio"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer,
                 normalization: dict[str, Any] | None = None) -> None:
        normalization = {"mean": 0.0, "std": 1.0, "range": (-1.0, 1.0), **dict(normalization or {})}
        for name in ("sample_rate", "hop_length"):
            if not hasattr(encoder, name):
                raise ValueError(f"{type(encoder).__name__} has no {name}: not a waveform encoder")
        super().__init__(encoder, decoder, quantizer, normalization)
        self.sample_rate = int(encoder.sample_rate)
        self.hop_length = int(encoder.hop_length)

    @property
    def num_stages(self) -> int:
        """Ids per frame: the residual stages, 1 for single-stage quantizers."""
        return self.quantizer.num_stages or 1

    @property
    def frame_rate(self) -> float:
        """Frames (tokens) per second."""
        return self.sample_rate / self.hop_length

    def bitrate(self, num_stages: int | None = None) -> float:
        """Bits per second of the ids with the first ``num_stages`` stages (None: all)."""
        stages = self.num_stages if num_stages is None else num_stages
        if not 1 <= stages <= self.num_stages:
            raise ValueError(f"num_stages must be in [1, {self.num_stages}], got {num_stages}")
        return self.frame_rate * stages * math.log2(self.codebook_size)

    @property
    def bitrate_kbps(self) -> float:
        """kbit/s with every stage: frame rate x stages x log2(codebook size) / 1000."""
        return self.bitrate() / 1000

    @torch.no_grad()
    def encode(self, audio: AudioInput, num_stages: int | None = None) -> Tensor:
        """Waveforms -> ids (B, N) / (B, N, S) for hard quantizers, tokens (B, N, D) for soft ones."""
        x = self.as_waveform_batch(audio)
        tokens, _ = self.encoder(self.normalize(x.to(self.device)))
        if num_stages is not None and self.quantizer.num_stages is None:
            raise ValueError("num_stages applies to residual (multi-stage) quantizers only")
        kwargs = {} if num_stages is None else {"num_stages": num_stages}
        if self.soft:
            return self.quantizer(tokens, **kwargs).z_q
        return self.quantizer.encode(tokens, **kwargs)

    @torch.no_grad()
    def decode(self, codes: Tensor, length: int | None = None) -> Tensor:
        """Ids or tokens shaped as ``encode`` returns them -> waveforms (B, 1, T) in the data range.

        Args:
            codes: ids (B, N), ids (B, N, s) of the first s stages (residual), or float tokens (B, N, D).
            length: samples to keep (the input length); None keeps N * hop.
        """
        if not isinstance(codes, Tensor):
            raise TypeError(f"decode expects a torch.Tensor of ids or tokens, got {type(codes).__name__}")
        staged = self.quantizer.num_stages is not None
        if codes.is_floating_point():
            if codes.dim() != 3 or codes.shape[-1] != self.token_dim:
                raise ValueError(f"decode expects tokens (B, N, {self.token_dim}), got {tuple(codes.shape)}")
            tokens = codes.to(self.device)
        else:
            expected = "(B, N, s) with s <= " + str(self.num_stages) if staged else "(B, N)"
            if codes.dim() != (3 if staged else 2) or codes.shape[1] == 0:
                raise ValueError(f"decode expects ids {expected}, got {tuple(codes.shape)}")
            tokens = self.quantizer.decode(codes.to(self.device))
        if length is not None and not 0 < length <= tokens.shape[1] * self.hop_length:
            raise ValueError(f"length {length} does not fit {tokens.shape[1]} frames of {self.hop_length} samples")
        wave = self.decoder(tokens, length)
        return self.denormalize(wave)

    def as_waveform_batch(self, audio: AudioInput) -> Tensor:
        """A float batch (B, 1, T) at ``sample_rate`` from a tensor or an audio file path.

        Raises:
            FileNotFoundError: the path does not exist.
            TypeError: not a float tensor or a path.
            ValueError: wrong shape, NaN/Inf, or values outside [-1, 1].
        """
        if isinstance(audio, (str, os.PathLike)):
            from vqkit.modalities.audio_files import load_audio_file

            audio = load_audio_file(Path(audio), self.sample_rate).unsqueeze(0)
        if not isinstance(audio, Tensor):
            raise TypeError(f"expected a waveform tensor or an audio file path, got {type(audio).__name__}")
        if not audio.is_floating_point():
            raise TypeError(f"expected float waveforms in [-1, 1], got {audio.dtype}; int16 PCM: x.float() / 32768")
        if audio.dim() == 1:
            audio = audio.reshape(1, 1, -1)
        elif audio.dim() == 2:
            audio = audio.unsqueeze(1)
        if audio.dim() != 3 or audio.shape[1] != 1 or audio.shape[-1] == 0:
            raise ValueError(
                f"expected mono waveforms (B, 1, T), (B, T) or (T,), got shape {tuple(audio.shape)}; mix "
                "multi-channel audio down with x.mean(dim=1, keepdim=True)"
            )
        if not torch.isfinite(audio).all():
            raise ValueError("waveforms hold NaN or Inf values")
        peak = float(audio.abs().max())
        if peak > 1.0 + 1e-6:
            raise ValueError(
                f"waveforms must lie in [-1, 1], got a peak of {peak:.4g}; normalize with x / x.abs().max()"
            )
        return audio.float()

