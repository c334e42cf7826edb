"""Reading audio files: one loader for the data modules and the audio tokenizer (mono mixdown, resampling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import Tensor


def read_audio(path: str, sample_rate: int, start: int = 0, frames: int = -1) -> Tensor:
    """Read ``frames`` frames from ``start`` (native rate) of a file as mono float32 (1, T) at ``sample_rate``.

    Raises:
        sf.LibsndfileError / RuntimeError / ValueError: the file cannot be decoded.
    """
    data, native_rate = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)  # (T, C)
    wave = torch.from_numpy(np.ascontiguousarray(data.T)).mean(0, keepdim=True)  # mono mixdown
    if native_rate != sample_rate and wave.shape[-1] > 0:  # torchaudio cannot resample 0 samples
        wave = AF.resample(wave, native_rate, sample_rate)
    return wave


def load_audio_file(path: str | Path, sample_rate: int) -> Tensor:
    """A whole audio file as mono float32 (1, T) at ``sample_rate``; clear errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        return read_audio(str(path), sample_rate)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise ValueError(f"cannot decode {path} with soundfile (wav/flac/ogg are supported): {err}") from err
