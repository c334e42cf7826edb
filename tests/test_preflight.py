"""vqkit.train refuses, at start and naming the fix, configs that would fail later or do nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import vqkit.train
from vqkit.config import CONF_DIR, compose_train_config
from vqkit.train import train

DATA = {"photos": "image", "imagenet": "image", "speech": "audio", "audio_folder": "audio",
        "shakespeare": "text", "text": "text", "tinystories": "text"}
MODELS = {"image_conv": "image", "image_conv_gan": "image", "image_1d": "image", "image_1d_gan": "image",
          "audio_conv": "audio", "audio_conv_gan": "audio", "text_gq": "text", "text_fixed": "text"}
FIRST_MODEL = {"image": "image_conv", "audio": "audio_conv", "text": "text_gq"}
FIRST_DATA = {"image": "photos", "audio": "speech", "text": "shakespeare"}  # embedded: no path needed


def test_every_data_and_model_config_is_classified() -> None:
    assert {p.stem for p in (CONF_DIR / "data").glob("*.yaml")} == set(DATA)
    assert {p.stem for p in (CONF_DIR / "model").glob("*.yaml")} == set(MODELS)


@pytest.fixture
def nothing_built(monkeypatch):
    """vqkit.train must refuse before it instantiates anything (data, model, callbacks)."""

    def refuse(*args, **kwargs):
        raise AssertionError("vqkit.train built something before refusing the config")

    monkeypatch.setattr(vqkit.train, "instantiate", refuse)


@pytest.mark.parametrize(
    ("data", "model"), [(d, m) for d in DATA for m in MODELS if DATA[d] != MODELS[m]], ids=lambda v: v
)
def test_data_and_model_of_different_modalities_are_refused_at_start(data, model, nothing_built, tmp_path) -> None:
    modality = DATA[data]
    with pytest.raises(ValueError, match=rf"data={data} is {modality}.*model={model}.*model={FIRST_MODEL[modality]}"
                                         rf".*or keep model={model} with data={FIRST_DATA[MODELS[model]]}"):
        train(compose_train_config([f"data={data}", f"model={model}"], tmp_path))


@pytest.mark.parametrize(
    ("old", "new"),
    [("+model/repa=efficientnet_lite0", "repa=efficientnet_lite0"), ("+model/scheduler=none", "scheduler=none"),
     ("+model/optimizer=adam", "optimizer=adam"), ("+loss=recon", "module.losses")],
)
def test_obsolete_group_spellings_are_refused(old: str, new: str, nothing_built, tmp_path: Path) -> None:
    """They compose (Hydra adds them as plain keys) but have no effect."""
    with pytest.raises(ValueError, match=rf"{old.split('=')[0].lstrip('+')}.*{new}"):
        train(compose_train_config([old], tmp_path))


@pytest.mark.parametrize("old", ["model/repa=efficientnet_lite0", "model/scheduler=none"])
def test_obsolete_group_spellings_are_refused_on_the_command_line(old: str, monkeypatch, capsys) -> None:
    """Without `+`, Hydra itself stops with "Could not override"; vqkit.train names the spelling to use first."""
    monkeypatch.setattr(sys, "argv", ["vqkit.train", old])
    with pytest.raises(SystemExit, match=old.replace("model/", "").split("=")[0]):
        vqkit.train.main()


@pytest.mark.parametrize("model", ["image_conv", "image_1d"])
def test_repa_is_one_spelling_for_every_image_model(model: str, tmp_path: Path) -> None:
    cfg = compose_train_config([f"model={model}", "repa=efficientnet_lite0"], tmp_path)
    assert cfg.module.losses.repa._target_.endswith("RepresentationAlignment")
