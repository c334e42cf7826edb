"""Text models through the Hydra config: fast_dev_run for each option, then train -> export -> load_tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

import vqkit
from vqkit.config import compose_train_config
from vqkit.export import main as export_main
from vqkit.lit import TokenizerModule
from vqkit.lit.run_config import module_from_config
from vqkit.models import TextTokenizer
from vqkit.tokenizers.text import GQTokenizer
from vqkit.train import train


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=text_gq",),
        ("model=text_gq", "quantizer.inner=ema_vq", "data.segmentation=across"),
        ("model=text_fixed",),
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
    assert paper.model.decoder.max_token_len == 10 and paper.module.losses.compression.weight == 3.0
    assert paper.quantizer.inner == "vq" and paper.quantizer.inner_options.swap_loss_weights
    assert paper.quantizer.codebook_size == 50000 and paper.data.row_len == 16 and paper.quantizer.width == 1024
    assert paper.quantizer.inner_options.passthrough_steps == 500 and paper.quantizer.inner_options.reservoir_reset
    assert paper.module.losses.mask.detach_target is False  # the reference's mask loss keeps the target's graph
    GlobalHydra.instance().clear()
    cpu = compose_train_config(["recipe=gqvae_shakespeare_cpu", "model.encoder.width=16", "model.encoder.depth=1",
                                "model.decoder.width=16", "quantizer.width=16", "quantizer.codebook_size=16"],
                               tmp_path / "b")
    assert cpu.module.losses.compression.weight == 1.0 and cpu.module.losses.mask.detach_target
    inner = cpu.quantizer.inner_options  # GQ-VAE's codebook start: a 500-step pass-through, no k-means
    assert inner.passthrough_steps == 500 and inner.reservoir_reset and not inner.kmeans_init
    module = module_from_config(cpu)
    assert isinstance(module, TokenizerModule) and isinstance(module.model, TextTokenizer)
    assert module.model.quantizer.segmentation == "learned" and module.model.quantizer.inner_name == "vq"
    assert module.param_group_rules == [{"match": r"^model\.quantizer\.inner\.", "lr_scale": 10.0,
                                         "weight_decay": 0.0}]
    GlobalHydra.instance().clear()
    fixed = compose_train_config(["recipe=gqvae_shakespeare_cpu", "model=text_fixed", "model.decoder.max_token_len=8",
                                  "model.encoder.width=16", "model.encoder.depth=1", "model.decoder.width=16",
                                  "quantizer.codebook_size=16"], tmp_path / "c")
    quantizer = module_from_config(fixed).model.quantizer
    assert quantizer.segmentation == "fixed" and quantizer.fixed_length == 8 == quantizer.max_token_len
    assert quantizer.gate is None
    GlobalHydra.instance().clear()
    with pytest.raises(Exception, match="quantizer=gq"):  # a text model with a plain codebook quantizer
        module_from_config(compose_train_config(["data=shakespeare", "model=text_gq", "quantizer=vq"], tmp_path / "d"))
    GlobalHydra.instance().clear()


def test_train_export_load_round_trip(make_text_config, tmp_path: Path, capsys) -> None:
    cfg = make_text_config("model=text_gq", "trainer.max_steps=3", "test=false")
    result = train(cfg)
    out = tmp_path / "artifact"
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={out}"]) == 0
    assert "text tokenizer" in capsys.readouterr().out
    tok = vqkit.load_tokenizer(out)
    assert isinstance(tok, GQTokenizer) and tok.config["training"]["step"] == 3 and tok.model is not None
    assert tok.config["format_version"] == 2 and tok.config["model"]["_target_"] == "vqkit.models.TextTokenizer"
    assert isinstance(tok.model, TextTokenizer)
    text = "Shall I compare thee to a summer's day? 夏の日 🌞"
    for mode in ("vocab", "model"):
        assert tok.set_mode(mode).decode(tok.encode(text)) == text


def test_checkpoints_of_vqkit_0_1_export_the_same_tokenizer(make_text_config, tmp_path: Path) -> None:
    """A GQModule checkpoint (model parts at the top of vqkit_config.model, gate beside the quantizer) exports."""
    import torch

    result = train(make_text_config("model=text_gq", "trainer.max_steps=2", "test=false"))
    checkpoint = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    model = checkpoint["vqkit_config"]["model"]
    gq = model["quantizer"]
    checkpoint["vqkit_config"]["model"] = {
        "_target_": "vqkit.lit.GQModule", "encoder": model["encoder"], "decoder": model["decoder"],
        "quantizer": {"_target_": "vqkit.quantizers.VectorQuantizer", "dim": gq["dim"],
                      "codebook_size": gq["codebook_size"], "kmeans_init": True},
        "gate": {"_target_": "vqkit.modalities.text_gq.BoundaryGate", "width": gq["width"], "depth": gq["depth"],
                 "num_heads": gq["num_heads"]},
        "alpha": 2.0, "reservoir_size": 64, "codebook_lr_scale": 10.0,
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True},
    }
    renamed = {}
    for name, tensor in checkpoint["state_dict"].items():
        name = name.replace("model.quantizer.gate.", "model.gate.")
        name = name.replace("model.quantizer.inner.", "model.quantizer.")
        renamed[name] = tensor
    renamed["model.steps"] = torch.tensor(2)
    checkpoint["state_dict"] = renamed
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert export_main([f"ckpt_path={old}", f"out={tmp_path / 'old'}"]) == 0
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={tmp_path / 'new'}"]) == 0
    converted, current = vqkit.load_tokenizer(tmp_path / "old"), vqkit.load_tokenizer(tmp_path / "new")
    assert converted.vocab == current.vocab
    expected = {**current.config["model"]["quantizer"], "inner_options": {"kmeans_init": True}}
    # options added after 0.1 are left at their defaults (text: no compression weight in the quantizer, soft expansion)
    assert current.config["model"]["quantizer"]["compression_weight"] == 0.0
    later = ("kernel", "compression_weight", "expansion", "target_rate", "rate_control", "rate_lr", "rate_momentum")
    assert converted.config["model"]["quantizer"] == {k: v for k, v in expected.items() if k not in later}
    text = "Shall I compare thee to a summer's day?"
    assert converted.set_mode("model").encode(text) == current.set_mode("model").encode(text)
