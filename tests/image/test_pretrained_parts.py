"""SoftVQ-VAE's pretrained parts, offline: timm models from local weights files (vqkit.layers.pretrained), the
frozen-backbone discriminator, DiffAugment, REPA's `repeat` alignment and the 1-D encoder's ViT initialisation.
Tiny randomly initialised timm ViTs saved to tmp files stand in for DINO / DINOv2 weights."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from vqkit.layers.diffaug import DiffAugment, cutout, translate
from vqkit.layers.feature_discriminator import PretrainedFeatureDiscriminator
from vqkit.layers.pretrained import build_timm_model, read_state_dict
from vqkit.losses.repa import RepresentationAlignment
from vqkit.modalities.image_1d import TransformerImageEncoder, init_encoder_from_timm_vit

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = "vit_tiny_patch16_224"  # width 192, 12 blocks, 3 heads


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    vit = timm.create_model(VIT, pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return vit, path


# --- weights files ------------------------------------------------------------------------------
def test_build_timm_model_loads_a_local_file_and_resamples_embeddings(vit_file, tmp_path: Path) -> None:
    vit, path = vit_file
    same = build_timm_model(VIT, path)
    assert all(torch.equal(v, vit.state_dict()[k]) for k, v in same.state_dict().items())
    pth = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), pth)  # a plain .pth state dict reads with weights_only=True
    assert torch.equal(build_timm_model(VIT, pth).blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    # other geometry (32 px, patch 8): timm's checkpoint filter resamples the position and patch embeddings
    small = build_timm_model(VIT, path, img_size=32, patch_size=8, num_classes=0, drop_prefixes=("head.",))
    assert small.pos_embed.shape == (1, 1 + 16, 192) and small.patch_embed.proj.weight.shape == (192, 3, 8, 8)
    assert torch.equal(small.blocks[5].mlp.fc1.weight, vit.blocks[5].mlp.fc1.weight)


def test_missing_or_wrong_weights_give_errors_naming_the_file_and_the_fix(vit_file, tmp_path: Path) -> None:
    _, path = vit_file
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors.*module\.x\.weights_path.*never downloads"):
        build_timm_model(VIT, missing, option="module.x.weights_path")
    with pytest.raises(ValueError, match=r"module\.x\.weights_path=/path/to/weights"):
        build_timm_model(VIT, None, option="module.x.weights_path")
    with pytest.raises(ValueError, match=r"vit_tiny\.safetensors.*shape mismatch .*names the architecture"):
        build_timm_model("vit_small_patch16_224", path)  # width 384 vs the file's 192
    wrong = tmp_path / "renamed.safetensors"
    save_file({"encoder." + k: v for k, v in read_state_dict(path).items()}, str(wrong))
    with pytest.raises(ValueError, match=r"renamed\.safetensors.*missing .*unexpected"):
        build_timm_model(VIT, wrong)
    code = tmp_path / "code.pth"
    with open(code, "wb") as f:
        pickle.dump({"w": torch.zeros(1), "f": print}, f)
    with pytest.raises(ValueError, match="without unpickling code"):
        read_state_dict(code)


# --- DiffAugment ----------------------------------------------------------------------------------
def test_diffaugment_keeps_shapes_and_is_differentiable() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment(prob=1.0)(x)
    assert out.shape == x.shape and not torch.equal(out, x)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(DiffAugment(prob=0.0)(x), x)
    with pytest.raises(ValueError, match="unknown DiffAugment group"):
        DiffAugment(policy="color,flip")


def test_translation_shifts_in_zeros_and_cutout_zeroes_one_square() -> None:
    torch.manual_seed(1)
    x = torch.ones(8, 1, 8, 8)
    shifted = translate(x, ratio=0.25)  # shifts of up to 2 pixels: whole rows/columns of zeros
    assert ((shifted == 0) | (shifted == 1)).all()
    for img in shifted[:, 0]:
        rows, cols = (img.sum(1) > 0), (img.sum(0) > 0)
        assert torch.equal(img, rows[:, None].float() * cols[None, :].float())
        assert rows.sum() >= 6 and cols.sum() >= 6
    holes = (cutout(torch.ones(16, 1, 10, 10), ratio=0.5) == 0).sum(dim=(1, 2, 3))
    assert (holes <= 25).all() and (holes > 0).all()  # a 5 x 5 square, clipped at the border


# --- the frozen-backbone discriminator -------------------------------------------------------------
def test_feature_discriminator_reads_vit_levels_and_trains_only_its_heads(vit_file) -> None:
    vit, path = vit_file
    disc = PretrainedFeatureDiscriminator(VIT, path, layers=(2, 5, 8, 11), image_size=32, model_kwargs={"img_size": 32})
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("heads.") for n in trainable)
    assert len(disc.heads) == 5  # the first block's input + 4 blocks
    assert not any(k.startswith("backbone.") for k in disc.state_dict())  # rebuilt from its file
    disc.load_state_dict(disc.state_dict())
    disc.train()
    assert disc.heads.training and not disc.backbone.training
    x = torch.rand(2, 3, 48, 48, requires_grad=True) * 2 - 1
    x.retain_grad()
    logits = disc(x)
    assert logits.shape == (2, 5 * 4)  # 5 levels x (32 / 16)^2 tokens
    logits.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator gets gradients through the backbone
    assert all(p.grad is None for p in disc.backbone.parameters())
    assert torch.equal(disc.backbone.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)


def test_feature_discriminator_on_the_packaged_efficientnet() -> None:
    disc = PretrainedFeatureDiscriminator("efficientnet_lite0", None, layers=(3, 4), image_size=64)
    assert disc(torch.zeros(1, 3, 64, 64)).shape == (1, 4 * 4 + 2 * 2)
    with pytest.raises(ValueError, match=r"module\.discriminator\.weights_path="):
        PretrainedFeatureDiscriminator(VIT, None)


# --- REPA ---------------------------------------------------------------------------------------------
class _Features(nn.Module):
    feature_dim = 2

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features


def test_repa_repeat_compares_each_token_with_its_run_of_patches() -> None:
    # 4 patches, 2 tokens: token 0 vs patches 0-1, token 1 vs patches 2-3 (raster order)
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])
    term = RepresentationAlignment(token_dim=2, feature_encoder=_Features(feats), hidden_dim=4, align="repeat")
    term.projector = nn.Identity()
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # cosines 1, 1, 1, -1 -> mean 0.5
    assert torch.isclose(term.alignment(tokens, torch.zeros(1, 3, 4, 4)), torch.tensor(-0.5))
    with pytest.raises(ValueError, match="multiple of the token count"):
        term.alignment(torch.zeros(1, 3, 2), torch.zeros(1, 3, 4, 4))


# --- encoder initialisation ------------------------------------------------------------------------
def test_encoder_init_copies_every_matching_tensor_and_reports_the_rest(vit_file) -> None:
    vit, path = vit_file
    enc = TransformerImageEncoder(latent_dim=8, image_size=32, patch_size=8, num_latent_tokens=4, width=192,
                                  depth=12, num_heads=3)
    latents = enc.latent_tokens.detach().clone()
    report = init_encoder_from_timm_vit(enc, VIT, path)
    assert torch.equal(enc.transformer[7].mlp.fc2.weight, vit.blocks[7].mlp.fc2.weight)
    assert torch.equal(enc.transformer[12].weight, vit.norm.weight)  # the final norm
    assert enc.patch_embed.weight.shape == (192, 3, 8, 8)  # resampled from 16 x 16
    assert torch.equal(enc.latent_tokens, latents)
    assert report.not_initialised == ["latent_pos_embed", "latent_tokens", "proj.bias", "proj.weight"]
    assert report.unused == ["cls_token"] and not report.mismatched
    assert len(report.loaded) == len(enc.state_dict()) - 4
    narrow = TransformerImageEncoder(latent_dim=8, image_size=32, patch_size=8, num_latent_tokens=4, size="XS")
    with pytest.raises(ValueError, match="no tensor of vit_tiny_patch16_224"):
        init_encoder_from_timm_vit(narrow, VIT, path)
    with pytest.raises(ValueError, match=r"module\.encoder_init\.weights_path"):
        init_encoder_from_timm_vit(enc, VIT, None)


def test_encoder_init_from_a_dinov2_layout_needs_and_fills_layer_scale(tmp_path: Path) -> None:
    # DINOv2 ViTs (patch 14 at 518 px, LayerScale) loaded at the encoder's 32 px / patch 16, as SoftVQ-VAE does
    name = "vit_small_patch14_dinov2"
    torch.manual_seed(0)
    dino = timm.create_model(name, pretrained=False)
    path = tmp_path / "dinov2_s.safetensors"
    save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(path))
    sizes = {"latent_dim": 8, "image_size": 32, "patch_size": 16, "num_latent_tokens": 4, "width": 384, "depth": 12,
             "num_heads": 6}
    report = init_encoder_from_timm_vit(TransformerImageEncoder(**sizes), name, path)
    assert "blocks.0.ls1.gamma" in report.unused  # reported, not silently dropped
    enc = TransformerImageEncoder(**sizes, layer_scale=1e-5)
    report = init_encoder_from_timm_vit(enc, name, path)
    assert torch.equal(enc.transformer[4].ls2.gamma, dino.blocks[4].ls2.gamma)
    assert enc.patch_pos_embed.shape == (1, 4, 384) and report.unused == ["cls_token"]


# --- where the encoder init runs; the official warm-up ------------------------------------------------
def test_encoder_init_runs_once_at_the_start_of_a_fresh_fit(make_config) -> None:
    import lightning as L
    from hydra.utils import instantiate

    from vqkit.lit.run_config import module_from_config

    cfg = make_config("model=image_1d", "debug=fdr", "+module.encoder_init=null")
    module = module_from_config(cfg)
    assert module.encoder_init is None
    calls: list[nn.Module] = []

    def init(encoder: nn.Module) -> str:
        calls.append(encoder)
        return "ok"

    module.encoder_init = init
    L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False).fit(
        module, datamodule=instantiate(cfg.data)
    )
    assert calls == [module.model.encoder]


def test_warmup_cosine_can_start_from_a_fraction_of_the_rate() -> None:
    from vqkit.lit.schedules import warmup_cosine

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = warmup_cosine(opt, total_steps=100, warmup_steps=10, min_lr_ratio=0.1, warmup_start_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # timm's linear warm-up from warmup_lr 1e-5: 1e-5 + k * (1e-4 - 1e-5) / 10 at step k
    assert lrs[0] == pytest.approx(1e-5) and lrs[5] == pytest.approx(5.5e-5) and lrs[10] == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.01)
