"""Text models through the Hydra config: fast_dev_run for each option, then train -> export -> load_tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import vqkit
from vqkit.config import compose_train_config
from vqkit.export import main as export_main
from vqkit.lit import GQModule
from vqkit.tokenizers.text import GQTokenizer
from vqkit.train import train


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=text_gq", "quantizer=vq"),
        ("model=text_gq", "quantizer=ema_vq", "data.segmentation=across"),
        ("model=text_fixed", "quantizer=vq"),
    ],
    ids=["gq-vq", "gq-ema-across", "fixed"],
)
def test_fast_dev_run(overrides: tuple[str, ...], make_text_config) -> None:
    result = train(make_text_config(*overrides, "debug=fdr"))
    metrics = result["metrics"]
    assert metrics["train/loss"] > 0
    assert 1.0 <= metrics["val/bytes_per_token"] <= 8.0
    assert 0.0 < metrics["val/codebook/usage"] <= 1.0
    assert 0.0 <= metrics["val/rec_byte_acc"] <= 1.0


def test_recipes_compose(tmp_path: Path) -> None:
    paper = compose_train_config(["recipe=gqvae_tinystories", "data.root=/nonexistent"], tmp_path / "a")
    assert paper.model.decoder.max_token_len == 10 and paper.model.alpha == 3.0 and paper.quantizer.swap_loss_weights
    assert paper.quantizer.codebook_size == 50000 and paper.data.row_len == 16
    cpu = compose_train_config(["recipe=gqvae_shakespeare_cpu", "model.encoder.width=16", "model.encoder.depth=1",
                                "model.decoder.width=16", "model.gate.width=16", "quantizer.codebook_size=16"],
                               tmp_path / "b")
    assert isinstance(instantiate(cpu.model), GQModule)
    GlobalHydra.instance().clear()


def test_train_export_load_round_trip(make_text_config, tmp_path: Path, capsys) -> None:
    cfg = make_text_config("model=text_gq", "trainer.max_steps=3", "test=false")
    result = train(cfg)
    out = tmp_path / "artifact"
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={out}"]) == 0
    assert "text tokenizer" in capsys.readouterr().out
    tok = vqkit.load_tokenizer(out)
    assert isinstance(tok, GQTokenizer) and tok.config["training"]["step"] == 3 and tok.model is not None
    text = "Shall I compare thee to a summer's day? 夏の日 🌞"
    for mode in ("vocab", "model"):
        assert tok.set_mode(mode).decode(tok.encode(text)) == text
