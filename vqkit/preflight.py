"""Checks of a composed training config before anything is built: what would fail later, or silently do nothing,
is refused at start with the fix.

- Data and model of different modalities (``data=speech`` with the default ``model=image_conv``) would fail in the
  first validation step with a missing batch entry: refused naming the model configs of the data's modality.
- Config-group spellings that compose but do nothing: Hydra adds ``+model/scheduler=none`` as a plain key
  ``model/scheduler`` when there is no such group (there has been none since the training options moved to the
  top-level groups and ``module``), and nothing reads it. Refused naming the spelling to use; ``main_argv_check``
  refuses the spellings without ``+`` too, which Hydra stops with a bare "Could not override".
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from vqkit.config import CONF_DIR

# Former config groups and keys -> what replaced them.
OBSOLETE: dict[str, str] = {
    "model/repa": "repa={value}",
    "model/scheduler": "scheduler={value}",
    "model/optimizer": "optimizer={value}",
    "model/parts": "a *_gan model (model=image_conv_gan, image_1d_gan, audio_conv_gan)",
    "loss": "the loss-term options module.losses.<term> (e.g. module.losses.l1.weight=0, module.losses.l2=null)",
}


def _override_key(line: str) -> tuple[str, str]:
    """``+a/b@pkg=v`` -> ``("a/b", "v")``."""
    key, _, value = line.partition("=")
    return key.lstrip("+~").split("@")[0], value


def _obsolete_message(key: str, value: Any) -> str:
    return f"{key}={value}: this spelling is gone and would do nothing; use {OBSOLETE[key].format(value=value)}"


def refuse_obsolete_overrides(overrides: Iterable[str]) -> None:
    """Raise ValueError for a command-line override of a former group or key (see ``OBSOLETE``)."""
    for line in overrides:
        key, value = _override_key(line)
        if key in OBSOLETE:
            raise ValueError(_obsolete_message(key, value))


def refuse_keys_that_do_nothing(cfg: DictConfig) -> None:
    """Raise ValueError for a top-level key that is a former group, or a group path (``a/b``) conf/ does not have."""
    for key in cfg:
        if key in OBSOLETE:
            raise ValueError(_obsolete_message(key, cfg[key]))
        if "/" in key:
            value = cfg[key]
            internal = ("hydra", "paths", "parts")
            groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in internal)
            raise ValueError(
                f"+{key}={value}: conf/ has no config group {key}, so Hydra added a plain key {key!r} that nothing "
                f"reads; the groups are {', '.join(groups)}"
            )


def _choice(cfg: DictConfig, group: str) -> str | None:
    """The option of ``group`` the config was composed with, if known."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if choices is None and HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
    return None if choices is None else choices.get(group)


@cache
def _model_target(name: str) -> str | None:
    """The ``model._target_`` of ``conf/model/<name>.yaml``, following its defaults inside the group."""
    config = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml")
    target = OmegaConf.select(config, "model._target_", default=None)
    if target is not None:
        return target
    return next((t for t in map(_model_target, _bases(name)) if t is not None), None)


def _bases(name: str) -> list[str]:
    """The other conf/model options ``conf/model/<name>.yaml`` builds on (its defaults inside the group)."""
    defaults = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").get("defaults", [])
    return [d for d in defaults if isinstance(d, str) and (CONF_DIR / "model" / f"{d}.yaml").is_file()]


def models_of(modality: str) -> list[str]:
    """The conf/model options of ``modality``: train.yaml's default first, then base models, then derived ones."""
    default = next((d["model"] for d in OmegaConf.load(CONF_DIR / "train.yaml").defaults
                    if isinstance(d, DictConfig) and "model" in d), None)
    names = []
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        target = _model_target(path.stem)
        if target is not None and getattr(get_class(target), "modality", None) == modality:
            names.append(path.stem)
    return sorted(names, key=lambda n: (n != default, bool(_bases(n)), n))


def data_of(modality: str) -> list[str]:
    """The conf/data options whose data module is of ``modality`` (embedded data first: they need no path)."""
    names = []
    for path in sorted((CONF_DIR / "data").glob("*.yaml")):
        target = OmegaConf.select(OmegaConf.load(path), "_target_", default=None)
        if target is not None and getattr(get_class(target), "modality", None) == modality:
            names.append(path.stem)
    return sorted(names, key=lambda n: "root: ???" in (CONF_DIR / "data" / f"{n}.yaml").read_text())


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def refuse_mixed_modalities(cfg: DictConfig) -> None:
    """Raise ValueError when the data and the model are of different modalities, naming the models that fit."""
    data_target = OmegaConf.select(cfg, "data._target_", default=None)
    model_target = OmegaConf.select(cfg, "model._target_", default=None)
    if data_target is None or model_target is None:
        return
    data_modality = getattr(get_class(data_target), "modality", None)
    model_modality = getattr(get_class(model_target), "modality", None)
    if data_modality is None or model_modality is None or data_modality == model_modality:
        return
    data = f"data={_choice(cfg, 'data')}" if _choice(cfg, "data") else f"data._target_={data_target}"
    model = f"model={_choice(cfg, 'model')}" if _choice(cfg, "model") else f"model._target_={model_target}"
    fits = models_of(data_modality)
    use = f"model={fits[0]}" + (f" (or {', '.join(fits[1:])})" if fits[1:] else "") if fits else (
        f"a model config of {data_modality} data")
    data_fits = data_of(model_modality)
    other = f", or keep {model} with data={data_fits[0]}" + (
        f" (or {', '.join(data_fits[1:])})" if data_fits[1:] else "") if data_fits else ""
    raise ValueError(
        f"{data} is {data_modality}; {model} is {_article(model_modality)} {model_modality} model: use {use}{other}"
    )


def check_run_config(cfg: DictConfig) -> None:
    """Every check of this module, on a composed training config (before anything is instantiated)."""
    refuse_keys_that_do_nothing(cfg)
    refuse_mixed_modalities(cfg)


def main_argv_check(argv: list[str]) -> None:
    """For ``vqkit.train``'s command line, before Hydra composes: exit naming the spelling to use."""
    try:
        refuse_obsolete_overrides(a for a in argv if not a.startswith("-"))
    except ValueError as error:
        raise SystemExit(f"vqkit.train: {error}") from None


