"""Adversarial training (VQGAN / EnCodec recipes): GAN losses, LeCAM, adaptive weight, PatchGAN, and runs of
AdversarialTokenizerModule (discriminator, two optimizers, disc_start). The STFT discriminator of the waveform
models: tests/audio/test_stft_discriminator.py; LPIPS as a loss term: tests/test_tokenizer_module.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from vqkit.layers.diffaug import DiffAugment
from vqkit.layers.discriminator import NLayerDiscriminator
from vqkit.lit.adversarial_module import AdversarialTokenizerModule
from vqkit.lit.run_config import module_from_config
from vqkit.losses.adversarial import (
    LeCAMRegularizer,
    adaptive_generator_weight,
    consistency_loss,
    discriminator_loss,
    generator_loss,
    lecam_penalty,
)
from vqkit.train import train

# Small model overrides on top of conftest's FAST_OVERRIDES; a 2-layer PatchGAN takes images from 12 pixels.
# The LPIPS term (VGG16) is left out: it is a loss term like any other, tested with and without a GAN elsewhere.
GAN = [
    "model=image_conv_gan",
    "trainer.gradient_clip_val=null",
    "data.image_size=16",
    "data.train_samples=8",
    "data.val_samples=4",
    "module.discriminator.channels=8",
    "module.discriminator.num_layers=2",
    "module.losses.lpips=null",
]
GENERATOR = ("model.encoder.", "model.quantizer.", "model.decoder.")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: faster on one thread (tests/conftest.py)


# --- losses -----------------------------------------------------------------------------
def test_hinge_discriminator_loss_is_zero_only_when_logits_are_separated() -> None:
    real, fake = torch.tensor([1.0, 2.5, 1.0]), torch.tensor([-1.0, -3.0])
    assert discriminator_loss(real, fake, "hinge") == 0
    assert discriminator_loss(real - 0.5, fake, "hinge") > 0
    assert discriminator_loss(real, fake + 0.1, "hinge") > 0
    # 0.5 * (mean(relu(1 - r)) + mean(relu(1 + f))) for r = 0, f = 0
    assert torch.isclose(discriminator_loss(torch.zeros(4), torch.zeros(4), "hinge"), torch.tensor(1.0))
    ns = discriminator_loss(torch.zeros(4), torch.zeros(4), "non_saturating")
    assert torch.isclose(ns, torch.log(torch.tensor(2.0)))
    assert torch.isclose(generator_loss(torch.tensor([0.5, 1.5]), "hinge"), torch.tensor(-1.0))
    assert torch.isclose(generator_loss(torch.zeros(3), "non_saturating"), torch.log(torch.tensor(2.0)))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        discriminator_loss(real, fake, "wgan")


def test_lecam_matches_its_formula_with_ema_anchors() -> None:
    torch.manual_seed(0)
    reg = LeCAMRegularizer(decay=0.9)
    ema_r = ema_f = 0.0
    for _ in range(3):
        real, fake = torch.randn(2, 1, 3, 3) + 1.0, torch.randn(2, 1, 3, 3) - 1.0
        ema_r = 0.9 * ema_r + 0.1 * real.mean().item()
        ema_f = 0.9 * ema_f + 0.1 * fake.mean().item()
        expected = (torch.relu(real - ema_f) ** 2).mean() + (torch.relu(ema_r - fake) ** 2).mean()
        torch.testing.assert_close(reg(real, fake), expected)
    torch.testing.assert_close(reg.ema_real, torch.tensor(ema_r))
    torch.testing.assert_close(reg.ema_fake, torch.tensor(ema_f))
    assert set(reg.state_dict()) == {"ema_real", "ema_fake"}
    reg.eval()  # no update in eval mode
    real, fake = torch.randn(4), torch.randn(4)
    reg(real, fake)
    torch.testing.assert_close(reg.ema_real, torch.tensor(ema_r))
    torch.testing.assert_close(lecam_penalty(real, fake, reg.ema_real, reg.ema_fake), reg(real, fake))


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer() -> None:
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))
    critic = nn.Conv2d(3, 1, 3)
    x_hat = decoder(torch.randn(2, 4, 8, 8))
    target = torch.randn(2, 3, 8, 8)
    last = decoder[-1].weight

    nll = (x_hat - target).abs().mean()
    g_loss = -critic(x_hat).mean()
    weight = adaptive_generator_weight(nll, g_loss, last)
    assert last.grad is None, "the adaptive weight must not write .grad"

    nll.backward(retain_graph=True)
    nll_norm = last.grad.norm()
    last.grad = None
    g_loss.backward()
    expected = nll_norm / (last.grad.norm() + 1e-4)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad
    x_hat = decoder(torch.randn(2, 4, 8, 8))
    clamped = adaptive_generator_weight(x_hat.pow(2).sum() * 1e9, -critic(x_hat).mean() * 1e-9, last, max_weight=1e4)
    assert clamped == 1e4


# --- discriminator ----------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_patchgan_shapes_norms_and_init(norm: str) -> None:
    torch.manual_seed(0)
    disc = NLayerDiscriminator(in_channels=3, channels=16, num_layers=3, norm=norm)
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
    assert all(c.bias is None or not c.bias.any() for c in convs)
    kinds = {type(m) for m in disc.modules()}
    assert (nn.GroupNorm in kinds) == (norm == "group") and (nn.BatchNorm2d in kinds) == (norm == "batch")
    with pytest.raises(ValueError, match="num_layers"):
        disc(torch.randn(1, 3, 16, 16))


def test_patchgan_rejects_unknown_norm() -> None:
    with pytest.raises(ValueError, match="unknown discriminator norm"):
        NLayerDiscriminator(norm="layer")


# --- the Lightning module -----------------------------------------------------------------
def _module(make_config, *overrides: str) -> AdversarialTokenizerModule:
    cfg = make_config(*GAN, "scheduler=none", "module.disc_scheduler=null", *overrides)
    return module_from_config(cfg)


def _loader(n: int = 12) -> DataLoader:
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(images), batch_size=2)


def _fit(module: L.LightningModule, max_steps: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=_loader())
    return trainer


class _Snapshots(L.Callback):
    """Discriminator weights and trainer.global_step after every training batch."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, dict[str, Tensor]]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rows.append((batch_idx, trainer.global_step, copy.deepcopy(module.discriminator.state_dict())))


