"""FSQ (vqkit/quantizers/fsq.py): the grid, its ids, fp32 rounding under low precision, levels / size validation,
and residual stacking. The contract itself is tests/quantizers/test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch

from vqkit.quantizers import FiniteScalarQuantizer, build_quantizer
from vqkit.quantizers.fsq import RECOMMENDED_LEVELS


def latents(b: int, n: int, d: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("levels", [[3, 4, 2, 5], [2], [8, 6, 5]])
def test_ids_and_grid_codes_are_a_bijection(levels):
    q = build_quantizer("fsq", dim=len(levels), levels=levels).eval()
    k = math.prod(levels)
    assert q.codebook_size == k
    ids = torch.arange(k)
    codes = q.indices_to_codes(ids)  # (K, C)
    assert codes.shape == (k, len(levels)) and torch.equal(q.codebook, codes)
    assert torch.equal(q.codes_to_indices(codes), ids)  # ids -> codes -> ids
    assert torch.unique(codes, dim=0).shape[0] == k  # K distinct grid points
    for i, level in enumerate(levels):  # each coordinate takes its L values, L // 2 below zero, spaced 1 / (L // 2)
        half = level // 2
        expected = (torch.arange(level) - half).float() / half
        assert torch.equal(torch.unique(codes[:, i]), expected)
    # forward maps a latent in the pre-image of code k to id k, for every k, and decode(ids) is its z_q
    grid = torch.linspace(-20, 20, 40001)
    preimages = []  # per coordinate: one latent value per level, the middle of the values that round to it
    for i in range(len(levels)):
        rounded = torch.round(_bound_1d(q, grid, i))
        preimages.append(torch.stack([grid[rounded == v].median() for v in torch.unique(rounded)]))
    half = torch.tensor(levels) // 2
    digits = torch.round(codes * half).long() + half  # (K, C) each coordinate's level, 0 .. L - 1
    z = torch.stack([preimages[i][digits[:, i]] for i in range(len(levels))], dim=-1).unsqueeze(0)  # (1, K, C)
    out = q(z)
    assert torch.equal(out.indices[0], ids)
    torch.testing.assert_close(q.decode(out.indices), out.z_q, atol=1e-6, rtol=0)


def _bound_1d(q, values: torch.Tensor, coordinate: int) -> torch.Tensor:
    """bound() of ``values`` placed in one coordinate of q's code (the others 0)."""
    z = torch.zeros(values.shape[0], q.code_dim)
    z[:, coordinate] = values
    return q.bound(z)[:, coordinate]


