"""Every config option composes and instantiates; the registry and conf/quantizer agree."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image

from vqkit import list_quantizers
from vqkit.config import CONF_DIR
from vqkit.train import instantiate_collection, train

# Groups whose options are chosen on the CLI (hydra/ and paths/ have a single internal option).
GROUPS = ["data", "model", "quantizer", "loss", "trainer", "callbacks", "logger", "debug", "recipe"]


def group_options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def make_imagenet_tree(root: Path) -> Path:
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 36), (40 * i, 90, 200)).save(folder / f"{i}.png")
    return root


def make_wav_tree(root: Path, files: int = 8) -> Path:
    import numpy as np
    import soundfile as sf

    for i in range(files):
        folder = root / f"speaker{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{i}.wav", np.sin(np.arange(4000) * 0.05 * (i + 1)).astype(np.float32) * 0.5, 8000)
    return root


def recipe_overrides(name: str) -> list[str]:
    """Run a recipe on the embedded photos, naming its model on the CLI so the fast overrides fit it."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "recipe" / f"{name}.yaml")).get("defaults", [])
    models = [v for d in defaults if isinstance(d, dict) for k, v in d.items() if k == "override /model"]
    data = "photos"  # the embedded data of the modality
    if any(m.startswith("audio") for m in models):
        data = "speech"
    elif name.startswith("gq"):
        data = "shakespeare"
    return [f"recipe={name}", f"data={data}"] + [f"model={m}" for m in models]


@pytest.mark.parametrize("name", [p.stem for p in sorted((CONF_DIR / "recipe").glob("*.yaml"))])
def test_recipe_trains_on_embedded_data(name: str, make_config) -> None:
    result = train(make_config(*recipe_overrides(name), "debug=fdr", "trainer.precision=32-true"))
    assert result["metrics"]["train/loss"] > 0


def test_registry_matches_quantizer_configs() -> None:
    stems = {p.stem for p in (CONF_DIR / "quantizer").glob("*.yaml")}
    assert stems == set(list_quantizers())
    for stem in stems:
        target = OmegaConf.load(CONF_DIR / "quantizer" / f"{stem}.yaml")._target_
        assert get_class(target).registry_name == stem


@pytest.mark.parametrize(("group", "option"), group_options(), ids=lambda v: str(v))
def test_group_option_composes_and_instantiates(group: str, option: str, make_config, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    fast = True
    if group == "data" and option == "imagenet":
        root = make_imagenet_tree(tmp_path / "imagenet")
        overrides += [f"data.root={root}", "data.image_size=32", "data.num_workers=0"]
        fast = False
    if group == "data" and option == "audio_folder":
        root = make_wav_tree(tmp_path / "audio")
        overrides += [f"data.root={root}", "data.num_workers=0", "data.val_fraction=0.3", "data.test_fraction=0.3"]
    if group == "data" and option == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("To be, or not to be, that is the question.\n" * 200)
        overrides += [f"data.paths=[{corpus}]"]
    if group == "data" and option == "tinystories":
        root = tmp_path / "tinystories"
        root.mkdir()
        for split in ("train", "valid"):
            stories = "<|endoftext|>".join(f"Once upon a time there was a cat number {i}." for i in range(200))
            (root / f"TinyStoriesV2-GPT4-{split}.txt").write_text(stories)
        overrides += [f"data.root={root}"]
    if group == "recipe":
        overrides = recipe_overrides(option)
    if group == "trainer":
        overrides.append("trainer.accelerator=cpu")
        if option == "ddp":
            overrides.append("trainer.devices=1")
    cfg = make_config(*overrides, fast=fast)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, L.LightningDataModule)
    model = instantiate(cfg.model)
    assert model.quantizer.dim == cfg.model.encoder.latent_dim
    callbacks = instantiate_collection(cfg.get("callbacks"))
    loggers = instantiate_collection(cfg.get("logger"))
    if group == "trainer" and option == "fsdp" and not torch.cuda.is_available():
        # Lightning runs FSDP on GPUs only: the strategy builds, the trainer names what is missing.
        assert type(instantiate(cfg.trainer.strategy)).__name__ == "FSDPStrategy"
        with pytest.raises(Exception, match="requires a GPU"):  # hydra wraps the ValueError
            instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        return
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, L.Trainer)


def test_quantizer_override_form_from_cli(make_config) -> None:
    cfg = make_config("quantizer=ema_vq", "quantizer.codebook_size=4096", "quantizer.decay=0.8")
    model = instantiate(cfg.model)
    assert type(model.quantizer).registry_name == "ema_vq"
    assert model.quantizer.codebook_size == 4096 and model.quantizer.decay == 0.8


def test_dim_mismatch_is_reported(make_config) -> None:
    cfg = make_config("quantizer.dim=7")
    with pytest.raises(Exception, match="latent_dim"):
        instantiate(cfg.model)


def test_unknown_option_is_reported(make_config) -> None:
    with pytest.raises(Exception, match="no_such_option"):
        make_config("quantizer.no_such_option=1")
