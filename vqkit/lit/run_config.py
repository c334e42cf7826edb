"""What every vqkit Lightning module shares: the run config inside checkpoints, and the data entry of a batch."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from vqkit.models.compat import check_model_config


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run config with every interpolation resolved, without Hydra's own ``hydra`` node."""
    return {
        key: OmegaConf.to_container(node, resolve=True, throw_on_missing=True) if OmegaConf.is_config(node) else node
        for key, node in cfg.items()
        if key != "hydra"
    }


def module_from_config(cfg: Any, resolved: dict[str, Any] | None = None) -> Any:
    """The training module of a run config: ``cfg.module`` around the tokenizer ``cfg.model``, config attached.

    Used by ``vqkit.train`` and ``vqkit.eval`` alike, so a checkpoint is rebuilt exactly as it was trained.
    ``resolved``: ``resolved_config(cfg)`` when the caller already has it.
    """
    from hydra.utils import instantiate

    check_model_config(cfg.model)  # a model x quantizer pair that cannot work is refused before anything is built
    module = instantiate(cfg.module, model=instantiate(cfg.model))
    module.attach_config(resolved if resolved is not None else resolved_config(cfg))
    return module


def batch_data(batch: Any, key: str) -> Tensor:
    """The data tensor of a batch: ``batch[key]`` for mappings, the first item of tuples/lists, else the batch."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(
                f"batch has no {key!r} entry (keys: {sorted(batch)}), which the model reads: the data is not of the "
                f"model's modality; pick data that yields {key!r} batches (image: data=photos|imagenet, audio: "
                "data=speech|audio_folder, text: data=shakespeare|text|tinystories)"
            )
        return batch[key]
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class RunConfigMixin:
    """Keeps the resolved run config and writes it into every checkpoint as ``vqkit_config``.

    ``vqkit.eval`` and ``vqkit.export`` rebuild the model from it; mix in before ``LightningModule``.
    """

    run_config: dict[str, Any] | None = None

    def attach_config(self, config: dict[str, Any]) -> None:
        """Keep the resolved run config (written into every checkpoint); the model keeps its own subtree."""
        self.run_config = copy.deepcopy(config)
        model = getattr(self, "model", None)
        if model is not None and isinstance(config.get("model"), dict):
            model.config = copy.deepcopy(config["model"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["vqkit_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "vqkit_config" in checkpoint:
            self.attach_config(checkpoint["vqkit_config"])
