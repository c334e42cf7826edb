"""Compose the training config from Python the way ``python -m vqkit.train`` composes it on the CLI."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _first_set(*values: object) -> object:
    """``${vqkit.first_set:a,b,...}``: the first value that is not null (``oc.select`` returns a null as is)."""
    return next((v for v in values if v is not None), None)


def _if_null(value: object, if_null: object, otherwise: object) -> object:
    """``${vqkit.if_null:x,a,b}``: ``a`` when ``x`` is null, else ``b``."""
    return if_null if value is None else otherwise


def register_resolvers() -> None:
    """The resolvers vqkit's configs use; idempotent."""
    if not OmegaConf.has_resolver("vqkit.first_set"):
        OmegaConf.register_new_resolver("vqkit.first_set", _first_set)
    if not OmegaConf.has_resolver("vqkit.if_null"):
        OmegaConf.register_new_resolver("vqkit.if_null", _if_null)


register_resolvers()


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with CLI-style overrides (as its Hydra app would), without running it."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"vqkit's conf/ folder is missing at {CONF_DIR}: install vqkit from its source tree "
                                "(`pip install -e .`)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def compose_train_config(overrides: list[str], output_dir: str | Path, config_name: str = "train") -> DictConfig:
    """The composed config with ``hydra:`` interpolations resolvable and outputs in ``output_dir``.

    Args:
        overrides: CLI-style overrides, e.g. ``["quantizer=softvq", "trainer.max_steps=50"]``.
        output_dir: the run folder (``paths.output_dir``).
        config_name: the entry config in conf/.
    """
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"vqkit's conf/ folder is missing at {CONF_DIR}: install vqkit from its source tree "
                                "(`pip install -e .`)")
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
