"""Codebook state stays identical across ranks (gloo, 2 CPU processes).

Each rank feeds different latents; k-means init, EMA statistics, dead-code revival (both
strategies: batch latents and the distortion reservoir) and gradient steps must leave every
rank with bit-identical codebooks, and the result must differ from a single-process run on
rank 0's data (so the test proves the sync happens).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.gloo_ranks import on_ranks
from vqkit.quantizers import build_quantizer

WORLD = 2
D, K, STEPS = 4, 32, 4
KINDS = ("ema_vq", "vq", "ema_vq_reservoir", "vq_reservoir", "vq_passthrough")
# Reservoir revival: a small reservoir, offered 8 latents per step, revives every 2 steps. Without k-means
# init, so that most random codes (near the origin) go unused and are revived at step 2.
RESERVOIR = {"revival": "reservoir", "reservoir_size": 16, "reservoir_per_step": 8, "revive_every": 2}
# Rank r's latents sit around CENTRES[r]: far apart, so codes placed from one rank's data
# alone are easy to tell from codes placed from both.
# GQ-VAE's warm-up: steps 1-2 pass z through and fill the reservoir, step 2 draws every code from the reservoirs of
# both ranks and empties them; the next revival is at step 4.
PASSTHROUGH = {**RESERVOIR, "passthrough_steps": 2, "reservoir_reset": True}
CENTRES = (torch.tensor([3.0, 0.0, 0.0, 0.0]), torch.tensor([-3.0, 0.0, 0.0, 0.0]))
TIMEOUT_S = 180


def _build(kind: str):
    torch.manual_seed(0)  # identical construction on every rank and in the single-process run
    if kind == "ema_vq":
        q = build_quantizer(kind, dim=D, codebook_size=K, kmeans_init=True, dead_code_threshold=3.0, decay=0.9)
    elif kind == "vq":
        q = build_quantizer(kind, dim=D, codebook_size=K, kmeans_init=True, dead_code_threshold=2.0, usage_decay=0.9)
    elif kind == "vq_passthrough":
        q = build_quantizer("vq", dim=D, codebook_size=K, **PASSTHROUGH)
    else:
        backend = kind.removesuffix("_reservoir")
        q = build_quantizer(backend, dim=D, codebook_size=K, **RESERVOIR,
                            **({"decay": 0.9} if backend == "ema_vq" else {}))
    encoder = torch.nn.Linear(D, D)  # trainable, starts as the identity so codes live in data space at step 0
    with torch.no_grad():
        encoder.weight.copy_(torch.eye(D))
        encoder.bias.zero_()
    return q, encoder


def _train(kind: str, rank: int) -> dict:
    """A few training steps on this rank's data; returns everything the parent compares."""
    q, encoder = _build(kind)
    params = [p for p in [*encoder.parameters(), *q.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)

    revived: list[int] = []  # codes revived at each step
    world = dist.get_world_size() if dist.is_initialized() else 1
    g = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
    initial = q.codebook.detach().clone()
    after_kmeans = None
    codebooks = []  # after every step
    for step in range(STEPS):
        x = CENTRES[rank] + 0.5 * torch.randn(2, 32, D, generator=g)
        before = q.revival.num_revived
        out = q(encoder(x))
        revived.append(q.revival.num_revived - before)
        loss = out.loss + (out.z_q - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for p in params:
            if world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
        if step == 0:
            after_kmeans = q.codebook.detach().clone()
        codebooks.append(q.codebook.detach().clone())

    return {
        "state": {k: v.detach().clone() for k, v in q.state_dict().items()},
        "encoder": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
        "initial": initial,
        "after_kmeans": after_kmeans,
        "codebooks": codebooks,
        "revived": revived,
        "revival": {k: v.detach().clone() for k, v in q.revival.named_buffers()},
        "reservoir_filled": q.revival.filled,
    }


def _ranks_train(rank: int) -> dict:
    return {kind: _train(kind, rank) for kind in KINDS}


def _alone() -> dict:  # the same run without the other rank, same seeds
    return {kind: _train(kind, 0) for kind in KINDS}


def _near(codebook: torch.Tensor, centre: torch.Tensor) -> int:
    return int(((codebook - centre).norm(dim=1) < 2.0).sum())


@pytest.mark.slow
def test_codebooks_stay_identical_across_ranks(tmp_path):
    r0, r1 = on_ranks(_ranks_train, tmp_path, alone=_alone, timeout_s=TIMEOUT_S)
    for kind in KINDS:
        a, b, single = r0[kind], r1[kind], r0["single"][kind]

        if kind.endswith("_reservoir"):
            _check_reservoir_revival(a, b, single)
        elif kind == "vq_passthrough":
            _check_passthrough(a, b, single)
        else:
            # k-means ran on the first step, over the data of both ranks
            assert bool(a["state"]["initialized"]) and bool(b["state"]["initialized"])
            assert not torch.allclose(a["after_kmeans"], a["initial"])
            # (starting centroids and revived vectors are drawn from rank 0's batch, so codes reach
            # rank 1's blob only through the all-reduced Lloyd sums)
            assert _near(a["after_kmeans"], CENTRES[0]) >= 3, a["after_kmeans"]
            assert _near(a["after_kmeans"], CENTRES[1]) >= 1, a["after_kmeans"]
            assert _near(single["after_kmeans"], CENTRES[1]) == 0  # rank 0 alone never sees the -3 blob
            torch.testing.assert_close(a["after_kmeans"], b["after_kmeans"], atol=0, rtol=0)

        # revival happened, with the same dead set on both ranks
        assert sum(a["revived"]) > 0, a["revived"]
        assert a["revived"] == b["revived"]

        # every piece of quantizer state (codebook, EMA buffers, usage, flags) is bit-identical
        assert a["state"].keys() == b["state"].keys()
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), f"{kind}: {key} differs between ranks"
        for key in a["encoder"]:
            assert torch.equal(a["encoder"][key], b["encoder"][key]), f"{kind}: encoder {key} differs"
        for step, (ca, cb) in enumerate(zip(a["codebooks"], b["codebooks"], strict=True)):
            assert torch.equal(ca, cb), f"{kind}: codebook differs between ranks after step {step + 1}"

        # ... and it is not what rank 0 would have computed alone
        codebook_key = "embed" if kind.startswith("ema_vq") else "embedding"
        assert not torch.allclose(a["state"][codebook_key], single["state"][codebook_key])
        if kind.startswith("ema_vq"):
            assert not torch.allclose(a["state"]["cluster_size"], single["state"]["cluster_size"])


def _check_reservoir_revival(a: dict, b: dict, single: dict) -> None:
    """Reservoir revival: on revival steps only, with the reservoirs of both ranks as the source."""
    revived = a["revived"]
    assert revived[0] == revived[2] == 0 and revived[1] > 0, revived  # revive_every=2: steps 2 and 4 only
    assert a["reservoir_filled"] == b["reservoir_filled"] == 16
    # each rank keeps its own latents, but the counts since the last revival are the all-reduced ones
    assert not torch.equal(a["revival"]["reservoir"], b["revival"]["reservoir"])
    assert torch.equal(a["revival"]["counts_since_revival"], b["revival"]["counts_since_revival"])
    # the codes revived at step 2 come from the reservoirs of both ranks (rank 1's latents sit at -3) ...
    before, after = a["codebooks"][0], a["codebooks"][1]
    for centre in CENTRES:
        assert _near(after, centre) > _near(before, centre), (centre, before, after)
    # ... while rank 0 alone revives from its own latents only
    assert sum(single["revived"]) > 0
    assert _near(single["codebooks"][1], CENTRES[1]) == 0


def _check_passthrough(a: dict, b: dict, single: dict) -> None:
    """Pass-through warm-up: every code replaced at step 2 from both ranks' reservoirs, which are then emptied."""
    assert a["revived"][:3] == [0, K, 0], a["revived"]
    assert int(a["state"]["steps"]) == int(b["state"]["steps"]) == STEPS
    assert torch.equal(a["codebooks"][0], a["initial"])  # step 1 moves no code (no codebook loss, no revival)
    after = a["codebooks"][1]
    for centre in CENTRES:
        assert _near(after, centre) > 0, (centre, after)
    assert _near(single["codebooks"][1], CENTRES[1]) == 0
    assert a["reservoir_filled"] == b["reservoir_filled"] == 0  # emptied by the revival at step 4


# Backends whose codebook is parameters (ibq) or parameters over a frozen buffer (simvq): no statistics to reduce.
PARAMETER_KINDS = ("simvq", "ibq")


def _train_parameters_only(kind: str, rank: int, world: int) -> dict:
    """DDP as Lightning runs it: each rank builds from its own global seed, rank 0's parameters (not buffers) are
    broadcast, gradients are averaged. The frozen buffers must then agree without any broadcast of theirs."""
    torch.manual_seed(100 + rank)
    q = build_quantizer(kind, dim=D, codebook_size=K)
    if world > 1:
        for p in q.parameters():
            dist.broadcast(p.data, src=0)
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1000 + rank)
    for _ in range(STEPS):
        out = q(CENTRES[rank] + 0.5 * torch.randn(2, 32, D, generator=g))
        opt.zero_grad()
        (out.loss + out.z_q.pow(2).mean()).backward()
        for p in q.parameters():
            if world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
    return {k: v.detach().clone() for k, v in q.state_dict().items()}


def _parameters_on_ranks(rank: int) -> dict:
    return {kind: _train_parameters_only(kind, rank, WORLD) for kind in PARAMETER_KINDS}


def _parameters_alone() -> dict:
    return {kind: _train_parameters_only(kind, 0, 1) for kind in PARAMETER_KINDS}


@pytest.mark.slow
def test_parameter_codebooks_stay_identical_across_ranks(tmp_path):
    r0, r1 = on_ranks(_parameters_on_ranks, tmp_path, alone=_parameters_alone, timeout_s=TIMEOUT_S)
    for kind in PARAMETER_KINDS:
        a, b, single = r0[kind], r1[kind], r0["single"][kind]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind}: {key} differs between ranks"
        learned = "projector.weight" if kind == "simvq" else "embedding"
        assert not torch.allclose(a[learned], single[learned])  # both ranks' gradients were used
