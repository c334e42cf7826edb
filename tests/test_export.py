"""Export: a vqkit.train checkpoint becomes the artifact of its model (config subtree + model.* tensors), loadable
without configs or pickle. Security checks: tests/test_security.py; the image artifact's API: tests/image/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import vqkit.train
from tests.artifacts import NOT_THE_MODEL, TINY_MODEL, tiny_checkpoint
from vqkit.export import export_tokenizer, main
from vqkit.lit import TokenizerModule
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.lit.run_config import module_from_config
from vqkit.models import ImageTokenizer, TokenizerModel
from vqkit.tokenizers import load_tokenizer


def trained_module(make_config, quantizer: str) -> tuple[Path, TokenizerModule]:
    """Train a few steps; return the checkpoint and its training module, rebuilt from it, in eval mode."""
    result = vqkit.train.train(make_config("trainer.max_steps=4", "test=false", f"quantizer={quantizer}"))
    ckpt_path = Path(result["checkpoint"])
    checkpoint = load_checkpoint(ckpt_path)
    module = module_from_config(OmegaConf.create(checkpoint["vqkit_config"]))
    module.load_state_dict(checkpoint["state_dict"])
    return ckpt_path, module.eval()


# --- a trained model round-trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["vq", "ema_vq"])
def test_export_then_load_reproduces_the_trained_model(make_config, tmp_path: Path, quantizer: str) -> None:
    ckpt_path, module = trained_module(make_config, quantizer)
    # vqkit.train checkpoints load with weights_only=True as they are: no extra allowed globals needed.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt_path) == []
    state = load_checkpoint(ckpt_path)["state_dict"]
    assert any(k.startswith("model.encoder.") for k in state) and any(k.startswith("model.quantizer.") for k in state)
    out = tmp_path / "artifact"
    exported = export_tokenizer(ckpt_path, out)
    assert isinstance(exported, ImageTokenizer) and not exported.training

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "vqkit-tokenizer" and config["format_version"] == 2 and config["modality"] == "image"
    assert config["codebook_size"] == 32 and config["token_dim"] == 8 and config["soft"] is False
    assert config["model"] == module.run_config["model"] == module.model.config
    assert config["model"]["_target_"] == "vqkit.models.ImageTokenizer"
    assert config["model"]["normalization"] == {"mean": 0.5, "std": 0.5, "range": [0.0, 1.0]}
    assert config["training"]["step"] == 4 and config["training"]["checkpoint"] == ckpt_path.name
    tensors = load_file(out / "model.safetensors")
    assert set(tensors) == set(module.model.state_dict())  # no losses.*, metrics or optimizer state
    if quantizer == "ema_vq":
        assert {"quantizer.embed", "quantizer.embed_avg", "quantizer.cluster_size"} <= set(tensors)

    tokenizer = load_tokenizer(out)
    assert isinstance(tokenizer, ImageTokenizer) and not tokenizer.training
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = tokenizer.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.int64
    tokens, _ = module.model.encoder(module.model.normalize(x))
    assert torch.equal(ids.flatten(1), module.model.quantizer.encode(tokens))
    recon = tokenizer.decode(ids)
    torch.testing.assert_close(recon, module.reconstruct(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokenizer.decode(ids.flatten(1), grid=(8, 8)), recon, atol=0, rtol=0)

    tokenizer.save_pretrained(tmp_path / "copy", info={"training": config["training"]})
    assert json.loads((tmp_path / "copy" / "config.json").read_text()) == config
    assert torch.equal(load_tokenizer(tmp_path / "copy").encode(x), ids)


def test_artifact_of_a_codebook_file_started_vqbridge_loads_without_the_file(make_config, tmp_path: Path) -> None:
    from vqkit.quantizers.codebook_file import save_codebook

    start = save_codebook(tmp_path / "start.safetensors", torch.randn(64, 8), {"source": "test"})
    result = vqkit.train.train(make_config("trainer.max_steps=2", "test=false", "quantizer=vqbridge",
                                           "quantizer.codebook_size=64", "quantizer.residual=true",
                                           "quantizer.width=32", "quantizer.num_heads=2",
                                           f"quantizer.init_codebook_path={start}"))
    out = tmp_path / "artifact"
    exported = export_tokenizer(result["checkpoint"], out)
    start.unlink()  # the artifact is used where the start file is not
    tokenizer = load_tokenizer(out)
    assert json.loads((out / "config.json").read_text())["model"]["quantizer"]["init_codebook_path"] is None
    torch.testing.assert_close(tokenizer.quantizer.codebook, exported.quantizer.codebook, atol=0, rtol=0)


def test_soft_quantizer_encodes_continuous_tokens(make_config, tmp_path: Path) -> None:
    ckpt_path, module = trained_module(make_config, "softvq")
    export_tokenizer(ckpt_path, tmp_path / "artifact")
    tokenizer = load_tokenizer(tmp_path / "artifact")
    assert tokenizer.soft and tokenizer.info["soft"] is True
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer.encode(x)
    assert tokens.shape == (2, 8, 8, 8) and tokens.is_floating_point()
    torch.testing.assert_close(tokenizer.decode(tokens), module.reconstruct(x), atol=1e-5, rtol=0)
    ids = tokenizer.encode_ids(x)
    latents, _ = module.model.encoder(module.model.normalize(x))
    assert torch.equal(ids.flatten(1), module.model.quantizer.encode(latents))
    assert tokenizer.decode(ids).shape == x.shape  # the hard approximation


def test_export_keeps_only_the_model_tensors(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    model = export_tokenizer(ckpt, tmp_path / "out")
    tensors = load_file(tmp_path / "out" / "model.safetensors")
    expected = TokenizerModel.from_config(TINY_MODEL).state_dict()
    assert set(tensors) == set(expected) and not set(tensors) & set(NOT_THE_MODEL)
    state = load_checkpoint(ckpt)["state_dict"]
    for name, tensor in tensors.items():
        assert torch.equal(tensor, state[f"model.{name}"]), name
    assert model.info["training"] == {"checkpoint": "tiny.ckpt", "step": 7, "epoch": 1, "lightning_version": "2.6.6"}


def test_cli_exports_and_a_fresh_process_loads_without_configs(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    cmd = [sys.executable, "-m", "vqkit.export", f"ckpt_path={ckpt}", f"out={tmp_path / 'tok'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vqkit: exported" in proc.stdout and "(step 7)" in proc.stdout and "16 codes" in proc.stdout
    tensors = len(TokenizerModel.from_config(TINY_MODEL).state_dict())
    assert f"kept the {tensors} model tensors" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ckpt", "tok"], "the CLI left files in its folder"
    load = (
        "import sys, torch\n"
        "from vqkit.tokenizers import load_tokenizer\n"
        "tok = load_tokenizer(sys.argv[1])\n"
        "ids = tok.encode(torch.rand(2, 3, 8, 8))\n"
        "assert ids.shape == (2, 4, 4) and tok.decode(ids).shape == (2, 3, 8, 8)\n"
        "from hydra.core.global_hydra import GlobalHydra\n"
        "assert not GlobalHydra.instance().is_initialized()\n"
        "print('loaded')\n"
    )
    cmd = [sys.executable, "-c", load, "tok"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["out=x"], 2, "missing ckpt_path"),
        (["ckpt_path=a.ckpt", "out=x", "lr=1"], 2, "Could not override 'lr'"),
        (["ckpt_path=a.ckpt", "out=x", "allow_pickle=maybe"], 2, "allow_pickle must be true or false"),
        (["ckpt_path=missing.ckpt", "out=x"], 1, "checkpoint not found: missing.ckpt"),
    ],
)
def test_cli_errors(capsys, args: list[str], status: int, message: str) -> None:
    assert main(args) == status
    assert message in capsys.readouterr().err


def test_cli_refuses_text_options_for_an_image_checkpoint(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    assert main([f"ckpt_path={ckpt}", f"out={tmp_path / 'out'}", "vocab_size=300"]) == 1
    assert "vocab_size only apply to text (GQ-VAE) checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_needs_a_vqkit_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, ckpt)
    with pytest.raises(ValueError, match="no vqkit_config.model .* written by vqkit.train"):
        export_tokenizer(ckpt, tmp_path / "out")
    (tmp_path / "broken.ckpt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.ckpt is not a readable PyTorch checkpoint"):
        export_tokenizer(tmp_path / "broken.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_weights_that_are_not_the_model_of_the_config(tmp_path: Path) -> None:
    # A checkpoint of vqkit 0.1 (weights at encoder.*, decoder.*, quantizer.*, no model.* prefix).
    weights = TokenizerModel.from_config(TINY_MODEL).state_dict()
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": weights, "vqkit_config": {"model": TINY_MODEL}}, old)
    with pytest.raises(ValueError, match=r"old.ckpt: its state_dict has no model\.\* entries"):
        export_tokenizer(old, tmp_path / "out")
    wider = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "channels": 8}}
    with pytest.raises(ValueError, match="do not fit the model of its vqkit_config"):
        export_tokenizer(tiny_checkpoint(tmp_path / "tiny.ckpt", config=wider), tmp_path / "out")
    assert not (tmp_path / "out").exists()
