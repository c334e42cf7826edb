"""Save a PNG grid of inputs (top row) and reconstructions (bottom row) at each validation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image


class ReconstructionGrid(L.Callback):
    """Reconstructs the same validation images after every validation run.

    Writes ``<dirpath>/recon_step<step>.png`` and ``<dirpath>/recon_latest.png`` and
    sends the grid to TensorBoard/W&B loggers when present. The images are the first
    ``num_images`` of the first validation batch, kept fixed for the whole run.

    Args:
        dirpath: folder for the PNG files.
        num_images: how many images per row.
    """

    def __init__(self, dirpath: str, num_images: int = 8) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.images: Tensor | None = None
        self.latest: Path | None = None

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0:
            data = pl_module._data(batch)
            if data.dim() == 4:  # images only; other modalities have their own sample callbacks
                self.images = data[: self.num_images].detach().cpu()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.images is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        with torch.no_grad():
            x = self.images.to(pl_module.device)
            x_hat = pl_module.reconstruct(x)
        grid = make_grid(torch.cat([x.float(), x_hat.float()]).clamp(0, 1).cpu(), nrow=x.shape[0], padding=2)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"recon_step{trainer.global_step:06d}.png"
        save_image(grid, path)
        shutil.copyfile(path, self.dirpath / "recon_latest.png")
        self.latest = path
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", grid, trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/reconstructions", [grid], step=trainer.global_step)
