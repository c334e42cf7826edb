"""Tokenizer artifacts: export from a checkpoint, load without configs or pickle, refuse untrusted content."""

from __future__ import annotations

import builtins
import datetime
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import load_file

import vqkit.train
from vqkit.export import export_tokenizer, main
from vqkit.lit import TokenizerModule
from vqkit.tokenizers import PARTS, ImageTokenizer, UnsafeConfigError, load_tokenizer

# A model small enough to build in milliseconds: f = 2, 4-dim tokens, 16 codes.
TINY_MODEL = {
    "_target_": "vqkit.lit.TokenizerModule",
    "encoder": {
        "_target_": "vqkit.modalities.image.ConvImageEncoder",
        "latent_dim": 4,
        "channels": 4,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
    },
    "decoder": {
        "_target_": "vqkit.modalities.image.ConvImageDecoder",
        "latent_dim": 4,
        "channels": 4,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
    },
    "quantizer": {"_target_": "vqkit.quantizers.VectorQuantizer", "dim": 4, "codebook_size": 16},
    "data_key": "image",
    "data_mean": 0.5,
    "data_std": 0.5,
    "data_range": [0.0, 1.0],
}


# A 1-D (TiTok-style) model: 6 tokens per 8x8 image.
TINY_1D = {
    "image_size": 8,
    "patch_size": 4,
    "num_latent_tokens": 6,
    "latent_dim": 4,
    "size": None,
    "width": 16,
    "depth": 1,
    "num_heads": 2,
}
TINY_1D_MODEL = {
    **TINY_MODEL,
    "encoder": {"_target_": "vqkit.modalities.image_1d.TransformerImageEncoder", **TINY_1D},
    "decoder": {"_target_": "vqkit.modalities.image_1d.TransformerImageDecoder", **TINY_1D},
}
SOFTVQ = {"_target_": "vqkit.quantizers.SoftVectorQuantizer", "dim": 4, "codebook_size": 16}