def test_module_wiring(make_config) -> None:
    module = _module(make_config)
    assert isinstance(module, AdversarialTokenizerModule) and set(module.losses) == {"l1", "l2"}
    disc = {id(p) for p in module.discriminator.parameters()}
    generator = [p for g in module.parameter_groups() for p in g["params"]]
    assert generator and not disc & {id(p) for p in generator}
    assert {id(p) for p in generator} == {id(p) for p in module.model.parameters()}
    assert module.model.decoder.get_parameter(module.last_layer) is module.model.decoder.net[-1].weight  # output conv
    module.train()
    assert module.training and module.discriminator.training and module.model.training
    state = module.state_dict()
    assert any(k.startswith("discriminator.") for k in state) and any(k.startswith("model.decoder.") for k in state)
    assert {"lecam.ema_real", "lecam.ema_fake"} <= set(state)
    with pytest.raises(Exception, match="is not a decoder parameter"):
        _module(make_config, "module.last_layer=nope.weight")


def test_disc_start_gates_the_discriminator_and_global_step_counts_batches(make_config) -> None:
    module = _module(make_config, "module.disc_start=3", "module.lecam_weight=0.01")
    initial = copy.deepcopy(module.discriminator.state_dict())
    snapshots = _Snapshots()
    trainer = _fit(module, max_steps=5, callbacks=[snapshots])

    assert [(b, s) for b, s, _ in snapshots.rows] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert trainer.global_step == 5
    for batch_idx, _, state in snapshots.rows:
        unchanged = all(torch.equal(state[k], initial[k]) for k in initial)
        assert unchanged == (batch_idx < 3), batch_idx
    opt_g, opt_d = trainer.optimizers
    assert {s["step"].item() for s in opt_g.state.values()} == {5}
    assert {s["step"].item() for s in opt_d.state.values()} == {2}
    for key in ("train/d_loss", "train/g_loss", "train/adaptive_weight", "train/logits_real", "train/logits_fake",
                "train/lecam", "train/l1", "train/l2", "train/loss"):
        assert key in trainer.callback_metrics, key


