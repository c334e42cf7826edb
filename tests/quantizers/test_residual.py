"""Residual quantization: stage-by-stage refinement, quantizer dropout, any inner backend, per-stage usage."""

from __future__ import annotations

import pytest
import torch

from vqkit.metrics.codebook import CodebookUsage
from vqkit.quantizers import build_quantizer
from vqkit.train import train

D, K, S = 8, 32, 4


def make(stage: str = "vq", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    options = {"kmeans_init": True} if stage in ("vq", "ema_vq") else {}
    return build_quantizer("residual", dim=D, codebook_size=K, num_stages=S, stage_quantizer=stage,
                           stage_options=options, **kwargs)


def latents(seed: int = 1, b: int = 4, n: int = 64) -> torch.Tensor:
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stage", ["vq", "ema_vq"])
def test_each_stage_reduces_the_error(stage: str) -> None:
    q = make(stage).train()
    z = latents()
    q(z)  # k-means initialises every stage on its own residual
    q.eval()
    with torch.no_grad():
        out = q(z)
    rms = [float(out.metrics[f"stage{k}/residual_rms"]) for k in range(S)] + [float(out.metrics["residual_rms"])]
    assert all(a > b for a, b in zip(rms, rms[1:], strict=False)), rms
    errors = [float((q.decode(out.indices[..., :s]) - z).pow(2).mean().detach()) for s in range(1, S + 1)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * errors[0]
    torch.testing.assert_close(q.decode(out.indices), out.z_q, atol=1e-5, rtol=1e-5)


def test_fewer_stages_give_prefix_ids_and_matching_decode() -> None:
    q = make().train()
    q(latents())
    q.eval()
    z = latents(seed=2)
    full = q.encode(z)
    assert full.shape == (4, 64, S)
    two = q.encode(z, num_stages=2)
    assert torch.equal(two, full[..., :2])
    torch.testing.assert_close(q.decode(two), q(z, num_stages=2).z_q, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="num_stages"):
        q.encode(z, num_stages=S + 1)
    with pytest.raises(ValueError, match="stage axis last"):
        q.decode(torch.zeros(2, 3, S + 1, dtype=torch.long))


def test_quantizer_dropout_truncates_per_sample_in_training_only() -> None:
    q = make(dropout_prob=1.0).train()
    z = latents(b=64, n=4)
    q(z)
    torch.manual_seed(3)
    out = q(z)
    active = float(out.metrics["active_stages"])
    assert 1.0 <= active < S - 0.5  # U{1..S} per sample: mean (S + 1) / 2
    ref = q.eval()(z)
    q.train()
    torch.manual_seed(3)
    again = q(z)
    assert torch.equal(again.indices, out.indices)  # ids never depend on the dropout
    differs = (again.z_q - ref.z_q).abs().flatten(1).amax(1) > 1e-6
    assert 0 < int(differs.sum()) < 64  # some samples keep every stage, most do not
    assert float(q.eval()(z).metrics["active_stages"]) == S


def test_dropout_keeps_every_parameter_in_the_graph() -> None:
    q = make(dropout_prob=1.0, dropout_min_stages=1).train()
    z = latents().requires_grad_(True)
    q(z.detach())
    out = q(z)
    (out.z_q.sum() + out.loss).backward()
    assert all(p.grad is not None for p in q.parameters())  # DDP needs no find_unused_parameters


def test_softvq_stages_are_differentiable_mixes() -> None:
    q = make("softvq").train()
    assert q.soft
    z = latents().requires_grad_(True)
    out = q(z)
    assert out.indices.shape == (4, 64, S)
    out.z_q.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    codebook_grads = [p.grad for name, p in q.named_parameters() if p.grad is not None]
    assert len(codebook_grads) >= S  # every stage's codebook learns through its mix


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="residual"):
        build_quantizer("residual", dim=D, codebook_size=K, stage_quantizer="residual")
    with pytest.raises(ValueError, match="stage_options"):
        build_quantizer("residual", dim=D, codebook_size=K, stage_options={"dim": 4})
    with pytest.raises(ValueError, match="dropout_prob"):
        build_quantizer("residual", dim=D, codebook_size=K, dropout_prob=2.0)
    with pytest.raises(KeyError, match="known"):
        build_quantizer("residual", dim=D, codebook_size=K, stage_quantizer="nope")


def test_usage_metric_counts_each_stage() -> None:
    usage = CodebookUsage(8, num_stages=2)
    ids = torch.tensor([[[0, 1], [1, 1], [2, 1], [-1, -1]]])  # (B=1, N=4, S=2), one masked token
    usage.update(ids)
    result = usage.compute()
    assert result["stage0/usage"] == pytest.approx(3 / 8) and result["stage1/usage"] == pytest.approx(1 / 8)
    assert result["stage1/perplexity"] == pytest.approx(1.0)
    assert result["usage"] == pytest.approx((3 / 8 + 1 / 8) / 2)
    assert usage.last_counts.shape == (2, 8)
    with pytest.raises(ValueError, match="stages"):
        usage.update(torch.zeros(1, 2, 3, dtype=torch.long))


def test_images_train_with_residual_quantizer(make_config) -> None:
    cfg = make_config("quantizer=residual", "quantizer.num_stages=2", "trainer.max_steps=2", "test=true",
                      "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1")
    result = train(cfg)
    metrics = result["metrics"]
    assert 0 < metrics["test/codebook/stage0/usage"] <= 1 and "test/codebook/stage1/perplexity" in metrics
    assert metrics["test/psnr"] > 0


def test_the_readme_residual_fsq_command_trains(make_config) -> None:
    cfg = make_config("quantizer=residual", "quantizer.stage_quantizer=fsq", "~quantizer.stage_options",
                      "+quantizer.stage_options={levels:[8,5,5,5]}", "quantizer.codebook_size=1000",
                      "quantizer.code_dim=4", "quantizer.num_stages=2", "trainer.max_steps=2", "test=true",
                      "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1")
    metrics = train(cfg)["metrics"]
    assert 0 < metrics["test/codebook/stage1/usage"] <= 1 and metrics["test/psnr"] > 0


@pytest.mark.parametrize(("wrapper", "options"), [
    ("residual", {"stage_quantizer": "gq"}), ("residual", {"stage_quantizer": "residual"}),
    ("gq", {"inner": "residual"}), ("gq", {"inner": "gq"}),
    ("residual", {"stage_options": {"dim": 4}}), ("gq", {"inner_options": {"codebook_size": 4}}),
])
def test_wrappers_refuse_wrappers_inside_and_options_they_set_themselves(wrapper, options):
    with pytest.raises(ValueError, match="single-stage backend|must not set"):
        build_quantizer(wrapper, dim=8, codebook_size=16, **options)


@pytest.mark.parametrize("stage, options, width", [("fsq", {"levels": [8, 5, 5, 5]}, 4), ("lfq", {}, 5),
                                                   ("bsq", {}, 5)])
def test_fixed_width_stages_project_once_and_the_projections_train(stage, options, width) -> None:
    """fsq / lfq / bsq stages at another width would project through Linear layers no gradient reaches: refused,
    with the fix named; with ``code_dim`` the residual projects once and both maps get the decoder's gradient."""
    k = 1000 if stage == "fsq" else K
    with pytest.raises(ValueError, match=f"code_dim={width}"):
        build_quantizer("residual", dim=D, codebook_size=k, num_stages=2, stage_quantizer=stage, stage_options=options)
    torch.manual_seed(0)
    q = build_quantizer("residual", dim=D, codebook_size=k, num_stages=2, stage_quantizer=stage,
                        stage_options=options, code_dim=width).train()
    assert q.codebook.shape[-1] == width and all(stage_q.dim == width for stage_q in q.stages)
    z = latents().requires_grad_(True)
    out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (4, 64, 2)
    (out.z_q - z.detach()).pow(2).mean().backward()  # a reconstruction loss through the decoder's input
    for name in ("project_in", "project_out"):
        grad = getattr(q.projection, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert z.grad is not None and z.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad():
        torch.testing.assert_close(q.decode(q.encode(z)), q(z).z_q, rtol=1e-5, atol=1e-5)