class WritesMarker:
    """Unpickling this opens (creates) ``path``: stands for any code a malicious pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def tiny_checkpoint(
    path: Path, model: dict[str, Any] = TINY_MODEL, config: dict[str, Any] | None = None, **extra: Any
) -> Path:
    """A checkpoint shaped like vqkit.train's, holding ``config`` (default ``model``) and weights of ``model``.

    It also holds weights of another module, which export must drop.
    """
    state = {
        f"{part}.{name}": tensor for part in PARTS for name, tensor in instantiate(model[part]).state_dict().items()
    }
    state["discriminator.weight"] = torch.ones(3)
    checkpoint = {
        "state_dict": state,
        "vqkit_config": {"model": config or model},
        "global_step": 7,
        "epoch": 1,
        "pytorch-lightning_version": "2.6.6",
        **extra,
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """The exported tiny tokenizer."""
    out = tmp_path / "tokenizer"
    export_tokenizer(tiny_checkpoint(tmp_path / "tiny.ckpt"), out)
    return out


def trained_module(make_config, quantizer: str) -> tuple[Path, TokenizerModule]:
    """Train a few steps; return the checkpoint and its LightningModule in eval mode."""
    result = vqkit.train.train(make_config("trainer.max_steps=4", "test=false", f"quantizer={quantizer}"))
    ckpt_path = Path(result["checkpoint"])
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = instantiate(checkpoint["vqkit_config"]["model"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    return ckpt_path, module.eval()


def edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))


# --- a trained model round-trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["vq", "ema_vq"])
def test_export_then_load_reproduces_the_trained_model(make_config, tmp_path: Path, quantizer: str) -> None:
    ckpt_path, module = trained_module(make_config, quantizer)
    # vqkit.train checkpoints load with weights_only=True as they are: no extra allowed globals needed.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt_path) == []
    out = tmp_path / "artifact"
    export_tokenizer(ckpt_path, out)

    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "vqkit-tokenizer" and config["format_version"] == 1 and config["modality"] == "image"
    assert config["codebook_size"] == 32 and config["token_dim"] == 8 and config["soft"] is False
    assert config["data"] == {"mean": 0.5, "std": 0.5, "range": [0.0, 1.0], "key": "image"}
    assert config["training"]["step"] == 4 and config["training"]["checkpoint"] == ckpt_path.name
    assert {part: config[part] for part in PARTS} == {part: module.run_config["model"][part] for part in PARTS}
    tensors = load_file(out / "model.safetensors")
    assert set(tensors) == {name for name in module.state_dict() if name.split(".")[0] in PARTS}
    if quantizer == "ema_vq":
        assert {"quantizer.embed", "quantizer.embed_avg", "quantizer.cluster_size"} <= set(tensors)

    tokenizer = load_tokenizer(out)
    assert isinstance(tokenizer, ImageTokenizer) and not tokenizer.training
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = tokenizer.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.int64
    tokens, _ = module.encoder(module.normalize(x))
    assert torch.equal(ids.flatten(1), module.quantizer.encode(tokens))
    recon = tokenizer.decode(ids)
    torch.testing.assert_close(recon, module.reconstruct(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokenizer.decode(ids.flatten(1), grid=(8, 8)), recon, atol=0, rtol=0)

    copy = load_tokenizer(tokenizer.save(tmp_path / "copy"))
    assert copy.config == tokenizer.config
    assert torch.equal(copy.encode(x), ids)


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
    assert json.loads((out / "config.json").read_text())["quantizer"]["init_codebook_path"] is None
    torch.testing.assert_close(tokenizer.quantizer.codebook, exported.quantizer.codebook, atol=0, rtol=0)


def test_soft_quantizer_encodes_continuous_tokens(make_config, tmp_path: Path) -> None:
    ckpt_path, module = trained_module(make_config, "softvq")
    export_tokenizer(ckpt_path, tmp_path / "artifact")
    tokenizer = load_tokenizer(tmp_path / "artifact")
    assert tokenizer.soft and tokenizer.config["soft"] is True
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer.encode(x)
    assert tokens.shape == (2, 8, 8, 8) and tokens.is_floating_point()
    torch.testing.assert_close(tokenizer.decode(tokens), module.reconstruct(x), atol=1e-5, rtol=0)
    ids = tokenizer.encode_ids(x)
    latents, _ = module.encoder(module.normalize(x))
    assert torch.equal(ids.flatten(1), module.quantizer.encode(latents))
    assert tokenizer.decode(ids).shape == x.shape  # the hard approximation


@pytest.mark.parametrize("soft", [False, True])
def test_one_dimensional_models_give_token_sequences(tmp_path: Path, soft: bool) -> None:
    model = {**TINY_1D_MODEL, "quantizer": SOFTVQ} if soft else TINY_1D_MODEL
    ckpt = tiny_checkpoint(tmp_path / "1d.ckpt", model)
    export_tokenizer(ckpt, tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer.image_size == (8, 8) and tokenizer.soft == soft
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    parts = {part: instantiate(model[part]).eval() for part in PARTS}
    for part, module in parts.items():
        module.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{part}.")})
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    latents, shape = parts["encoder"]((x - 0.5) / 0.5)
    quantized = parts["quantizer"](latents)
    ids = tokenizer.encode_ids(x)
    assert ids.shape == (2, 6) and torch.equal(ids, quantized.indices)
    codes = tokenizer.encode(x)
    assert codes.shape == ((2, 6, 4) if soft else (2, 6))
    expected = (parts["decoder"](quantized.z_q, shape) * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(tokenizer.decode(codes), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes images of 8x8 only"):
        tokenizer.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="grid is for 2-D tokenizers"):
        tokenizer.decode(ids, grid=(2, 3))
    with pytest.raises(ValueError, match=re.escape("1-D tokenizer decodes ids (B, N)")):
        tokenizer.decode(ids.reshape(2, 2, 3))


def test_cli_exports_and_a_fresh_process_loads_without_configs(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt")
    cmd = [sys.executable, "-m", "vqkit.export", f"ckpt_path={ckpt}", f"out={tmp_path / 'tok'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vqkit: exported" in proc.stdout and "16 codes" in proc.stdout
    assert "dropped 1 (discriminator)" in proc.stderr
    load = (
        "import sys, torch\n"
        "from hydra.core.global_hydra import GlobalHydra\n"
        "from vqkit.tokenizers import load_tokenizer\n"
        "tok = load_tokenizer(sys.argv[1])\n"
        "ids = tok.encode(torch.rand(2, 3, 8, 8))\n"
        "assert ids.shape == (2, 4, 4) and tok.decode(ids).shape == (2, 3, 8, 8)\n"
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
        (["ckpt_path=a.ckpt", "out=x", "lr=1"], 2, "got 'lr=1'"),
        (["ckpt_path=a.ckpt", "out=x", "allow_pickle=maybe"], 2, "allow_pickle must be true or false"),
        (["ckpt_path=missing.ckpt", "out=x"], 1, "checkpoint not found: missing.ckpt"),
    ],
)
def test_cli_errors(capsys, args: list[str], status: int, message: str) -> None:
    assert main(args) == status
    assert message in capsys.readouterr().err


# --- export refuses what it cannot trust -----------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_export_refuses_a_pickle_that_runs_code(tmp_path: Path, writer: str) -> None:
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "vqkit_config": {"model": TINY_MODEL}, "x": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*evil.ckpt.*allow_pickle=true") as info:
        export_tokenizer(ckpt, tmp_path / "out")
    if writer == "torch.save":
        assert "io.open" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_allow_pickle_must_be_explicit_and_warns(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", exported_on=datetime.date(2025, 1, 1))
    with pytest.raises(pickle.UnpicklingError, match="datetime.date"):
        export_tokenizer(ckpt, tmp_path / "out")
    with pytest.warns(UserWarning, match="arbitrary code"):
        tokenizer = export_tokenizer(ckpt, tmp_path / "out", allow_pickle=True)
    assert tokenizer.codebook_size == 16 and (tmp_path / "out" / "model.safetensors").is_file()


def test_export_needs_a_vqkit_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, ckpt)
    with pytest.raises(ValueError, match="no vqkit_config.model .* written by vqkit.train"):
        export_tokenizer(ckpt, tmp_path / "out")
    (tmp_path / "broken.ckpt").write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.ckpt is not a readable PyTorch checkpoint"):
        export_tokenizer(tmp_path / "broken.ckpt", tmp_path / "out")


def test_export_checks_the_targets_of_the_checkpoint_config(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    model = {**TINY_MODEL, "encoder": {"_target_": "os.system", "_args_": ["touch pwned"]}}
    with pytest.raises(UnsafeConfigError, match="encoder._target_ = 'os.system' is refused"):
        export_tokenizer(tiny_checkpoint(tmp_path / "evil.ckpt", config=model), tmp_path / "out")
    assert calls == []


# --- load refuses what it cannot trust -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "vqkit.train.train",  # a vqkit function
        "vqkit.data.EmbeddedPhotosDataModule",  # a vqkit class that is not an nn.Module
        "vqkit.lit.checkpoint_io.os.system",  # reached through a vqkit module
        "vqkit.lit.tokenizer_module.nn.Linear",  # an nn.Module, but not defined in vqkit
        "vqkit.__builtins__.eval",
        "vqkit.missing.Module",
    ],
)
@pytest.mark.parametrize("nested", [False, True])
def test_load_refuses_targets_other_than_vqkit_modules(artifact: Path, monkeypatch, target: str, nested: bool) -> None:
    calls = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(args)

    monkeypatch.setattr(os, "system", record)
    monkeypatch.setattr(builtins, "eval", record)
    monkeypatch.setattr(vqkit.train, "train", record)
    node = {"_target_": target, "_args_": ["touch pwned"]}
    edit_config(artifact, lambda c: c["encoder"].update(channels=node) if nested else c.update(encoder=node))
    with pytest.raises(UnsafeConfigError, match=r"config\.json: encoder(\.channels)?\._target_ = .* is refused"):
        load_tokenizer(artifact)
    assert calls == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("_partial_", True), ("_recursive_", False), ("_convert_", "all"), ("channels", "${oc.env:HOME}")],
)
def test_load_refuses_hydra_directives_and_interpolations(artifact: Path, key: str, value: Any) -> None:
    edit_config(artifact, lambda c: c["encoder"].update({key: value}))
    with pytest.raises(UnsafeConfigError, match=r"encoder\.(_partial_|_recursive_|_convert_|channels)"):
        load_tokenizer(artifact)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(format="something-else"), "not a vqkit tokenizer config"),
        (lambda c: c.update(format_version=2), "newer vqkit"),
        (lambda c: c.update(format_version=True), "positive integer"),
        (lambda c: c.update(modality="video"), "unknown modality 'video'; known: "),
        (lambda c: c.update(codebook_size=99), "config states {'codebook_size': 99}"),
        (lambda c: c["encoder"].update(channels=8), "model.safetensors does not fit the model"),
        (lambda c: c.pop("quantizer"), "quantizer must be an object with a _target_"),
    ],
)
def test_load_rejects_invalid_configs(artifact: Path, edit, message: str) -> None:
    edit_config(artifact, edit)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_tokenizer(artifact)


def test_load_names_missing_and_corrupt_files(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found: .*nowhere"):
        load_tokenizer(tmp_path / "nowhere")
    config_file, weights_file = artifact / "config.json", artifact / "model.safetensors"
    config, weights = config_file.read_bytes(), weights_file.read_bytes()
    for corrupt in (weights[: len(weights) // 2], weights[:6], b"not safetensors at all"):
        weights_file.write_bytes(corrupt)
        with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
            load_tokenizer(artifact)
    weights_file.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        load_tokenizer(artifact)
    weights_file.write_bytes(weights)
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_tokenizer(artifact)
    config_file.unlink()
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_tokenizer(artifact)
    config_file.write_bytes(config)
    assert load_tokenizer(artifact).codebook_size == 16


# --- inputs and outputs of ImageTokenizer ----------------------------------------------------------------------


def test_image_inputs_tensor_single_pil_and_path(artifact: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(artifact)
    assert tokenizer.codebook_size == 16 and tokenizer.token_dim == 4 and not tokenizer.soft
    assert tokenizer.device == torch.device("cpu") and tokenizer.to("cpu") is tokenizer
    pixels = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.save(tmp_path / "image.png")
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    ids = tokenizer.encode(x)
    assert ids.shape == (1, 4, 6)
    assert torch.equal(tokenizer.encode(image), ids)
    assert torch.equal(tokenizer.encode(tmp_path / "image.png"), ids)
    assert torch.equal(tokenizer.encode(str(tmp_path / "image.png")), ids)
    assert torch.equal(tokenizer.encode(torch.stack([x, x])), torch.cat([ids, ids]))
    recon = tokenizer.decode(ids)
    assert recon.shape == (1, 3, 8, 12) and 0 <= recon.min() and recon.max() <= 1 and not recon.requires_grad
    config = tokenizer.config
    config["data"]["mean"] = 0.0
    assert tokenizer.config["data"]["mean"] == 0.5


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(8, 8), ValueError, r"expected images \(B, 3, H, W\)"),
        (torch.rand(0, 3, 8, 8), ValueError, r"expected images \(B, 3, H, W\)"),
        (torch.rand(1, 1, 8, 8), ValueError, "3 channels"),
        (torch.rand(1, 8, 8, 3), ValueError, "channels last"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, ValueError, r"must lie in \[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, r"images.float\(\) / 255"),
        (torch.rand(1, 3, 7, 8), ValueError, "7x8 is not a multiple of the tokenizer's downsampling factor 2"),
        ("missing.png", FileNotFoundError, "image file not found: missing.png"),
        ([0.5, 0.5], TypeError, "got list"),
    ],
)
def test_encode_rejects_bad_images(artifact: Path, images: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_tokenizer(artifact).encode(images)


@pytest.mark.parametrize(
    ("codes", "grid", "message"),
    [
        (torch.full((1, 2, 2), 16), None, r"code ids must lie in \[0, 15\]"),
        (torch.zeros(1, 4, dtype=torch.long), None, r"decode\(codes, grid=\(h, w\)\)"),
        (torch.zeros(1, 4, 4), None, r"flat codes \(B, h\*w, D\)"),
        (torch.zeros(1, 4, dtype=torch.long), (3, 2), r"grid=\(3, 2\) needs flat codes \(B, 6\)"),
        (torch.zeros(1, 2, 2, 5), None, r"tokens \(B, h, w, 4\)"),
    ],
)
def test_decode_rejects_bad_codes(artifact: Path, codes: torch.Tensor, grid: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_tokenizer(artifact).decode(codes, grid=grid)
