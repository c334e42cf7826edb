"""The image artifact: ImageTokenizer's save_pretrained / from_pretrained folder, load_tokenizer's checks, and
encode / decode of images and ids (tensors, PIL images, paths; grid and 1-D models)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.artifacts import SOFTVQ, TINY_1D_MODEL, TINY_MODEL, edit_config, tiny_checkpoint
from vqkit.export import export_tokenizer
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.modalities.image import ConvImageDecoder, ConvImageEncoder
from vqkit.models import AudioTokenizer, ImageTokenizer, TokenizerModel, load_model
from vqkit.quantizers import VectorQuantizer
from vqkit.tokenizers import load_tokenizer

# --- save_pretrained / from_pretrained ------------------------------------------------------------------------


def test_save_pretrained_then_from_pretrained_gives_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ImageTokenizer.from_config(TINY_MODEL).eval()
    out = tmp_path / "tok"
    model.save_pretrained(out, info={"training": {"step": 3}})

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert (config["format"], config["format_version"], config["modality"]) == ("vqkit-tokenizer", 2, "image")
    assert (config["codebook_size"], config["token_dim"], config["soft"]) == (16, 4, False)
    assert config["model"] == TINY_MODEL and config["model"]["_target_"] == "vqkit.models.ImageTokenizer"
    assert config["training"] == {"step": 3}
    assert (out / "README.md").read_text().startswith("---")  # a model card with its metadata header

    loaded = ImageTokenizer.from_pretrained(out)
    assert type(loaded) is ImageTokenizer and not loaded.training and loaded.config == TINY_MODEL
    assert loaded.info["training"] == {"step": 3} and loaded.info["format_version"] == 2
    state = model.state_dict()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(t, state[k]) for k, t in loaded.state_dict().items())
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = model.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), model.decode(ids))
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    for load in (TokenizerModel.from_pretrained, load_model, load_tokenizer):  # the base class and both loaders
        other = load(out)
        assert type(other) is ImageTokenizer and torch.equal(other.encode(x), ids)


def test_from_pretrained_of_another_modality_is_refused(tmp_path: Path) -> None:
    ImageTokenizer.from_config(TINY_MODEL).save_pretrained(tmp_path / "image")
    with pytest.raises(ValueError, match=r"holds a ImageTokenizer \(image\), not a AudioTokenizer"):
        AudioTokenizer.from_pretrained(tmp_path / "image")
    with pytest.raises(ValueError, match="is not a AudioTokenizer"):
        AudioTokenizer.from_config(TINY_MODEL)


def test_a_model_built_in_python_cannot_be_saved(tmp_path: Path) -> None:
    kwargs = {"latent_dim": 4, "channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1}
    quantizer = VectorQuantizer(dim=4, codebook_size=16)
    model = ImageTokenizer(ConvImageEncoder(**kwargs), ConvImageDecoder(**kwargs), quantizer)
    assert model.encode(torch.rand(1, 3, 8, 8)).shape == (1, 4, 4)  # usable, but it does not know its config
    with pytest.raises(ValueError, match=r"built in Python and does not know its config: build it with .*from_config"):
        model.save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok").exists() or not any((tmp_path / "tok").iterdir()), "a partial artifact was left"


def test_format_version_1_artifacts_ask_for_a_new_export(tmp_path: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    parts = {part: TINY_MODEL[part] for part in ("encoder", "decoder", "quantizer")}
    v1 = {"format": "vqkit-tokenizer", "format_version": 1, "vqkit_version": "0.1.0", "modality": "image",
          "codebook_size": 16, "token_dim": 4, "soft": False, **parts,
          "data": {"mean": 0.5, "std": 0.5, "range": [0.0, 1.0], "key": "image"}}
    (folder / "config.json").write_text(json.dumps(v1))
    (folder / "model.safetensors").write_bytes(b"")
    for load in (load_tokenizer, ImageTokenizer.from_pretrained):
        with pytest.raises(ValueError, match=r"format_version 1 .* export the checkpoint again with `python -m vqkit"):
            load(folder)


# --- load_tokenizer's checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(format="something-else"), "not a vqkit tokenizer config"),
        (lambda c: c.update(format_version=3), "newer vqkit"),
        (lambda c: c.update(format_version=True), "positive integer"),
        (lambda c: c.update(modality="audio"), "states {'modality': 'audio'}"),
        (lambda c: c.update(codebook_size=99), "states {'codebook_size': 99}"),
        (lambda c: c.pop("model"), "has no `model` object"),
        (lambda c: c["model"]["encoder"].update(channels=8), "model.safetensors does not fit the model"),
        (lambda c: c["model"].pop("quantizer"), "vqkit.models.ImageTokenizer cannot be built from this config"),
        (lambda c: c["model"].update(_target_="vqkit.models.AudioTokenizer"), "not a waveform encoder"),
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


@pytest.mark.parametrize("soft", [False, True])
def test_one_dimensional_models_give_token_sequences(tmp_path: Path, soft: bool) -> None:
    config = {**TINY_1D_MODEL, "quantizer": SOFTVQ} if soft else TINY_1D_MODEL
    ckpt = tiny_checkpoint(tmp_path / "1d.ckpt", config)
    export_tokenizer(ckpt, tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer.image_size == (8, 8) and tokenizer.soft == soft
    # the same network, rebuilt from the checkpoint by hand: encoder -> quantizer -> decoder in [-1, 1]
    model = TokenizerModel.from_config(config).eval()
    state = load_checkpoint(ckpt)["state_dict"]
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    latents, shape = model.encoder((x - 0.5) / 0.5)
    quantized = model.quantizer(latents)
    ids = tokenizer.encode_ids(x)
    assert ids.shape == (2, 6) and torch.equal(ids, quantized.indices)
    codes = tokenizer.encode(x)
    assert codes.shape == ((2, 6, 4) if soft else (2, 6))
    expected = (model.decoder(quantized.z_q, shape) * 0.5 + 0.5).clamp(0, 1)
    torch.testing.assert_close(tokenizer.decode(codes), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="takes images of 8x8 only"):
        tokenizer.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="grid is for 2-D tokenizers"):
        tokenizer.decode(ids, grid=(2, 3))
    with pytest.raises(ValueError, match=re.escape("1-D tokenizer decodes ids (B, N)")):
        tokenizer.decode(ids.reshape(2, 2, 3))


RESIDUAL = {"_target_": "vqkit.quantizers.ResidualQuantizer", "dim": 4, "codebook_size": 16, "num_stages": 3}


@pytest.mark.parametrize("config", [TINY_MODEL, TINY_1D_MODEL], ids=["grid", "1d"])
def test_residual_ids_carry_a_stage_axis(config: dict[str, Any]) -> None:
    """Residual quantizers give (B, h, w, S) / (B, N, S) ids; any first s <= S stages decode."""
    model = TokenizerModel.from_config({**config, "quantizer": RESIDUAL}).eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids = model.encode(x)
    assert ids.shape == ((2, 4, 4, 3) if model.image_size is None else (2, 6, 3)) and model.num_stages == 3
    torch.testing.assert_close(model.decode(ids), model.reconstruct(x), atol=1e-5, rtol=0)
    assert model.decode(ids[..., :1]).shape == x.shape
    if model.image_size is None:
        torch.testing.assert_close(model.decode(ids.flatten(1, 2), grid=(4, 4)), model.decode(ids))
    with pytest.raises(ValueError, match=re.escape("s<=3")):
        model.decode(ids[..., 0])
    with pytest.raises(ValueError, match="1 <= s <= 3"):
        model.decode(torch.cat([ids, ids[..., :1]], dim=-1))


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
    # normalize / denormalize are the config's {mean: 0.5, std: 0.5, range: [0, 1]}
    torch.testing.assert_close(tokenizer.normalize(x), x * 2 - 1)
    torch.testing.assert_close(tokenizer.denormalize(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize(
    ("images", "error", "message"),
    [
        (torch.rand(8, 8), ValueError, r"expected images \(B, 3, H, W\)"),
        (torch.rand(0, 3, 8, 8), ValueError, r"empty batch \(B = 0\) of images.*at least one image"),
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
