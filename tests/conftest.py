"""Shared fixtures: Hydra configs composed from conf/ the way `python -m vqkit.train` composes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Small enough that one optimizer step takes well under a second on a CPU core.
FAST_OVERRIDES = [
    "data.image_size=32",
    "data.batch_size=4",
    "data.train_samples=16",
    "data.val_samples=8",
    "data.num_workers=0",
    "model.encoder.channels=8",
    "model.encoder.latent_dim=8",
    "quantizer.codebook_size=32",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
]


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose like the CLI does, with ``hydra:`` interpolations resolvable and outputs in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, fast=True)`` -> a composed train config writing under tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_config((FAST_OVERRIDES if fast else []) + list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
