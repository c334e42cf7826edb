"""Draw items from a prior, decode them with their tokenizer, write them (PNG + grid, or WAV), and time both."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vqkit.models.base import TokenizerModel


def draw(prior: Any, num: int, labels: Tensor | None = None, batch_size: int = 64, seed: int = 0,
         **options: Any) -> tuple[Tensor, float]:
    """``num`` id sequences (num, seq_len) in batches, and the seconds it took (the prior alone)."""
    device = next(prior.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    started = time.perf_counter()
    for start in range(0, num, batch_size):
        part = None if labels is None else labels[start:start + batch_size]
        chunks.append(prior.sample(min(batch_size, num - start), labels=part, generator=generator, **options))
    return torch.cat(chunks), time.perf_counter() - started


def decode_items(tokenizer: TokenizerModel, ids: Tensor, item_shape: list[int],
                 batch_size: int = 16) -> tuple[Tensor, float]:
    """Flat ids (n, L) -> the tokenizer's data (images (n, 3, H, W) / waveforms (n, 1, T)) and the seconds taken."""
    shaped = ids.reshape(ids.shape[0], *item_shape)
    started = time.perf_counter()
    out = torch.cat([tokenizer.decode(shaped[i:i + batch_size]).cpu() for i in range(0, len(shaped), batch_size)])
    return out, time.perf_counter() - started


def write_samples(data: Tensor, modality: str, folder: Path, sample_rate: int | None = None) -> Path:
    """Images: ``00000.png``... and ``grid.png`` (returned); audio: ``00000.wav``... (the folder is returned)."""
    folder.mkdir(parents=True, exist_ok=True)
    if modality == "image":
        for i, image in enumerate(data):
            save_image(image, folder / f"{i:05d}.png")
        grid = folder / "grid.png"
        save_image(make_grid(data, nrow=max(1, math.ceil(math.sqrt(len(data)))), padding=2), grid)
        return grid
    for i, wave in enumerate(data):
        sf.write(folder / f"{i:05d}.wav", wave[0].numpy(), int(sample_rate))
    return folder
