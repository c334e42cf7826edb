"""The 1-D transformer image tokenizer (vqkit/modalities/image_1d.py) and its config conf/model/image_1d.yaml."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from vqkit.lit.run_config import module_from_config
from vqkit.modalities.image_1d import (
    SIZES,
    SequenceMixer,
    TransformerImageDecoder,
    TransformerImageEncoder,
    resolve_size,
    sincos_2d,
)
from vqkit.models import ImageTokenizer
from vqkit.models.compat import compatible_quantizers
from vqkit.train import train

TINY = {"width": 32, "depth": 1, "num_heads": 2}

# Small enough for a few CPU steps; FAST_OVERRIDES of conftest set model.encoder.channels, which this model lacks.
TRAIN_OVERRIDES = [
    "model=image_1d",
    "data.image_size=32",
    "data.batch_size=4",
    "data.train_samples=16",
    "data.val_samples=8",
    "data.num_workers=0",
    "model.encoder.width=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.encoder.latent_dim=8",
    "model.encoder.num_latent_tokens=8",
    "quantizer.codebook_size=32",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
]


def pair(
    image_size: int | tuple[int, int] = 32,
    patch_size: int = 8,
    num_latent_tokens: int = 8,
    latent_dim: int = 8,
    stem: str = "patch",
    head: str = "linear",
    patch_pos_init: str = "normal",
    token_mixer: bool = False,
) -> tuple[TransformerImageEncoder, TransformerImageDecoder]:
    torch.manual_seed(0)
    kwargs = dict(
        latent_dim=latent_dim,
        image_size=image_size,
        patch_size=patch_size,
        num_latent_tokens=num_latent_tokens,
        patch_pos_init=patch_pos_init,
        token_mixer=token_mixer,
    )
    return (
        TransformerImageEncoder(**kwargs, **TINY, stem=stem),
        TransformerImageDecoder(**kwargs, **TINY, head=head),
    )


@pytest.mark.parametrize(
    ("image_size", "patch_size", "num_latent_tokens", "latent_dim"),
    [(32, 8, 8, 8), ((48, 32), 16, 5, 12), (16, 4, 32, 4)],
)
def test_shapes(image_size, patch_size: int, num_latent_tokens: int, latent_dim: int) -> None:
    encoder, decoder = pair(image_size, patch_size, num_latent_tokens, latent_dim)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = torch.randn(3, 3, h, w)
    tokens, hw = encoder(images)
    assert tokens.shape == (3, num_latent_tokens, latent_dim)
    assert hw == (h, w)
    assert decoder(tokens, hw).shape == images.shape
    assert encoder.latent_dim == decoder.latent_dim == latent_dim
    assert encoder.num_patches == decoder.num_patches == (h // patch_size) * (w // patch_size)


def test_token_count_does_not_depend_on_image_size() -> None:
    counts = {
        size: pair(size, 8, num_latent_tokens=6)[0](torch.randn(1, 3, size, size))[0].shape[1] for size in (16, 64)
    }
    assert counts == {16: 6, 64: 6}


@pytest.mark.parametrize(("stem", "head", "token_mixer"), [("patch", "linear", False), ("conv", "conv", True)])
def test_gradients_reach_latent_tokens_and_input_image(stem: str, head: str, token_mixer: bool) -> None:
    encoder, decoder = pair(stem=stem, head=head, patch_pos_init="sincos", token_mixer=token_mixer)
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    tokens, hw = encoder(images)
    tokens.retain_grad()
    decoder(tokens, hw).square().mean().backward()
    for name, grad in {
        "tokens": tokens.grad,
        "images": images.grad,
        "encoder.latent_tokens": encoder.latent_tokens.grad,
        "decoder.mask_token": decoder.mask_token.grad,
    }.items():
        assert grad is not None and grad.abs().sum() > 0, name
    missing = [n for n, p in [*encoder.named_parameters(), *decoder.named_parameters()] if p.grad is None]
    assert not missing, missing


@pytest.mark.parametrize(("image_size", "patch_size"), [(32, 8), ((48, 32), 16), (16, 2)])
def test_conv_stem_and_head_shapes(image_size, patch_size: int) -> None:
    encoder, decoder = pair(image_size, patch_size, stem="conv", head="conv")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert encoder.patch_embed(torch.randn(2, 3, h, w)).shape == (2, TINY["width"], h // patch_size, w // patch_size)
    tokens, hw = encoder(torch.randn(2, 3, h, w))
    assert decoder(tokens, hw).shape == (2, 3, h, w)
    # the conv head blends neighbouring patches (reach < 2 patches): the first patch's pixels depend on the
    # features of its neighbour, not on those of a patch 3 rows and columns away
    features = torch.randn(1, TINY["width"], h // patch_size, w // patch_size, requires_grad=True)
    decoder.to_pixels(features)[0, :, :patch_size, :patch_size].sum().backward()
    assert features.grad[0, :, 0, 1].abs().sum() > 0
    if min(features.shape[-2:]) >= 4:
        assert features.grad[0, :, 3:, 3:].abs().sum() == 0


def test_token_mixer_is_a_direct_path_between_patches_and_latent_tokens() -> None:
    encoder, decoder = pair(token_mixer=True)
    assert encoder.token_mixer.weight.shape == (8, 16) and decoder.token_mixer.weight.shape == (16, 8)
    images = torch.randn(2, 3, 32, 32)
    # zero attention and MLP outputs: the only path from the image to the tokens is then the mixer
    for module in (encoder, decoder):
        for block in module.transformer[:-1]:
            torch.nn.init.zeros_(block.attn.proj.weight), torch.nn.init.zeros_(block.attn.proj.bias)
            torch.nn.init.zeros_(block.mlp.fc2.weight), torch.nn.init.zeros_(block.mlp.fc2.bias)
    tokens, hw = encoder(images)
    assert not torch.allclose(tokens[0], tokens[1])
    outputs = decoder(tokens, hw)
    assert not torch.allclose(outputs[0], outputs[1])
    torch.nn.init.zeros_(encoder.token_mixer.weight)
    tokens, _ = encoder(images)
    assert torch.allclose(tokens[0], tokens[1])  # without the mixer (and attention) the image cannot reach them


def test_sequence_mixer_gain_scales_output_not_init() -> None:
    x = torch.randn(2, 5, 4)
    torch.manual_seed(0)
    slow = SequenceMixer(5, 3, gain=1.0)
    torch.manual_seed(0)
    fast = SequenceMixer(5, 3, gain=10.0)
    assert torch.allclose(slow(x), fast(x), atol=1e-6)  # same function at init
    assert fast(x).shape == (2, 3, 4)
    assert torch.allclose(fast(x)[:, 1], 10 * (fast.weight[1] @ x + fast.bias[1]), atol=1e-5)
    with pytest.raises(ValueError, match="token_mixer_gain must be > 0"):
        SequenceMixer(5, 3, gain=0.0)


def test_sincos_positions_are_distinct_and_learned() -> None:
    table = sincos_2d((3, 4), 16)
    assert table.shape == (1, 12, 16)
    assert torch.allclose(table[0, 0], torch.tensor([0.0, 1.0] * 4).repeat_interleave(torch.tensor([4, 4] * 4))[:16])
    assert torch.cdist(table[0], table[0]).add(torch.eye(12) * 10).min() > 0.1  # every position differs
    assert torch.equal(table[0, 5, 8:], table[0, 1, 8:])  # row 1, col 1 shares the column half with row 0, col 1
    encoder, decoder = pair(patch_pos_init="sincos")
    for module in (encoder, decoder):
        assert module.patch_pos_embed.requires_grad
        assert torch.equal(module.patch_pos_embed.detach(), sincos_2d(module.grid_size, module.width))
    with pytest.raises(ValueError, match="width divisible by 4"):
        sincos_2d((2, 2), 6)


def test_bad_stem_head_and_init_options_are_reported() -> None:
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv'"):
        TransformerImageEncoder(image_size=32, patch_size=8, stem="mlp", **TINY)
    with pytest.raises(ValueError, match="head must be 'linear' or 'conv'"):
        TransformerImageDecoder(image_size=32, patch_size=8, head="deconv", **TINY)
    with pytest.raises(ValueError, match="patch_pos_init must be 'normal' or 'sincos'"):
        TransformerImageDecoder(image_size=32, patch_size=8, patch_pos_init="zeros", **TINY)
    with pytest.raises(ValueError, match="stem='conv' needs a patch_size that is a power of two"):
        TransformerImageEncoder(image_size=36, patch_size=6, stem="conv", **TINY)
    with pytest.raises(ValueError, match="head='conv' needs a patch_size that is a power of two"):
        TransformerImageDecoder(image_size=36, patch_size=6, head="conv", **TINY)


def test_image_size_not_divisible_by_patch_size_is_reported() -> None:
    with pytest.raises(ValueError, match=r"50x50 is not divisible by the patch size 8"):
        TransformerImageEncoder(image_size=50, patch_size=8, **TINY)
    with pytest.raises(ValueError, match=r"32x36 is not divisible by the patch size 8"):
        TransformerImageDecoder(image_size=(32, 36), patch_size=8, **TINY)


def test_other_input_size_is_reported() -> None:
    encoder, decoder = pair(32, 8)
    with pytest.raises(ValueError, match=r"image size 48x48 differs from the encoder's image_size 32x32"):
        encoder(torch.randn(1, 3, 48, 48))
    tokens, _ = encoder(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"image size 16x16 differs from the decoder's image_size 32x32"):
        decoder(tokens, (16, 16))
    with pytest.raises(ValueError, match=r"expected tokens \(B, 8, 8\)"):
        decoder(tokens[:, :4], (32, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        encoder(torch.randn(1, 1, 32, 32))


def test_size_presets() -> None:
    assert {k: (v["width"], v["depth"], v["num_heads"]) for k, v in SIZES.items()} == {
        "XS": (128, 3, 4),
        "S": (512, 8, 8),
        "B": (768, 12, 12),
        "L": (1024, 24, 16),
    }
    for size in ("S", "B", "L"):
        encoder = TransformerImageEncoder(image_size=16, patch_size=16, num_latent_tokens=1, size=size, depth=1)
        assert (encoder.width, encoder.num_heads, len(encoder.transformer)) == (
            SIZES[size]["width"],
            SIZES[size]["num_heads"],
            2,  # one block + the final norm
        )
    assert resolve_size("B", width=64, num_heads=4) == (64, 12, 4)
    assert resolve_size(None, 96, 2, 3) == (96, 2, 3)
    with pytest.raises(ValueError, match="unknown transformer size 'XL'"):
        resolve_size("XL")
    with pytest.raises(ValueError, match="give width, depth explicitly"):
        resolve_size(None, num_heads=4)
    with pytest.raises(ValueError, match="width 100 is not divisible by num_heads 8"):
        resolve_size("S", width=100)


def test_bf16_autocast_forward_and_backward() -> None:
    encoder, decoder = pair()
    images = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, hw = encoder(images)
        out = decoder(tokens.float(), hw)  # quantizers hand back fp32 latents
    assert out.shape == images.shape and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert encoder.latent_tokens.grad is not None and torch.isfinite(encoder.latent_tokens.grad).all()


def test_bf16_weights_and_meta_device() -> None:
    encoder, decoder = pair()
    encoder, decoder = encoder.to(torch.bfloat16), decoder.to(torch.bfloat16)
    out = decoder(*encoder(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    encoder, decoder = encoder.to("meta"), decoder.to("meta")
    out = decoder(*encoder(torch.empty(2, 3, 32, 32, device="meta", dtype=torch.bfloat16)))
    assert out.device.type == "meta" and out.shape == (2, 3, 32, 32)


def test_config_sizes_and_interpolations(make_config) -> None:
    cfg = make_config(
        "model=image_1d", "model.encoder.size=S", "model.encoder.depth=1", "data.image_size=32", fast=False
    )
    model = instantiate(cfg.model)
    assert model.encoder.width == model.decoder.width == 512 and model.decoder.depth == 1
    assert model.encoder.image_size == model.decoder.image_size == (32, 32)
    assert model.quantizer.dim == model.decoder.latent_dim == 32
    cfg = make_config(*TRAIN_OVERRIDES, "model.encoder.width=null", "model.decoder.size=L", fast=False)
    model = instantiate(cfg.model)
    assert (model.encoder.width, model.decoder.width, model.decoder.num_heads) == (128, 1024, 2)


@pytest.mark.parametrize("quantizer", compatible_quantizers(ImageTokenizer))
def test_trains_with_every_quantizer(quantizer: str, make_config) -> None:
    tiny = ["quantizer.levels=[4,4,2]"] if quantizer == "fsq" else []  # fsq: prod(levels) = the fast settings' 32
    result = train(
        make_config(*TRAIN_OVERRIDES, f"quantizer={quantizer}", *tiny, "trainer.max_steps=3", "test=false", fast=False)
    )
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert ckpt["vqkit_config"]["model"]["encoder"]["_target_"].endswith("TransformerImageEncoder")


def test_bf16_mixed_fast_dev_run(make_config) -> None:
    result = train(make_config(*TRAIN_OVERRIDES, "debug=fdr", "trainer.precision=bf16-mixed", fast=False))
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))


def test_positional_embeddings_and_tokens_get_no_weight_decay(make_config) -> None:
    module = module_from_config(make_config("model=image_1d"))
    no_decay = {id(p) for p in module.parameter_groups()[1]["params"]}
    names = {n for n, p in module.named_parameters() if id(p) in no_decay}
    assert {"model.encoder.patch_pos_embed", "model.encoder.latent_tokens", "model.decoder.mask_token"} <= names
    assert "model.encoder.patch_embed.weight" not in names and "model.decoder.embed.weight" not in names
