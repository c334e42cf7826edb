"""Shared fixtures: Hydra configs composed from conf/ the way `python -m vqkit.train` composes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from vqkit.config import compose_train_config
from vqkit.third_party_noise import silence_third_party_noise


@pytest.fixture(autouse=True)
def _third_party_noise_filtered():
    """The filters the command-line entry points install, inside each test's own warning capture (pytest
    restores the filters around collection and every test, so filters installed at import would not last)."""
    silence_third_party_noise()
    yield
    # A recipe run in-process with trainer=ddp on one device leaves Lightning's process group behind; later
    # single-process runs would then see "distributed" and Lightning would warn about their epoch-level logs.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

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
    "trainer.log_every_n_steps=1",  # tiny epochs: Lightning warns when an epoch is shorter than the interval
]
# The same for the transformer (1-D) models, which have no `channels`.
FAST_1D_MODEL = [
    "model.encoder.width=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.encoder.num_latent_tokens=8",
    "model.encoder.latent_dim=8",
]
# The same for waveform data (data=speech / audio_folder) and models (model=audio_conv*).
FAST_AUDIO_DATA = [
    "data.segment_seconds=0.1",
    "data.batch_size=4",
    "data.train_samples=8",
    "data.max_eval_segments=1",
    "data.num_workers=0",
]
FAST_AUDIO_MODEL = [
    "model.encoder.channels=4",
    "model.encoder.latent_dim=8",
    "model.encoder.strides=[2,4]",
    "model.encoder.lstm_layers=0",
    "module.losses.mel.windows=[32,64]",
]
# Text (data=shakespeare/text/tinystories, model=text_*): the tiny GQ settings of tests/text/conftest.py.
TEXT_SELECTORS = ("data=shakespeare", "data=text", "data=tinystories", "model=text_", "recipe=gqvae_")
compose_config = compose_train_config


def is_text(overrides: list[str]) -> bool:
    """True when the overrides pick a text model or text data (the tiny GQ settings apply)."""
    return any(o.startswith(TEXT_SELECTORS) for o in overrides)


def fast_overrides(overrides: list[str]) -> list[str]:
    """FAST_OVERRIDES adapted to the data and model the overrides pick."""
    if is_text(overrides):
        from tests.text.conftest import TINY_GATE, TINY_TEXT

        text = list(TINY_TEXT) + list(TINY_GATE)
        if not any(o.startswith(("model=", "recipe=")) for o in overrides):
            text.append("model=text_gq")  # a text data option alone keeps the default image model
        if not any(o.startswith(("data=", "recipe=")) for o in overrides):
            text.append("data=shakespeare")
        return text
    fast = list(FAST_OVERRIDES)
    if any(o.startswith(("data=speech", "data=audio")) for o in overrides):
        fast = [o for o in fast if not o.startswith("data.")] + FAST_AUDIO_DATA
    if any(o.startswith("model=audio") for o in overrides):
        return [o for o in fast if not o.startswith("model.")] + FAST_AUDIO_MODEL
    if any(o.startswith("model=image_1d") for o in overrides):
        return [o for o in fast if not o.startswith("model.")] + FAST_1D_MODEL
    return fast


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_config(*overrides, fast=True)`` -> a composed train config writing under tmp_path."""

    def make(*overrides: str, fast: bool = True) -> DictConfig:
        return compose_config((fast_overrides(list(overrides)) if fast else []) + list(overrides), tmp_path / "run")

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """The exported artifact folder of the tiny image model of tests/artifacts.py (16 codes, f = 2)."""
    from tests.artifacts import tiny_checkpoint
    from vqkit.export import export_tokenizer

    out = tmp_path / "tokenizer"
    export_tokenizer(tiny_checkpoint(tmp_path / "tiny.ckpt"), out)
    return out


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that set torch's thread count (benchmark cells do) must not change later tests' float results:
    a run reduced over 1 thread differs in its last bits from one over 2 (the exact-resume test compares bits)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models run faster so on a busy 2-core machine (restored by the fixture above)."""
    torch.set_num_threads(1)


@pytest.fixture
def train_cli(monkeypatch):
    """``train_cli(*args)`` runs ``python -m vqkit.train args`` in this process (Hydra's app, writing .hydra/ and
    train.log as on the command line, without a new interpreter's start-up) and returns its exit code."""
    import logging
    import sys

    import vqkit.train

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["vqkit.train", *args])
        try:
            vqkit.train.main()
        except SystemExit as exit_:
            return 1 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
        return 0

    yield run
    for handler in root.handlers[:]:  # Hydra's job logging: console and <run>/train.log
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    GlobalHydra.instance().clear()