def test_zero_disc_weight_leaves_the_generator_update_unchanged(make_config) -> None:
    torch.manual_seed(0)
    logged = _module(make_config, "module.disc_start=0", "module.disc_weight=0.0")
    torch.manual_seed(0)
    without = _module(make_config, "module.disc_start=1000")
    weighted = copy.deepcopy(without)
    weighted.disc_start = 0

    trainer = _fit(logged, max_steps=3)
    _fit(without, max_steps=3)
    _fit(weighted, max_steps=3)

    for name, p in without.named_parameters():
        if name.startswith(GENERATOR):
            torch.testing.assert_close(dict(logged.named_parameters())[name], p, rtol=0, atol=1e-6, msg=name)
    assert not all(
        torch.allclose(dict(weighted.named_parameters())[n], p) for n, p in without.named_parameters()
        if n.startswith("model.decoder.")
    ), "with disc_weight > 0 the adversarial term must change the decoder's update"
    assert trainer.callback_metrics["train/g_loss"].abs() > 0
    assert trainer.callback_metrics["train/adaptive_weight"] > 0


def test_trainer_gradient_clipping_is_handed_to_the_module(make_config) -> None:
    # Lightning refuses Trainer(gradient_clip_val) with manual optimization; vqkit.train drops the
    # trainer's setting for such modules (they clip with module.gradient_clip_val) instead of failing.
    cfg = make_config(*GAN[:1], *GAN[2:], "debug=fdr")
    assert cfg.trainer.gradient_clip_val == 1.0
    with pytest.raises(MisconfigurationException, match="gradient clipping is not supported for manual"):
        L.Trainer(gradient_clip_val=1.0, fast_dev_run=True, logger=False, enable_progress_bar=False).fit(
            module_from_config(cfg), datamodule=instantiate(cfg.data)
        )
    assert train(cfg)["metrics"]["train/loss"] > 0


