"""vqgan_lc and vqbridge under data parallelism (gloo, 2 CPU processes): identical parameters on every rank.

Both generate their codebook from parameters, so DDP's gradient averaging is all they need; the test
runs DDP-style steps (gradients all-reduced and averaged) on different data per rank and checks every
piece of state is bit-identical across ranks and differs from a single-process run on rank 0's data.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.gloo_ranks import on_ranks
from vqkit.quantizers import build_quantizer

WORLD, D, STEPS, TIMEOUT_S = 2, 4, 3, 180
KINDS = {
    "vqgan_lc": {"codebook_size": 64, "feature_dim": 6},
    "vqbridge": {"codebook_size": 64, "width": 16, "num_heads": 2, "depth": 1},
}


def _train(kind: str, rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    q = build_quantizer(kind, dim=D, **KINDS[kind]).train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    world = dist.get_world_size() if dist.is_initialized() else 1
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        out = q(torch.randn(2, 16, D, generator=g) + (2.0 if rank else -2.0))
        opt.zero_grad()
        out.loss.backward()
        for p in q.parameters():
            if p.grad is not None and world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
    state = {k: v.detach().clone() for k, v in q.state_dict().items()}
    state["__codebook__"] = q.codebook.detach().clone()
    return state


def _ranks_train(rank: int) -> dict:
    return {kind: _train(kind, rank) for kind in KINDS}


def _alone() -> dict:
    return {kind: _train(kind, 0) for kind in KINDS}


@pytest.mark.slow
def test_generated_codebooks_stay_identical_across_ranks(tmp_path):
    r0, r1 = on_ranks(_ranks_train, tmp_path, alone=_alone, timeout_s=TIMEOUT_S)
    for kind in KINDS:
        a, b, single = r0[kind], r1[kind], r0["single"][kind]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind}: {key} differs between ranks"
        assert not torch.allclose(a["__codebook__"], single["__codebook__"])  # rank 1's data mattered
        if kind == "vqgan_lc":
            assert torch.equal(a["features"], single["features"])  # the frozen codebook never moves
