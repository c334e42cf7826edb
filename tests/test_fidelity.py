"""Each paper recipe holds its official code's settings: recipes/<name>/expected.yaml lists them under
``official`` (config key -> value and the official source), and docs/fidelity.md cites the same sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
FIDELITY = (ROOT / "docs" / "fidelity.md").read_text(encoding="utf-8")


def official_recipes() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "recipes").glob("*/expected.yaml")
                  if "official" in OmegaConf.load(p))


def official_settings(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "recipes" / name / "expected.yaml"))["official"]


def test_every_paper_recipe_lists_its_official_settings() -> None:
    assert {"vqgan_lc_imagenet256", "fvq_imagenet256", "softvq_imagenet256", "gqvae_tinystories"} <= set(
        official_recipes()
    )


@pytest.mark.parametrize("name", official_recipes())
def test_recipe_composes_to_the_official_settings(name: str, make_config) -> None:
    cfg = make_config(f"recipe={name}", fast=False)
    wrong = {}
    for key, entry in official_settings(name).items():
        got = OmegaConf.select(cfg, key, throw_on_missing=True, default="<missing>")
        got = OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
        if got != entry["value"] and not (isinstance(got, float | int) and got == pytest.approx(entry["value"])):
            wrong[key] = (got, entry["value"], entry["source"])
    assert not wrong, f"recipe={name} differs from its official settings (got, official, source): {wrong}"


@pytest.mark.parametrize("name", official_recipes())
def test_fidelity_page_cites_each_official_source(name: str) -> None:
    """The page's tables and the recipe's list name the same official files."""
    files = {entry["source"].split(" ")[0].split(":")[0].rstrip(",") for entry in official_settings(name).values()}
    missing = sorted(f for f in files if f not in FIDELITY)
    assert not missing, f"docs/fidelity.md never cites {missing} (listed in recipes/{name}/expected.yaml)"
