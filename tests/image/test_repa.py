"""Representation alignment: the packaged pretrained encoder is real, and the loss term trains what it should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as TF

from vqkit.layers.feature_encoder import FrozenFeatureEncoder, efficientnet_lite0_weights, load_weights, read_state_dict
from vqkit.lit.run_config import module_from_config
from vqkit.losses import LossInputs, LossTerm
from vqkit.losses.repa import RepresentationAlignment
from vqkit.models import ModelOutput
from vqkit.quantizers import QuantizerOutput
from vqkit.train import train

SKIMAGE_DATA = Path(next(iter(importlib.util.find_spec("skimage").submodule_search_locations))) / "data"
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def photo(name: str, size: int = 224) -> torch.Tensor:
    img = Image.open(SKIMAGE_DATA / name).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True).unsqueeze(0)


def test_packaged_efficientnet_weights_recognise_a_cat() -> None:
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    load_weights(model, read_state_dict(efficientnet_lite0_weights()))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        top5 = model((photo("chelsea.png") - mean) / std).topk(5).indices[0].tolist()
    assert top5[0] in IMAGENET_CATS, top5


def test_frozen_encoder_gives_patch_features_and_stays_frozen() -> None:
    enc = FrozenFeatureEncoder(image_size=96)
    enc.train()
    assert not enc.model.training and not any(p.requires_grad for p in enc.parameters())
    feats = enc(torch.rand(2, 3, 48, 48))
    assert feats.shape == (2, 9, enc.feature_dim)  # 96 / 32 = 3 -> 3x3 patches


def test_weights_from_any_path_and_bad_files(tmp_path: Path) -> None:
    donor = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(donor.state_dict(), str(tmp_path / "w.safetensors"))
    enc = FrozenFeatureEncoder("resnet10t", str(tmp_path / "w.safetensors"), image_size=64)
    torch.testing.assert_close(enc.model.conv1[0].weight, donor.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenFeatureEncoder("resnet10t", str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="state dict"):
        FrozenFeatureEncoder("resnet10t", str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="do not fit"):
        FrozenFeatureEncoder("efficientnet_lite0", str(tmp_path / "w.safetensors"))


def test_alignment_loss_trains_projector_and_tokens_not_encoder() -> None:
    repa = RepresentationAlignment(token_dim=8, feature_encoder=FrozenFeatureEncoder(image_size=64), hidden_dim=16)
    assert isinstance(repa, LossTerm) and repa.weight == 0.1  # SoftVQ-VAE's weight by default
    tokens = torch.randn(2, 4, 8, requires_grad=True)
    images = torch.rand(2, 3, 32, 32)
    loss = repa.alignment(tokens, images)
    assert -1.0 <= loss.item() <= 1.0
    loss.backward()
    assert tokens.grad.abs().sum() > 0
    assert all(p.grad is not None for p in repa.projector.parameters())
    assert all(p.grad is None for p in repa.feature_encoder.parameters())
    # as a loss term it aligns the quantized tokens to features of the data in its natural range ([0, 1])
    quantized = QuantizerOutput(z_q=tokens, indices=torch.zeros(2, 4, dtype=torch.long), loss=torch.zeros(()))
    output = ModelOutput(reconstruction=images * 2 - 1, quantized=quantized, latents=tokens)
    batch = LossInputs(inputs=images * 2 - 1, data=images, output=output)
    torch.testing.assert_close(repa(batch), loss)


def test_match_count_on_grids_and_sequences() -> None:
    feats = torch.randn(2, 16, 5)
    assert RepresentationAlignment.match_count(feats, 4).shape == (2, 4, 5)  # 4x4 grid -> 2x2
    assert RepresentationAlignment.match_count(feats, 8).shape == (2, 8, 5)  # sequence pooling
    torch.testing.assert_close(RepresentationAlignment.match_count(feats, 16), feats)


def test_training_with_repa_logs_the_alignment_loss(make_config) -> None:
    cfg = make_config("repa=efficientnet_lite0", "module.losses.repa.feature_encoder.image_size=64",
                      "trainer.max_steps=2", "test=false")
    result = train(cfg)
    assert "train/repa" in result["metrics"] and -1.0 <= result["metrics"]["train/repa"] <= 1.0
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert "losses.repa.projector.0.weight" in state and not any(k.startswith("model.repa") for k in state)
    assert not any(k.startswith("losses.repa.feature_encoder.") for k in state), "frozen encoder weights were saved"
    module = module_from_config(cfg)  # the checkpoint still loads strictly: the encoder keeps its own weights
    encoder = {k: v.clone() for k, v in module.losses.repa.feature_encoder.state_dict().items()}
    module.load_state_dict(state, strict=True)
    assert all(torch.equal(v, module.losses.repa.feature_encoder.state_dict()[k]) for k, v in encoder.items())
