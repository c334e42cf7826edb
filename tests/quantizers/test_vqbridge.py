"""VQBridge backend: grid layout, zero-init, shared updates, bake(), and the FVQ learning-annealing schedule."""

from __future__ import annotations

import pytest
import torch

from vqkit.lit.schedules import learning_annealing
from vqkit.quantizers import build_quantizer

D = 8


def small(k: int = 64, **kwargs):
    torch.manual_seed(0)
    return build_quantizer("vqbridge", dim=D, codebook_size=k, width=32, num_heads=2, **kwargs)


def test_zero_init_bridge_gives_the_raw_codebook():
    q = small(residual=True)
    torch.testing.assert_close(q.codebook, q.raw_codebook.detach(), atol=0, rtol=0)
    assert torch.count_nonzero(small(residual=False).codebook) == 0
    for kind in ("linear", "mlp"):
        torch.testing.assert_close(small(bridge=kind, residual=True).codebook, small(bridge=kind).raw_codebook
                                   .detach(), atol=0, rtol=0)


def test_one_step_moves_codes_the_batch_did_not_select():
    q = small(k=256, residual=True, patch_size=4).train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    out = q(torch.randn(1, 64, D, generator=torch.Generator().manual_seed(1)))
    before = q.codebook.detach().clone()
    opt.zero_grad()
    out.loss.backward()
    assert q.bridge.recover.weight.grad.abs().sum() > 0 and q.raw_codebook.grad.abs().sum() > 0
    opt.step()
    moved = (q.codebook.detach() - before).norm(dim=1) > 0
    unselected = torch.ones(256, dtype=torch.bool)
    unselected[out.indices.flatten()] = False
    assert moved[unselected].float().mean() > 0.9


def test_grid_layout_is_row_major_patches():
    # with one block of identity-like compress/recover and no mixing, patch (i, j) holds codes of rows
    # i*p.. and columns j*p.. of the grid: check by sending a marker through a pure per-token path
    q = small(k=64, patch_size=2, depth=0, pos_embed=False, residual=False)
    bridge = q.bridge
    assert bridge.grid == (8, 8) and bridge.patch == 2
    marker = torch.zeros(64, D)
    marker[9] = 1.0  # grid row 1, column 1 -> patch (0, 0), position (1, 1) inside it
    with torch.no_grad():
        tokens = bridge.compress(marker.reshape(1, 8, 8, D).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        base = bridge.compress(torch.zeros(1, D, 8, 8)).flatten(2).transpose(1, 2)
    changed = (tokens - base).abs().sum(-1).squeeze(0) > 0
    assert changed.nonzero().flatten().tolist() == [0]


def test_bake_equals_the_training_time_codebook():
    q = small(k=64, residual=False).train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    for step in range(3):
        out = q(torch.randn(2, 16, D, generator=torch.Generator().manual_seed(step)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    training_codebook = q.codebook.detach()
    plain = q.bake()
    torch.testing.assert_close(plain.codebook, training_codebook, atol=0, rtol=0)
    q.eval()
    z = torch.randn(2, 16, D)
    assert torch.equal(plain.encode(z), q.encode(z))
    torch.testing.assert_close(plain(z).z_q, q(z).z_q)


def test_100k_codes_train_on_a_small_batch():
    q = small(k=100_000, max_tokens=256).train()  # 250 x 400 grid, 25 x 25 patches
    assert q.bridge.grid == (250, 400) and q.patch_size == 25
    z = torch.randn(1, 32, D, requires_grad=True)
    out = q(z)
    (out.loss + out.z_q.sum()).backward()
    assert torch.isfinite(z.grad).all() and q.raw_codebook.grad is not None


def test_grid_and_patch_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"not a perfect square.*961 or 1024|bridge='linear'"):
        small(k=997)  # prime: the most square grid is 1 x 997
    with pytest.raises(ValueError, match=r"not divisible by patch_size=3.*\[1, 2, 4, 8\]"):
        small(k=64, patch_size=3)
    with pytest.raises(ValueError, match="residual"):
        small(codebook_dim=4, residual=True)
    assert small(k=997, bridge="linear").codebook.shape == (997, D)


def test_learning_annealing_values_at_key_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = learning_annealing(opt, total_steps=1100, warmup_steps=100)
    factor = sched.lr_lambdas[0]
    assert factor(0) == pytest.approx(0.005)
    assert factor(50) == pytest.approx(0.005 + 0.995 * 0.5)
    assert factor(100) == pytest.approx(1.0)
    assert factor(100 + 300) == pytest.approx(1.0)  # hold until 30% of the 1000 post-warm-up steps
    assert 0.01 < factor(750) < 1.0
    assert factor(1099) == pytest.approx(0.01)
    assert factor(5000) == pytest.approx(0.01)
    values = [factor(s) for s in range(1100)]
    assert all(b <= a + 1e-12 for a, b in zip(values[400:], values[401:], strict=False))
    with pytest.raises(ValueError, match="max_steps"):
        learning_annealing(opt, total_steps=0)


def test_raw_codebook_starts_from_a_codebook_file(tmp_path):
    from vqkit.quantizers.codebook_file import save_codebook

    centres = torch.randn(64, D, generator=torch.Generator().manual_seed(3))
    path = save_codebook(tmp_path / "centres.safetensors", centres, {"source": "test"})
    q = small(residual=True, init_codebook_path=str(path))
    torch.testing.assert_close(q.codebook, centres, atol=0, rtol=0)  # zero-init bridge + residual: the file
    with pytest.raises(ValueError, match="codebook_dim=8"):
        small(codebook_dim=4, init_codebook_path=str(path))
    with pytest.raises(ValueError, match="128"):
        small(k=128, init_codebook_path=str(path))
    with pytest.raises(FileNotFoundError, match="vqkit.tools.codebook"):
        small(init_codebook_path=str(tmp_path / "missing.safetensors"))