def test_train_writes_checkpoint_with_discriminator_and_both_optimizers_and_resumes(make_config) -> None:
    # 8 samples in batches of 4: 2 steps an epoch; the last checkpoint is written at the end of an epoch.
    first = train(make_config(*GAN, "trainer.max_steps=6", "trainer.log_every_n_steps=1", "module.disc_start=2"))
    ckpt = torch.load(first["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert any(k.startswith("discriminator.net.") for k in ckpt["state_dict"])
    assert any(k.startswith("model.decoder.") for k in ckpt["state_dict"])
    assert {"lecam.ema_real", "lecam.ema_fake"} <= set(ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    steps = [{s["step"].item() for s in opt["state"].values()} for opt in ckpt["optimizer_states"]]
    assert steps == [{6}, {4}]
    assert ckpt["vqkit_config"]["module"]["_target_"].endswith("AdversarialTokenizerModule")
    assert ckpt["vqkit_config"]["model"]["_target_"] == "vqkit.models.ImageTokenizer"  # what export writes
    assert "test/psnr" in first["metrics"] and "test/loss" in first["metrics"]
    header = (Path(first["output_dir"]) / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/loss", "val/psnr", "val/l1", "train/d_loss", "train/g_loss", "train/l1", "lr-discriminator"):
        assert key in header, key

    resumed = train(make_config(*GAN, "trainer.max_steps=8", "module.disc_start=2", "test=false",
                                f"ckpt_path={first['checkpoint']}"))
    ckpt = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8
    steps = [{s["step"].item() for s in opt["state"].values()} for opt in ckpt["optimizer_states"]]
    assert steps == [{8}, {6}], "both optimizers continue from their restored states"
    assert [s["last_epoch"] for s in ckpt["lr_schedulers"]] == [8, 6]
    assert Path(resumed["output_dir"], "samples", "recon_latest.png").is_file()


# --- SoftVQ-VAE's discriminator training: fixed weight, DiffAugment, consistency, loss scale -----------------
class _MeanDisc(nn.Module):
    """logit = w * mean(image): a discriminator whose logits and gradients are known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, images: Tensor) -> Tensor:
        return self.w * images.mean(dim=(1, 2, 3))


class _Shift(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images + 1.0


class _Spy(nn.Module):
    """An identity augmentation recording what it was applied to."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, images: Tensor) -> Tensor:
        self.calls.append(images.requires_grad)
        return images


def _toy_module(make_config, *overrides: str) -> AdversarialTokenizerModule:
    torch.manual_seed(0)
    module = _module(make_config, "module.disc_start=0", "module.adaptive_weight=false",
                     "module.gradient_clip_val=null", *overrides)
    module.discriminator = _MeanDisc()
    module.disc_optimizer_factory = lambda params: torch.optim.SGD(params, lr=1.0)
    return module


def test_fixed_gan_weight_never_computes_the_adaptive_weight(make_config, monkeypatch) -> None:
    def refuse(*args: Any) -> Tensor:
        raise AssertionError("adaptive weight computed with adaptive_weight=false")

    monkeypatch.setattr("vqkit.lit.adversarial_module.adaptive_generator_weight", refuse)
    trainer = _fit(_toy_module(make_config, "module.disc_weight=0.2"), max_steps=2)
    assert trainer.callback_metrics["train/adaptive_weight"] == 1.0


def test_disc_loss_weight_scales_the_discriminator_update(make_config) -> None:
    moved = []
    for scale in (1.0, 0.2):
        module = _toy_module(make_config, f"module.disc_loss_weight={scale}")
        _fit(module, max_steps=1)
        moved.append(module.discriminator.w.item() - 1.0)
    assert moved[0] != 0 and moved[1] == pytest.approx(0.2 * moved[0], rel=1e-5)


def test_diff_augment_is_applied_to_fake_in_both_updates_and_to_real(make_config) -> None:
    module = _toy_module(make_config)
    module.diff_augment = spy = _Spy()
    _fit(module, max_steps=1)
    # generator update: the reconstruction (with its graph); discriminator update: data, detached reconstruction
    assert spy.calls == [True, False, False]


def test_consistency_term_is_the_mse_of_logits_under_the_strong_augmentation(make_config) -> None:
    module = _toy_module(make_config, "module.cr_weight=4.0")
    assert isinstance(module.cr_augment, nn.Module)  # default strong DiffAugment
    module.cr_augment = _Shift()  # logits of x + 1 are those of x plus w = 1: the squared error is exactly 1
    trainer = _fit(module, max_steps=1)
    assert trainer.callback_metrics["train/cr"].item() == pytest.approx(1.0, abs=1e-6)
    assert consistency_loss(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])) == 2.0  # mean((0-2)^2, 0)
    off = _module(make_config)
    assert off.cr_augment is None and off.diff_augment is None and off.disc_loss_weight == 1.0


def test_feature_discriminator_module_updates_heads_only(make_config, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from vqkit.layers.feature_discriminator import PretrainedFeatureDiscriminator

    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("vit_tiny_patch16_224").state_dict().items()},
              str(path))
    torch.manual_seed(0)
    module = _module(make_config, "module.disc_start=0", "module.adaptive_weight=false")
    module.discriminator = PretrainedFeatureDiscriminator("vit_tiny_patch16_224", path, layers=(1, 3), image_size=32,
                                                          kernel_size=3, model_kwargs={"img_size": 32})
    module.diff_augment = DiffAugment()
    before = {k: v.clone() for k, v in module.discriminator.named_parameters()}
    trainer = _fit(module, max_steps=2)
    opt_d = trainer.optimizers[1]
    in_opt = {id(p) for g in opt_d.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in module.discriminator.heads.parameters()}
    for name, p in module.discriminator.named_parameters():
        changed = not torch.equal(before[name], p)
        if name.startswith("backbone."):
            assert not changed, name
    assert any(not torch.equal(before[n], p) for n, p in module.discriminator.named_parameters()
               if n.startswith("heads."))
    assert not any(k.startswith("discriminator.backbone.") for k in module.state_dict())


def test_softvq_recipe_sets_the_official_gan_values(make_config) -> None:
    cfg = make_config("recipe=softvq_imagenet256", "data=photos", "model=image_1d_gan", fast=False)
    m = cfg.module
    assert (m.adaptive_weight, m.disc_weight, m.disc_loss_weight, m.lecam_weight, m.cr_weight) == (
        False, 0.2, 0.2, 0.001, 4.0)
    assert m.disc_start == 20000 and m.gan_loss == "hinge"
    assert (m.diff_augment.policy, m.diff_augment.prob, m.diff_augment.cutout) == ("color,translation,cutout", 0.5, 0.2)
    assert (m.cr_augment.prob, m.cr_augment.cutout) == (1.0, 0.5)
    assert m.discriminator._target_.endswith("PretrainedFeatureDiscriminator") and "channels" not in m.discriminator
    assert (m.losses.repa.weight, m.losses.repa.hidden_dim, m.losses.repa.align) == (0.1, 1024, "repeat")
    assert (m.scheduler.warmup_steps, m.scheduler.warmup_start_ratio, cfg.trainer.max_steps) == (5004, 0.1, 250200)
    assert m.optimizer._target_ == "torch.optim.Adam" and m.optimizer.weight_decay == 0.0
