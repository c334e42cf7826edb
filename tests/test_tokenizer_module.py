"""TokenizerModule: named loss terms (weight 0 = logged only, warm-ups), parameter groups, and LPIPS as an ordinary
loss term that works without a GAN and stays out of checkpoints."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vqkit.lit import TokenizerModule
from vqkit.lit.run_config import module_from_config
from vqkit.losses import L1, L2, LossTerm
from vqkit.train import train


@pytest.fixture
def module(make_config) -> TokenizerModule:
    """The default image module (image_conv, vq; L1 weight 1, L2 weight 0) with no LR schedule."""
    torch.manual_seed(0)
    # no revival either: it rewrites codes between the calls the copies below are compared across
    return module_from_config(make_config("scheduler=none", "quantizer.kmeans_init=false",
                                          "quantizer.dead_code_threshold=0.0"))


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def gradients(module: TokenizerModule, step: int | None = 0) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    total, _, _ = module.compute_losses(images(), step)
    total.backward()
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


# --- loss terms -------------------------------------------------------------------------------------------------


def test_a_zero_weight_term_is_logged_and_leaves_the_gradients_unchanged(module: TokenizerModule) -> None:
    assert (module.losses.l1.weight, module.losses.l2.weight) == (1.0, 0.0)
    without = copy.deepcopy(module)
    del without.losses["l2"]
    weighted = copy.deepcopy(module)
    weighted.losses["l2"].weight = 1.0

    _, _, logs = module.compute_losses(images(), 0)
    assert {"l1", "l2", "loss"} <= set(logs) and logs["l2"] > 0  # computed and logged
    grads, reference = gradients(module), gradients(without)
    assert grads.keys() == reference.keys() and any(k.startswith("model.decoder.") for k in grads)
    assert all(torch.equal(grads[k], reference[k]) for k in grads), "a weight-0 term changed the gradients"
    changed = gradients(weighted)
    assert not all(torch.equal(changed[k], reference[k]) for k in reference), "a weighted term must change them"


def test_warmup_ramps_the_weight_in_training_only(module: TokenizerModule) -> None:
    term = L1(weight=2.0, warmup_steps=10)
    assert [term.weight_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert term.weight_at(None) == 2.0  # validation and test use the full weight
    assert L2().weight_at(0) == 1.0  # no warm-up
    with pytest.raises(ValueError, match=">= 0"):
        L1(weight=-1.0)

    module.losses["l1"] = term
    for step, weight in ((0, 0.0), (5, 1.0), (None, 2.0)):
        torch.manual_seed(0)
        total, out, logs = module.compute_losses(images(), step)
        torch.testing.assert_close(total, out.quantized.loss + weight * logs["l1"])
        assert ("l1/weight" in logs) == (step is not None)
        if step is not None:
            assert float(logs["l1/weight"]) == weight


def test_terms_are_logged_per_stage(make_config) -> None:
    module = module_from_config(make_config("module.losses.l1.warmup_steps=100", "scheduler=none"))
    loader = DataLoader(TensorDataset(images(8)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    metrics = trainer.callback_metrics
    for key in ("train/l1", "train/l2", "train/l1/weight", "train/loss", "train/quantizer/commit", "val/l1", "val/l2",
                "val/loss", "val/psnr", "val/codebook/usage"):
        assert key in metrics, (key, sorted(metrics))
    assert "val/l1/weight" not in metrics and float(metrics["train/l1/weight"]) == pytest.approx(0.01)


def test_losses_must_be_loss_terms() -> None:
    with pytest.raises(TypeError, match="losses.l1 must be a vqkit.losses.LossTerm, got L1Loss"):
        TokenizerModule(model=_tiny_model(), optimizer=partial(torch.optim.AdamW), losses={"l1": nn.L1Loss()})
    kept = TokenizerModule(model=_tiny_model(), optimizer=partial(torch.optim.AdamW), losses={"l1": L1(), "l2": None})
    assert list(kept.losses) == ["l1"] and isinstance(kept.losses["l1"], LossTerm)


# --- parameter groups -------------------------------------------------------------------------------------------


def _tiny_model():
    from tests.artifacts import TINY_MODEL
    from vqkit.models import TokenizerModel

    return TokenizerModel.from_config(TINY_MODEL)


def test_the_default_rule_decays_weight_matrices_only() -> None:
    model = _tiny_model()
    model.encoder.extra = nn.Embedding(5, 4)  # an embedding outside the quantizer
    module = TokenizerModule(model=model, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1))
    decay, no_decay = module.parameter_groups()
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(exempt) and decayed | exempt == set(names.values())
    assert decayed and all(module.get_parameter(n).ndim >= 2 for n in decayed)
    assert "model.encoder.extra.weight" in exempt  # embeddings
    assert {n for n in names.values() if n.startswith("model.quantizer.")} <= exempt  # the codebook
    assert {n for n in names.values() if n.endswith(".bias")} <= exempt
    norms = [f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.GroupNorm)]
    assert norms and set(norms) <= exempt
    optimizer = module.configure_optimizers()
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_param_groups_set_lr_scale_and_weight_decay_by_name(make_config) -> None:
    cfg = make_config(
        "scheduler=none", "module.optimizer.lr=0.001", "module.optimizer.weight_decay=0.01",
        "module.param_groups=[{match:'^model\\.quantizer\\.',lr_scale:10.0,weight_decay:0.5},"
        "{match:'^model\\.decoder\\.',lr_scale:0.5},{match:'bias$',weight_decay:0.2}]",
    )
    module = module_from_config(cfg)
    names = {id(p): n for n, p in module.named_parameters()}
    optimizer = module.configure_optimizers()
    groups = [(g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in optimizer.param_groups]
    assert [(lr, wd) for lr, wd, _ in groups] == [
        (0.001, 0.01), (0.001, 0.0), (pytest.approx(0.01), 0.5), (0.0005, 0.01), (0.001, 0.2)
    ]
    quantizer, decoder, biases = groups[2][2], groups[3][2], groups[4][2]
    assert quantizer == {n for n in names.values() if n.startswith("model.quantizer.")}
    assert decoder == {n for n in names.values() if n.startswith("model.decoder.")}  # its biases too: first match
    assert biases and all(n.endswith(".bias") and n.startswith("model.encoder.") for n in biases)
    assert all(g["initial_lr"] == g["lr"] for g in optimizer.param_groups)  # schedules start from the scaled rate
    with pytest.raises(ValueError, match=r"param_groups entries are \{match, lr_scale, weight_decay\}"):
        TokenizerModule(model=_tiny_model(), optimizer=partial(torch.optim.AdamW), param_groups=[{"lr": 1.0}])


def test_a_schedule_starts_from_each_group_s_scaled_rate(make_config) -> None:
    module = module_from_config(make_config("module.param_groups=[{match:quantizer,lr_scale:4.0}]"))
    optimizer = module.build_optimizer(module.optimizer_factory, module.parameter_groups())
    scheduler = module.scheduler_factory(optimizer, total_steps=20)
    base = module.optimizer_factory.keywords["lr"]
    assert scheduler.base_lrs == [base, base, pytest.approx(4 * base)]


# --- LPIPS as a loss term ---------------------------------------------------------------------------------------


def test_lpips_trains_without_a_gan_and_stays_out_of_the_checkpoint(make_config, tmp_path: Path) -> None:
    lpips = "+module.losses.lpips={_target_:vqkit.losses.perceptual.LPIPSLoss,weight:1.0}"
    cfg = make_config("model=image_conv", lpips, "trainer.max_steps=1", "test=false",
                      "callbacks.reconstruction_grid=null", "callbacks.codebook_usage_plot=null")
    result = train(cfg)
    assert "train/lpips" in result["metrics"] and result["metrics"]["train/lpips"] > 0
    checkpoint = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["vqkit_config"]["module"]["_target_"] == "vqkit.lit.TokenizerModule"  # no discriminator
    assert not any(k.startswith("losses.lpips.") for k in checkpoint["state_dict"]), "LPIPS weights were saved"

    module = module_from_config(cfg)
    net = module.losses.lpips.net
    lin = net.lins[0].weight
    lin.data.add_(1.0)
    changed = lin.detach().clone()
    module.load_state_dict(checkpoint["state_dict"], strict=True)  # the network keeps the weights it was built with
    assert torch.equal(net.lins[0].weight, changed)
    module.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    trained = {id(p) for g in module.parameter_groups() for p in g["params"]}
    assert trained.isdisjoint(id(p) for p in net.parameters())
