"""The audio tokenizer model: waveforms <-> codes.

    >>> tok = load_tokenizer("artifacts/speech-rvq")
    >>> codes = tok.encode("speech.wav")        # int64 (1, N, S): N frames x S residual stages
    >>> wave = tok.decode(codes[..., :2])       # (1, 1, T) in [-1, 1] from the first 2 stages only
    >>> tok.bitrate_kbps, tok.frame_rate        # e.g. 6.4, 200.0
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from vqkit.models.base import TokenizerModel
from vqkit.quantizers.base import Quantizer

AudioInput = Tensor | np.ndarray | str | os.PathLike
Layout = Literal["ct", "tc", "bt"]
LAYOUTS: dict[str, str] = {
    "ct": "(channels, samples), as torchaudio.load returns",
    "tc": "(samples, channels), as soundfile.read returns",
    "bt": "(batch, samples), a batch of mono clips",
}
MAX_CHANNELS = 8  # the most channels a 2-D input's short side may hold for its layout to be inferred (7.1 audio)


class AudioTokenizer(TokenizerModel):
    """Mono waveforms <-> codes at the encoder's frame rate.

    Waveforms are float in [-1, 1] at ``sample_rate``, as a torch tensor or numpy array, or the path of an
    audio file (wav/flac/ogg; mixed down to mono and resampled to ``sample_rate``). Array layouts (the rule
    of ``waveform_batch``):

        - (T,): one mono clip;
        - 2-D, one clip: (C, T) if shape[0] <= 8 < shape[1] (torchaudio's layout), (T, C) if
          shape[1] <= 8 < shape[0] (soundfile's); any other 2-D shape is refused, since it cannot be told
          apart. ``layout="ct"`` / ``"tc"`` states the layout, ``layout="bt"`` reads (B, T) as B mono clips;
        - (B, C, T): a batch, C <= 8.

    Several channels are mixed down to mono by their mean (the model is mono), with a warning the first
    time a tokenizer does it. Empty inputs (T = 0 or B = 0) are refused.

    Shapes (F = ``frame_rate``, N = ceil(T / hop), S = stages):
        - ``encode(audio)``: hard quantizers -> ids int64 (B, N) for single-stage quantizers,
          (B, N, S) for residual ones; soft quantizers -> tokens (B, N, D).
        - ``encode(audio, num_stages=s)``: residual quantizers, ids of the first ``s`` stages.
        - ``decode(codes, length=None)``: ids (B, N) / (B, N, s <= S) or tokens (B, N, D) ->
          waveforms (B, 1, N * hop) in [-1, 1], cut to ``length`` samples if given.

    ``bitrate_kbps`` = frame rate x stages x log2(codebook size) / 1000 (ids sent at a fixed width).
    Variable-length tokens (``quantizer=gq``): ids (B, N) hold the code at each token's last frame and -1 inside
    it; a token costs log2(K) + log2(max_token_len) bits (code and length), ``bitrate`` is that at the quantizer's
    ``target_rate`` (or at one token per frame, the most it can emit, without one) and ``realised_bitrate(ids)``
    what given ids cost.

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
        self._warned_mixdown = False

    @property
    def num_stages(self) -> int:
        """Ids per frame: the residual stages, 1 for single-stage quantizers."""
        return self.quantizer.num_stages or 1

    @property
    def frame_rate(self) -> float:
        """Frames (tokens) per second."""
        return self.sample_rate / self.hop_length

    @property
    def variable_tokens(self) -> bool:
        """True for variable-length tokens (``quantizer=gq``): one id per token, -1 at the frames inside it."""
        return bool(self.quantizer.variable_tokens)

    @property
    def token_bits(self) -> float:
        """Bits of one token of one stage: log2(K), plus log2(max_token_len) for a variable-length token's length."""
        bits = math.log2(self.codebook_size)
        return bits + math.log2(self.quantizer.max_token_len) if self.variable_tokens else bits

    @property
    def token_rate(self) -> float:
        """Tokens per second: the frame rate, or for variable-length tokens the target (one per frame without)."""
        target = getattr(self.quantizer, "target_rate", None) if self.variable_tokens else None
        return self.frame_rate * (1.0 if target is None else target)

    def bitrate(self, num_stages: int | None = None) -> float:
        """Bits per second of the ids with the first ``num_stages`` stages (None: all); variable-length tokens:
        at the target rate (see the class docstring; ``realised_bitrate`` for given ids)."""
        stages = self.num_stages if num_stages is None else num_stages
        if not 1 <= stages <= self.num_stages:
            raise ValueError(f"num_stages must be in [1, {self.num_stages}], got {num_stages}")
        return self.token_rate * stages * self.token_bits

    def realised_bitrate(self, ids: Tensor) -> float:
        """Bits per second that ids (B, N) / (B, N, S) of ``encode`` cost: tokens x ``token_bits`` over their
        duration (N frames / ``frame_rate`` per clip). Equal to ``bitrate`` for fixed-rate ids."""
        if ids.is_floating_point() or ids.dim() not in (2, 3) or ids.shape[1] == 0:
            raise ValueError(f"realised_bitrate takes the integer ids (B, N) / (B, N, S) of encode, got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        clips, frames = ids.shape[:2]
        seconds = clips * frames / self.frame_rate
        return float((ids >= 0).sum()) * self.token_bits / seconds

    @property
    def bitrate_kbps(self) -> float:
        """kbit/s with every stage: frame rate x stages x log2(codebook size) / 1000."""
        return self.bitrate() / 1000

    @torch.no_grad()
    def encode(self, audio: AudioInput, num_stages: int | None = None, layout: Layout | None = None) -> Tensor:
        """Waveforms -> ids (B, N) / (B, N, S) for hard quantizers, tokens (B, N, D) for soft ones.

        ``layout`` states how a 2-D array is laid out ('ct', 'tc' or 'bt'; see the class docstring).
        """
        x = self.as_waveform_batch(audio, layout=layout)
        tokens, _ = self.encoder(self.normalize(x.to(self.device)))
        if num_stages is not None and self.quantizer.num_stages is None:
            raise ValueError("num_stages applies to residual (multi-stage) quantizers only")
        kwargs = {} if num_stages is None else {"num_stages": num_stages}
        if self.soft:
            return self.decoder_tokens(self.quantizer(tokens, **kwargs))
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
        floating = codes.is_floating_point()
        expected = (
            f"tokens (B, N, {self.token_dim})" if floating
            else f"ids (B, N, s) with s <= {self.num_stages}" if staged else "ids (B, N)"
        )
        if codes.dim() != (3 if floating or staged else 2) or (floating and codes.shape[-1] != self.token_dim):
            one_clip = codes.dim() == (2 if floating or staged else 1)
            hint = "; one clip's codes: decode(codes[None])" if one_clip else ""
            raise ValueError(f"decode expects {expected}, got {tuple(codes.shape)}{hint}")
        if codes.shape[0] == 0:
            raise ValueError(
                f"decode got an empty batch (B = 0) of codes, shape {tuple(codes.shape)}; pass the codes of at "
                "least one clip"
            )
        if codes.shape[1] == 0:
            raise ValueError(f"decode got codes of 0 frames, shape {tuple(codes.shape)}; there is nothing to decode")
        tokens = codes.to(self.device) if floating else self.tokens_of_ids(codes.to(self.device))
        if length is not None and not 0 < length <= tokens.shape[1] * self.hop_length:
            raise ValueError(f"length {length} does not fit {tokens.shape[1]} frames of {self.hop_length} samples")
        wave = self.decoder(tokens, length)
        return self.denormalize(wave)

    def as_waveform_batch(self, audio: AudioInput, layout: Layout | None = None) -> Tensor:
        """A float batch (B, 1, T) at ``sample_rate`` from an array (layouts: the class docstring) or a file path.

        Raises:
            FileNotFoundError: the path does not exist.
            TypeError: not a float array or a path.
            ValueError: a layout that cannot be told, an empty input, NaN/Inf, or values outside [-1, 1].
        """
        if isinstance(audio, (str, os.PathLike)):
            from vqkit.modalities.audio_files import load_audio_file

            path = Path(audio)
            if layout is not None:
                raise ValueError(f"layout={layout!r} is for arrays; the file {path} is read as it is")
            wave = load_audio_file(path, self.sample_rate)  # mono (1, T)
            if wave.shape[-1] == 0:
                raise ValueError(f"{path} holds no audio (0 samples); encode a file with at least one sample")
            return _check_range(wave.unsqueeze(0), str(path))
        if isinstance(audio, np.ndarray):
            if not np.issubdtype(audio.dtype, np.floating):
                raise TypeError(
                    f"expected float waveforms in [-1, 1], got a numpy {audio.dtype} array; int16 PCM: "
                    "x.astype(np.float32) / 32768 (or soundfile.read(path, dtype='float32'))"
                )
            audio = torch.from_numpy(np.ascontiguousarray(audio))
        if not isinstance(audio, Tensor):
            raise TypeError(
                f"expected a waveform tensor or numpy array, or an audio file path, got {type(audio).__name__}"
            )
        if not audio.is_floating_point():
            raise TypeError(f"expected float waveforms in [-1, 1], got {audio.dtype}; int16 PCM: x.float() / 32768")
        wave = waveform_batch(audio, layout)
        if wave.shape[1] > 1:
            if not self._warned_mixdown:
                warnings.warn(
                    f"mixing {wave.shape[1]} channels down to mono by their mean (this tokenizer is mono), input "
                    f"shape {tuple(audio.shape)}; for a batch of mono clips pass (B, 1, T), or (B, T) with "
                    "layout='bt'",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned_mixdown = True
            wave = wave.mean(dim=1, keepdim=True)
        return _check_range(wave, "the waveform")


def waveform_batch(audio: Tensor, layout: Layout | None = None) -> Tensor:
    """``audio`` -> (B, C, T) by the layout rule of ``AudioTokenizer`` (channels are not mixed here).

    Raises:
        ValueError: an unknown ``layout``, a 2-D shape whose layout cannot be told, more than 8 channels in a
            3-D input (channels last?), another number of dims, or an empty input (T = 0 or B = 0).
    """
    shape = tuple(audio.shape)
    if layout is not None and layout not in LAYOUTS:
        known = "; ".join(f"{name!r}: {meaning}" for name, meaning in LAYOUTS.items())
        raise ValueError(f"layout must be None (inferred) or one of {known}; got {layout!r}")
    if layout is not None and audio.dim() != 2:
        raise ValueError(f"layout={layout!r} is for 2-D inputs; got shape {shape} (1-D is (T,), 3-D is (B, C, T))")
    if audio.numel() == 0 and audio.dim() in (1, 2, 3):
        if shape[0] == 0 and (audio.dim() == 3 or layout == "bt"):
            raise ValueError(f"got an empty batch (B = 0) of waveforms, shape {shape}; pass at least one clip")
        raise ValueError(
            f"got an empty waveform (0 samples), shape {shape}; an empty file or a slice past the end? "
            "Pass at least one sample"
        )
    if audio.dim() == 1:
        wave = audio.reshape(1, 1, -1)
    elif audio.dim() == 2:
        rows, cols = shape
        if layout is None:
            if rows <= MAX_CHANNELS < cols:
                layout = "ct"
            elif cols <= MAX_CHANNELS < rows:
                layout = "tc"
            else:
                raise ValueError(
                    f"cannot tell the layout of 2-D audio {shape}: (channels, samples) needs shape[0] <= "
                    f"{MAX_CHANNELS} < shape[1], soundfile's (samples, channels) needs shape[1] <= {MAX_CHANNELS} < "
                    "shape[0]. Pass layout='ct' or layout='tc', layout='bt' for a batch of mono clips (B, T), "
                    "or a batch (B, C, T)"
                )
        wave = {"ct": audio.unsqueeze(0), "tc": audio.T.unsqueeze(0), "bt": audio.unsqueeze(1)}[layout]
    elif audio.dim() == 3:
        if shape[1] > MAX_CHANNELS:
            hint = "; channels last? use x.permute(0, 2, 1)" if shape[2] <= MAX_CHANNELS else ""
            raise ValueError(
                f"expected a batch (B, C, T) with C <= {MAX_CHANNELS} channels, got shape {shape}{hint}"
            )
        wave = audio
    else:
        raise ValueError(
            f"expected waveforms (T,), (C, T), (T, C) or (B, C, T), got {audio.dim()}-D shape {shape}"
        )
    return wave


def _check_range(wave: Tensor, source: str) -> Tensor:
    """``wave`` as float32 after checking it is finite and in [-1, 1]."""
    if not torch.isfinite(wave).all():
        raise ValueError(f"{source}: the waveform holds NaN or Inf values")
    peak = float(wave.abs().max())
    if peak > 1.0 + 1e-6:
        raise ValueError(
            f"{source}: waveforms must lie in [-1, 1], got a peak of {peak:.4g}; normalize with x / x.abs().max()"
        )
    return wave.float()
