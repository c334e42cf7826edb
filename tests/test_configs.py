"""Every config option composes and instantiates (model and training module); the registry and conf/quantizer agree."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image

from vqkit import list_quantizers
from vqkit.config import CONF_DIR
from vqkit.lit import TokenizerModule
from vqkit.lit.run_config import module_from_config
from vqkit.lit.trainer_setup import instantiate_collection
from vqkit.models import TokenizerModel
from vqkit.train import train

# Groups whose options are chosen on the CLI (hydra/ and paths/ have a single internal option).
GROUPS = [
    "data", "model", "quantizer", "optimizer", "scheduler", "repa", "trainer", "callbacks", "logger", "debug",
    "recipe",
]


def group_options() -> list:
    return [
        pytest.param(g, p.stem, id=f"{g}-{p.stem}") for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))
    ]


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


@pytest.mark.parametrize(("group", "option"), group_options())
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
    if group == "quantizer" and option == "gq":  # the text models' quantizer (tests/test_model_quantizer_pairs.py)
        overrides.append("model=text_gq")
    if group == "quantizer" and option == "fsq":  # levels for the fast settings' 32 codes (its default has 64,000)
        overrides.append("quantizer.levels=[4,4,2]")
    if group == "recipe":
        overrides = recipe_overrides(option)
    if group == "trainer":
        overrides.append("trainer.accelerator=cpu")
        if option == "ddp":
            overrides.append("trainer.devices=1")
    cfg = make_config(*overrides, fast=fast)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, L.LightningDataModule)
    for step in cfg.get("prepare") or []:  # as vqkit.train runs them, before the model is built
        instantiate(step)
    module = module_from_config(cfg)
    assert isinstance(module, TokenizerModule) and isinstance(module.model, TokenizerModel)
    assert module.model.quantizer.dim == cfg.model.encoder.latent_dim
    assert module.run_config["model"] == module.model.config  # what export writes as the artifact's model
    # the optimizer and schedule of the module's config build over its parameter groups
    optimizer = module.build_optimizer(module.optimizer_factory, module.parameter_groups())
    assert isinstance(optimizer, get_class(cfg.module.optimizer._target_))
    if cfg.module.scheduler is None:
        assert module.scheduler_factory is None
    else:
        assert isinstance(module.scheduler_factory(optimizer, total_steps=10), torch.optim.lr_scheduler.LRScheduler)
    if group == "repa":
        assert type(module.losses["repa"]).__name__ == "RepresentationAlignment"
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


def _image_options(m) -> bool:
    return (
        (m.losses.l1.weight, m.losses.l2.weight) == (0.0, 1.0)
        and m.optimizer_factory.func is torch.optim.Adam and m.optimizer_factory.keywords["lr"] == 0.005
        and m.scheduler_factory.func.__name__ == "learning_annealing"
        and m.param_group_rules == [{"match": "quantizer", "lr_scale": 10.0}]
    )


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["module.losses.l1.weight=0", "module.losses.l2.weight=1", "optimizer=adam", "module.optimizer.lr=0.005",
          "scheduler=learning_annealing", "module.param_groups=[{match:quantizer,lr_scale:10.0}]"], _image_options),
        (["module.losses.l2=null", "scheduler=none"],
         lambda m: set(m.losses) == {"l1"} and m.scheduler_factory is None),
        (["model=image_conv_gan", "module.disc_start=7", "module.losses.lpips.weight=0.5",
          "module.losses.lpips.warmup_steps=4"],
         lambda m: m.disc_start == 7 and (m.losses.lpips.weight_at(2), m.losses.lpips.weight_at(None)) == (0.25, 0.5)),
        (["model=image_conv_gan", "module.losses.lpips=null"], lambda m: set(m.losses) == {"l1", "l2"}),
        (["model=audio_conv", "data=speech", "module.losses.mel.windows=[32]"],
         lambda m: type(m.losses.mel).__name__ == "MultiScaleMelLoss" and m.losses.mel.windows == (32,)),
    ],
    ids=["image", "drop-a-term", "gan-lpips-warmup", "gan-without-lpips", "audio-mel"],
)
def test_training_settings_are_module_options(overrides: list[str], check, make_config) -> None:
    module = module_from_config(make_config(*overrides))
    assert check(module), overrides


@pytest.mark.parametrize(
    "old",
    ["loss.l1=0", "model.optimizer.lr=0.1", "model.disc_start=3", "model.perceptual=null",
     "model/repa=efficientnet_lite0"],
)
def test_pre_redesign_option_names_are_refused(old: str, make_config) -> None:
    """The training options moved under ``module`` (issue 13): the old names fail loudly, naming the option."""
    with pytest.raises(Exception, match=re.escape(old.split("=")[0].lstrip("+"))):
        make_config(old)
