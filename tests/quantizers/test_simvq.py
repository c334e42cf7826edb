"""SimVQ: the frozen random codebook C never changes, the linear map W learns, and all codes move through W."""

from __future__ import annotations

import pytest
import torch

from vqkit.quantizers import SimVQQuantizer, build_quantizer

D, K = 8, 64


def make(**kwargs) -> SimVQQuantizer:
    torch.manual_seed(0)
    return build_quantizer("simvq", dim=D, codebook_size=K, **kwargs)


def latents(seed: int = 1, b: int = 4, n: int = 32) -> torch.Tensor:
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed))


def train_steps(q: SimVQQuantizer, steps: int = 3, lr: float = 0.1) -> None:
    opt = torch.optim.SGD(q.parameters(), lr=lr)
    z = latents()
    for _ in range(steps):
        out = q.train()(z)
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def test_frozen_codebook_is_a_buffer_drawn_as_the_official_code():
    q = make(frozen_dim=32)
    assert "features" in dict(q.named_buffers()) and "features" not in dict(q.named_parameters())
    assert q.features.shape == (K, 32) and not q.features.requires_grad
    big = build_quantizer("simvq", dim=D, codebook_size=4096, frozen_dim=32)
    assert big.features.std().item() == pytest.approx(32**-0.5, rel=0.02)  # N(0, 1/F)
    assert abs(big.features.mean().item()) < 0.01
    # its own generator: the same C whatever the global seed (every rank of a DDP run)
    torch.manual_seed(123)
    assert torch.equal(build_quantizer("simvq", dim=D, codebook_size=K, frozen_dim=32).features, q.features)
    assert not torch.equal(make(frozen_dim=32, seed=1).features, q.features)
    assert {n for n, _ in q.named_parameters()} == {"projector.weight", "projector.bias"}
    assert {n for n, _ in make(projector_bias=False).named_parameters()} == {"projector.weight"}


def test_training_moves_w_and_never_c():
    q = make()
    c_before, w_before = q.features.clone(), q.projector.weight.detach().clone()
    codes_before = q.codebook.detach().clone()
    train_steps(q)
    assert torch.equal(q.features, c_before)
    assert not torch.allclose(q.projector.weight, w_before)
    assert not torch.allclose(q.codebook, codes_before)


def test_codes_move_together_through_w():
    q = make()
    z = latents(n=4)  # few tokens: most codes are not selected
    out = q.train()(z)
    used = torch.zeros(K, dtype=torch.bool)
    used[out.indices.flatten()] = True
    assert (~used).sum() > K // 2
    before = q.codebook.detach().clone()
    out.loss.backward()
    with torch.no_grad():
        for p in q.parameters():
            p -= 0.1 * p.grad
    moved = (q.codebook - before).norm(dim=1)
    assert (moved[~used] > 0).all()  # unselected codes move too
    # and the move is the same linear map for every code: codes - C W^T - b is the same after the step
    torch.testing.assert_close(q.codebook, q.features @ q.projector.weight.T + q.projector.bias)


def test_bad_frozen_dim_is_refused():
    with pytest.raises(ValueError, match="frozen_dim"):
        make(frozen_dim=-3)
    with pytest.raises(TypeError, match="revival"):
        make().configure_revival("batch", dead_code_threshold=1.0)


def test_bf16_autocast_gives_the_fp32_ids():
    q = make()
    train_steps(q)
    q.eval()
    z = latents(seed=7, n=256).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids_amp = q(z).indices
    assert torch.equal(ids_amp, q(z.float()).indices)
    assert torch.equal(q.encode(z), ids_amp)


def test_residual_stages_of_simvq_train():
    torch.manual_seed(0)
    q = build_quantizer("residual", dim=D, codebook_size=K, num_stages=2, stage_quantizer="simvq").train()
    z = latents().requires_grad_(True)
    out = q(z)
    assert out.indices.shape == (4, 32, 2)
    (out.loss + out.z_q.pow(2).sum()).backward()
    assert z.grad.abs().sum() > 0
    assert all(stage.projector.weight.grad.abs().sum() > 0 for stage in q.stages)
    q.eval()
    torch.testing.assert_close(q.decode(q.encode(z.detach())), q(z.detach()).z_q, atol=1e-6, rtol=1e-6)
