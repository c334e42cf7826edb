"""Every pair of a model config (conf/model/*.yaml) and a quantizer config (conf/quantizer/*.yaml) either trains
(a step and a validation batch), exports and loads back as the trained model, or is refused before anything is
built, by a message that names the pair and the quantizers that work with the model (vqkit.models.compat).

The pairs come from globbing conf/, so a new model or quantizer file is covered without editing this test. What
is expected: text models (model=text_*) work with the gated quantizer only; image and audio models with every
quantizer, the gated one included (each position decoded from the token that covers it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf

from tests.conftest import compose_config, fast_overrides
from tests.test_models import MODELS, ONE_STEP, check_artifact_is_the_trained_model, model_overrides
from vqkit.config import CONF_DIR
from vqkit.quantizers.codebook_file import save_codebook
from vqkit.train import train

QUANTIZERS = [p.stem for p in sorted((CONF_DIR / "quantizer").glob("*.yaml"))]
TEXT_QUANTIZER = "gq"  # the only quantizer of the text models
# One step, then one validation batch (where a pair's ids meet the metrics), no test split.
STEP_AND_VALIDATE = [*ONE_STEP, "+trainer.val_check_interval=1", "+trainer.limit_val_batches=1"]
# Tiny settings of the quantizers whose defaults do not fit the fast overrides (32 codes, 8-dim tokens).
TINY_QUANTIZER = {
    "residual": ["quantizer.num_stages=2"],
    "fsq": ["quantizer.levels=[4,4,2]"],  # 32 codes (FSQ's codebook_size must equal prod(levels))
    # dit bridge: a square number of codes. Codes from a normal raw codebook plus the bridge: a fresh bridge alone
    # gives codes of about 1e-3, where a conv decoder's GroupNorm magnifies the rounding of z + (q - z) past 1e-5.
    "vqbridge": ["quantizer.codebook_size=16", "quantizer.width=16", "quantizer.depth=1", "quantizer.num_heads=2",
                 "quantizer.residual=true", "quantizer.init=normal"],
    "vqgan_lc": ["quantizer.codebook_size=16"],  # + codebook_path: the file of the `codebook_file` fixture
}


def modality(model: str) -> str:
    """The modality a conf/model name declares by its prefix (checked against the built model below)."""
    return model.split("_")[0]


def working_quantizers(model: str) -> list[str]:
    """What the pairs of ``model`` are expected to do: the quantizers it works with (the others are refused)."""
    if modality(model) == "text":
        return [TEXT_QUANTIZER]
    return QUANTIZERS


def pair_overrides(model: str, quantizer: str, codebook_file: Path) -> list[str]:
    """The overrides of ``model=<model> quantizer=<quantizer>`` at the tests' tiny sizes."""
    overrides = [*model_overrides(model), *STEP_AND_VALIDATE, f"quantizer={quantizer}"]
    options = set(OmegaConf.load(CONF_DIR / "quantizer" / f"{quantizer}.yaml"))
    # the fast settings of one quantizer (text: the gq gate and reservoir) are dropped for one without those options
    fast = [o for o in fast_overrides(overrides) if not o.startswith("quantizer.") or o.split(".")[1].split("=")[0]
            in options]
    tiny = TINY_QUANTIZER.get(quantizer, [])
    if quantizer == "vqgan_lc":
        tiny = [*tiny, f"quantizer.codebook_path={codebook_file}"]
    return [*fast, *overrides, *tiny]


@pytest.fixture(scope="module")
def codebook_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VQGAN-LC codebook (16 codes of 12 features), as `python -m vqkit.tools.codebook` writes them."""
    features = torch.randn(16, 12, generator=torch.Generator().manual_seed(0))
    return save_codebook(tmp_path_factory.mktemp("codebook") / "codes.safetensors", features, {"source": "test"})


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("model", MODELS)
def test_model_quantizer_pair_works_or_is_refused(model: str, quantizer: str, codebook_file: Path, one_thread,
                                                  tmp_path: Path) -> None:
    cfg = compose_config(pair_overrides(model, quantizer, codebook_file), tmp_path / "run")
    working = working_quantizers(model)
    if quantizer not in working:
        with pytest.raises(ValueError) as refused:
            train(cfg)
        message = str(refused.value)
        assert f"{modality(model)} model" in message and f"cannot use quantizer={quantizer} " in message, message
        listed = message.split("Quantizers that work with ")[1]
        assert [q for q in QUANTIZERS if f"quantizer={q}" in listed] == working, message
        return
    assert get_class(cfg.model._target_).modality == modality(model)
    result = train(cfg)
    assert "val/loss" in result["metrics"], "the validation batch did not run"
    check_artifact_is_the_trained_model(cfg, result, tmp_path / "artifact")
