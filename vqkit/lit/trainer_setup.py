"""What every vqkit training entry point does around ``trainer.fit``: callbacks and loggers from config, a
checkpoint folder where ``resume=`` looks, and a resumable ``last.ckpt`` at the step training stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a name -> config mapping; ``name: null`` disables one."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None and "_target_" in node]


def save_final_checkpoint(trainer: L.Trainer) -> str | None:
    """Write ``last.ckpt`` at the step training stopped (the callback saves only at epoch ends)."""
    callback = trainer.checkpoint_callback
    if callback is None or trainer.fast_dev_run or not getattr(callback, "dirpath", None):
        return None
    path = str(Path(callback.dirpath) / "last.ckpt")
    trainer.save_checkpoint(path, weights_only=False)  # the full training state (optimizers, loops): resumable
    return path


def ensure_checkpointing(callbacks: list[Any], cfg: DictConfig, output_dir: Path) -> None:
    """Without a configured ``ModelCheckpoint`` (``callbacks=none``), checkpoint into ``<run>/checkpoints``.

    Lightning would add its own into the logger's folder (``csv/checkpoints``), where ``resume=`` does not look.
    ``trainer.enable_checkpointing=false`` turns checkpoints off.
    """
    if cfg.trainer.get("enable_checkpointing", True) is False or cfg.trainer.get("fast_dev_run"):
        return
    if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        callbacks.append(ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), filename="step{step:06d}",
                                         auto_insert_metric_name=False, save_last=True))
