"""Save input and reconstructed audio clips (WAV) and their spectrograms (PNG) at each validation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw
from torch import Tensor
from torchaudio.transforms import MelSpectrogram

# A perceptually ordered dark-blue -> yellow ramp (5 anchors, linearly interpolated) for log spectrograms.
_RAMP = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float64)


def spectrogram_image(
    wave: Tensor, sample_rate: int, n_fft: int = 512, n_mels: int = 80, height: int = 160
) -> Image.Image:
    """A log-mel spectrogram of ``wave`` (T,) as an RGB image, low frequencies at the bottom, -80..0 dB of its peak."""
    mel = MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels, power=2.0)
    power = mel(wave.float().cpu().reshape(1, -1))[0]  # (n_mels, frames)
    db = 10 * torch.log10(power.clamp_min(1e-10))
    level = ((db - db.max() + 80.0) / 80.0).clamp(0, 1).flip(0).numpy()
    position = level * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    return img.resize((min(max(img.width * 2, 320), 1200), height), Image.Resampling.NEAREST)


def comparison_image(inputs: Tensor, outputs: Tensor, sample_rate: int) -> Image.Image:
    """One row per clip: input spectrogram (left) and reconstruction (right), each titled."""
    pairs = zip(inputs, outputs, strict=True)
    rows = [(spectrogram_image(x, sample_rate), spectrogram_image(y, sample_rate)) for x, y in pairs]
    w, h, title = rows[0][0].width, rows[0][0].height, 14
    canvas = Image.new("RGB", (2 * w + 6, len(rows) * (h + title)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (a, b) in enumerate(rows):
        top = i * (h + title)
        draw.text((2, top), f"clip {i} input", fill="black")
        draw.text((w + 8, top), f"clip {i} reconstruction", fill="black")
        canvas.paste(a, (0, top + title))
        canvas.paste(b, (w + 6, top + title))
    return canvas


class AudioSamples(L.Callback):
    """Reconstructs the same validation clips after every validation run.

    Writes ``<dirpath>/audio_step<step>/clip<i>_{input,recon}.wav``, ``<dirpath>/spec_step<step>.png``
    (input vs reconstruction log-mel spectrograms) and ``spec_latest.png``; sends the clips and the
    picture to TensorBoard (and the picture to W&B) when those loggers are used. The clips are the
    first ``num_clips`` of the first validation batch, kept for the whole run. Batches that are not
    waveforms (B, 1, T) are ignored.

    Args:
        dirpath: output folder.
        num_clips: clips per validation.
        sample_rate: Hz of the clips; None reads ``pl_module.model.encoder.sample_rate``.
    """

    def __init__(self, dirpath: str, num_clips: int = 4, sample_rate: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.num_clips = num_clips
        self.sample_rate = sample_rate
        self.clips: Tensor | None = None
        self.latest: Path | None = None

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.clips is None and batch_idx == 0 and dataloader_idx == 0:
            data = pl_module._data(batch)
            if data.dim() == 3 and data.shape[1] == 1:
                self.clips = data[: self.num_clips].detach().cpu()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.clips is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        rate = self.sample_rate or int(getattr(pl_module.model.encoder, "sample_rate", 16_000))
        with torch.no_grad():
            x_hat = pl_module.reconstruct(self.clips.to(pl_module.device)).float().cpu()
        x = self.clips.float()
        step = trainer.global_step
        folder = self.dirpath / f"audio_step{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (a, b) in enumerate(zip(x, x_hat, strict=True)):
            sf.write(folder / f"clip{i}_input.wav", a[0].numpy(), rate, subtype="PCM_16")
            sf.write(folder / f"clip{i}_recon.wav", b[0].clamp(-1, 1).numpy(), rate, subtype="PCM_16")
        picture = comparison_image(x[:, 0], x_hat[:, 0], rate)
        path = self.dirpath / f"spec_step{step:06d}.png"
        picture.save(path)
        shutil.copyfile(path, self.dirpath / "spec_latest.png")
        self.latest = path
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                image = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1)
                logger.experiment.add_image("val/spectrograms", image, step)
                for i, b in enumerate(x_hat):
                    logger.experiment.add_audio(f"val/clip{i}", b.clamp(-1, 1), step, sample_rate=rate)
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/spectrograms", [picture], step=step)