@pytest.mark.parametrize("level", range(2, 10))
def test_bound_reaches_exactly_the_levels(level):
    q = build_quantizer("fsq", dim=1, levels=[level])
    z = torch.linspace(-30, 30, 20001)
    rounded = torch.round(q.bound(z.unsqueeze(-1)))
    assert torch.isfinite(rounded).all()
    assert torch.equal(torch.unique(rounded), torch.arange(level).float() - level // 2)


@pytest.mark.parametrize("dim", [6, 32])  # the code width itself, and a Linear in and out
def test_bf16_autocast_rounds_in_fp32(dim):
    """vector-quantize-pytorch #114: rounding bf16 values loses codes. Same inputs, bf16 autocast vs fp32: same ids."""
    torch.manual_seed(0)
    q = build_quantizer("fsq", dim=dim, levels=[8, 8, 8, 5, 5, 5]).train()
    z = latents(8, 512, dim, seed=1, scale=1.5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = q(z)
    ref = q(z.float())
    assert torch.equal(amp.indices, ref.indices)
    assert amp.z_q.dtype == torch.bfloat16 and torch.equal(amp.z_q, ref.z_q.bfloat16())
    # the check can fail: rounding the same (projected) values in bf16 gives other ids for many tokens
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = q.projection.project_in(z) if q.projection.active else z
    naive = q.codes_to_indices(q.quantize(projected.reshape(-1, 6).bfloat16()).float())
    assert (naive != ref.indices.reshape(-1)).float().mean() > 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_and_module(dtype):
    q = build_quantizer("fsq", dim=16, levels=[8, 5, 5, 5]).train()
    z = latents(2, 64, 16, seed=2, scale=50.0).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = q(z)
    assert out.z_q.dtype == dtype and torch.isfinite(out.z_q).all()
    out.z_q.float().sum().backward()
    assert torch.isfinite(z.grad).all()
    cast = q.to(dtype)
    assert torch.isfinite(cast(z.detach()).z_q).all() and cast.codebook.dtype == torch.float32


def test_no_auxiliary_loss():
    q = build_quantizer("fsq", dim=8, levels=[8, 5, 5, 5]).train()
    z = latents(2, 10, 8).requires_grad_(True)
    out = q(z)
    assert out.loss.item() == 0.0 and out.loss.requires_grad and out.losses == {}
    assert set(out.metrics) == {"perplexity", "used_codes"}
    # no state but the projections: nothing to checkpoint or keep equal across ranks besides trained weights
    assert set(q.state_dict()) == {"projection.project_in.weight", "projection.project_in.bias",
                                   "projection.project_out.weight", "projection.project_out.bias"}


def test_batch_metrics_off_changes_nothing_but_the_metrics():
    z = latents(2, 50, 8)
    full = build_quantizer("fsq", dim=8, levels=[8, 5, 5, 5])
    lean = build_quantizer("fsq", dim=8, levels=[8, 5, 5, 5], batch_metrics=False)
    lean.load_state_dict(full.state_dict())
    a, b = full(z), lean(z)
    assert torch.equal(a.z_q, b.z_q) and torch.equal(a.indices, b.indices)
    assert set(a.metrics) == {"perplexity", "used_codes"} and b.metrics == {}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dim", [4, 8])  # 4: no projection (the latents are the codes), 8: checked after project_in
def test_non_finite_latents_raise_naming_their_shape(bad, dim):
    q = build_quantizer("fsq", dim=dim, levels=[8, 5, 5, 5])
    z = latents(2, 5, dim)
    z[1, 3, 0] = bad
    with pytest.raises(FloatingPointError, match=rf"NaN/Inf latents \(2, 5, {dim}\)"):
        q(z)


def test_codebook_size_alone_takes_the_recommended_levels():
    for size, levels in RECOMMENDED_LEVELS.items():
        q = build_quantizer("fsq", dim=4, codebook_size=size)
        assert q.levels == levels and q.codebook_size == math.prod(levels)
    assert build_quantizer("fsq", dim=4, codebook_size=64_000).levels == (8, 8, 8, 5, 5, 5)
    assert build_quantizer("fsq", dim=4, codebook_size=2**10).codebook_size == 1000  # the paper's ~2^10
    # levels and a matching size are fine
    assert build_quantizer("fsq", dim=4, codebook_size=1000, levels=[8, 5, 5, 5]).codebook_size == 1000


def test_levels_and_size_validation_errors():
    with pytest.raises(ValueError, match=r"prod\(levels\) = 1000 .*codebook_size=1024.*null"):
        FiniteScalarQuantizer(dim=4, codebook_size=1024, levels=[8, 5, 5, 5])
    with pytest.raises(ValueError, match=r"no recommended levels for codebook_size=16.*64000: \[8, 8, 8, 5, 5, 5\]"):
        FiniteScalarQuantizer(dim=4, codebook_size=16)
    with pytest.raises(ValueError, match="levels.*or a `codebook_size`"):
        FiniteScalarQuantizer(dim=4)
    for bad in ([1, 4], [], [4.0, 4], [True, 3]):
        with pytest.raises(ValueError, match="integers >= 2"):
            FiniteScalarQuantizer(dim=4, levels=bad)
    with pytest.raises(ValueError, match="eps"):
        FiniteScalarQuantizer(dim=4, levels=[4, 4], eps=1.0)


def test_residual_stages_of_fsq():
    rvq = build_quantizer("residual", dim=8, codebook_size=1000, num_stages=2, stage_quantizer="fsq",
                          stage_options={"levels": [8, 5, 5, 5]}, code_dim=4).train()
    z = latents(2, 16, 8).requires_grad_(True)
    out = rvq(z)
    assert out.indices.shape == (2, 16, 2) and int(out.indices.max()) < 1000
    assert out.loss.item() == 0.0
    out.z_q.sum().backward()
    assert z.grad.abs().sum() > 0
    rvq.eval()
    out = rvq(z.detach())
    torch.testing.assert_close(rvq.decode(out.indices), out.z_q, atol=1e-5, rtol=0)
    assert rvq.codebook.shape == (2, 1000, 4)
    # the second stage quantizes what the first left
    with torch.no_grad():
        residual = rvq.projection.to_code(z.detach()) - rvq.stages[0].decode(out.indices[..., 0])
    assert torch.equal(out.indices[..., 1], rvq.stages[1].encode(residual))
    with pytest.raises(ValueError, match="prod"):
        build_quantizer("residual", dim=8, codebook_size=1024, num_stages=2, stage_quantizer="fsq",
                        stage_options={"levels": [8, 5, 5, 5]})
