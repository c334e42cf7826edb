"""The options and config choices vqkit's messages tell users to set exist (issue 15: hints naming options
that do not exist).

Every string literal of vqkit/ (docstrings aside: they describe code, e.g. ``model.encode``) is searched for
dotted config options (``data.max_corrupt``, ``module.losses.lpips.weights_path``) and group choices
(``data=speech|audio_folder``, ``model=text_*``). An option must exist in the config composed with some option
of the groups below (a recipe included), or lie under a ``null`` slot that takes an object there (such as the
softvq recipe's ``module.encoder_init``); a choice must name files of conf/<group>/.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from functools import cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from vqkit.config import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("data", "model", "quantizer", "repa", "recipe", "trainer", "callbacks", "logger", "optimizer",
          "scheduler", "debug")
OPTION = re.compile(r"(?<![\w.$/{])((?:" + "|".join(GROUPS + ("module", "paths")) + r")(?:\.[A-Za-z_]\w*)+)(?![\w(])")
CHOICE = re.compile(r"(?<![\w.])(" + "|".join(GROUPS) + r")=([A-Za-z0-9_*|]+)")
# Dotted names in messages that are not config options.
NOT_OPTIONS = {
    "model.safetensors",  # the artifact's weights file (vqkit.models.artifact.WEIGHTS_NAME)
    "data.tar",  # a member of a Debian package (vqkit.tools.assets)
    "data.KEY",  # the placeholder of vqkit.eval's usage line (data.KEY=VALUE)
}


def message_strings() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string literal of vqkit/ that is not a docstring."""
    found = []
    for path in sorted((ROOT / "vqkit").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }
        found += [(str(path.relative_to(ROOT)), node.lineno, node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    return found


def named_options() -> dict[str, str]:
    """Option -> where a message names it (the literal piece before an f-string field ``model.quantizer.{m}`` is
    a prefix of parameter names, not an option: left out)."""
    options = {}
    for file, line, text in message_strings():
        for match in OPTION.finditer(text):
            if text[match.end():] == ".":
                continue
            options.setdefault(match.group(1), f"{file}:{line}")
    return {k: v for k, v in sorted(options.items()) if k not in NOT_OPTIONS}


def named_choices() -> dict[tuple[str, str], str]:
    choices = {}
    for file, line, text in message_strings():
        for match in CHOICE.finditer(text):
            for option in match.group(2).split("|"):
                choices.setdefault((match.group(1), option), f"{file}:{line}")
    return choices


@cache
def composed_configs() -> list[DictConfig]:
    """The train config with each option of GROUPS (recipes on their embedded data), and the prior-training config
    with each prior, unresolved."""
    configs = [compose_config("train", [])]
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            overrides = [f"{group}={path.stem}"]
            if group == "recipe" and path.stem.startswith("gq"):
                overrides.append("data=shakespeare")
            configs.append(compose_config("train", overrides))
    for path in sorted((CONF_DIR / "prior").glob("*.yaml")):  # vqkit.train_prior's own config
        configs.append(compose_config("train_prior", [f"prior={path.stem}"]))
    return configs


def exists(cfg: DictConfig, option: str) -> bool:
    """``option`` is a key of ``cfg``, or lies under a key of it whose value is null (a slot for an object)."""
    node = cfg
    for part in option.split("."):
        if node is None:
            return True
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        if OmegaConf.is_missing(node, part):  # ``???``: a value the user must give
            return True
        node = OmegaConf.select(node, part, throw_on_resolution_failure=False)
    return True


OPTIONS = named_options()
CHOICES = named_choices()


def test_the_messages_name_options() -> None:
    assert len(OPTIONS) > 20 and len(CHOICES) > 5  # the search finds what it looks for


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_an_option_a_message_names_exists(option: str) -> None:
    assert any(exists(cfg, option) for cfg in composed_configs()), (
        f"{OPTIONS[option]} tells users to set {option}, which no config has")


@pytest.mark.parametrize(("group", "option"), sorted(CHOICES))
def test_a_config_choice_a_message_names_exists(group: str, option: str) -> None:
    stems = [p.stem for p in (CONF_DIR / group).glob("*.yaml")]
    assert fnmatch.filter(stems, option), f"{CHOICES[group, option]} names {group}={option}: no conf/{group} file"


def test_a_missing_weights_file_names_the_option_that_sets_it(tmp_path: Path, monkeypatch) -> None:
    from vqkit.losses.perceptual import LPIPSLoss
    from vqkit.tools.assets import ENV_VAR

    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # no installed assets
    with pytest.raises(FileNotFoundError, match=r"pass module\.losses\.lpips\.weights_path=/path/to/lpips"):
        LPIPSLoss()
    with pytest.raises(FileNotFoundError, match=r"module\.losses\.lpips\.weights_path=\S*nope.safetensors does not"):
        LPIPSLoss(weights_path=tmp_path / "nope.safetensors")
    cfg = compose_config("train", ["model=image_conv_gan", f"module.losses.lpips.weights_path={tmp_path}/x"])
    assert cfg.module.losses.lpips.weights_path == f"{tmp_path}/x"
