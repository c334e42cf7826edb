"""Shared fixtures: Hydra configs composed from conf/ the way `python -m vqkit.train` composes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vqkit.config import compose_train_config

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
# The same for the transformer (1-D) models, which have no `channels`.
FAST_1D_MODEL = [
    "model.encoder.width=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.encoder.num_latent_tokens=8",
    "model.encoder.latent_dim=8",
]
compose_config = compose_train_config


def fast_overrides(overrides: list[str]) -> list[str]:
    """FAST_OVERRIDES adapted to the model the overrides pick."""
    if any(o.startswith("model=image_1d") for o in overrides):
        return [o for o in FAST_OVERRIDES if not o.startswith("model.")] + FAST_1D_MODEL
    return FAST_OVERRIDES


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, fast=True)`` -> a composed train config writing under tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_config((fast_overrides(list(overrides)) if fast else []) + list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
