"""Properties every registered backend keeps, parametrized over ``list_quantizers()`` (new backends are covered
as they are registered; small settings per backend come from tests/quantizers/test_contract.py):

(a) bf16 autocast gives the fp32 ids, hence the fp32 usage;
(b) under torch.distributed (2 gloo processes, one spawn for all backends) a few training steps on different
    per-rank data with all-reduced gradients leave every parameter and buffer bit-identical across ranks;
(c) the forward compiles to one graph (``torch.compile(fullgraph=True)``) in eval and in training mode, equal to
    eager: every backend through AOTAutograd's eager backend (dynamo's whole-graph capture and the forward and
    backward traces inductor gets, without its C++ build time of ~20 s per backend on one core), and the
    hard forward of vq.py (shared by every hard backend) through inductor itself. Training-mode options that
    decide on the host (k-means init, dead-code revival, the pass-through warm-up) are off in these settings;
    one of them is checked to break the graph, as documented.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from tests.gloo_ranks import on_ranks
from tests.quantizers.test_contract import D, K, _init_params, make, position_ids
from vqkit.quantizers import list_quantizers

NAMES = list_quantizers()
WORLD, STEPS, TIMEOUT_S = 2, 3, 240
# Backend name -> why its training forward cannot be one graph (a host-side decision it always takes).
TRAINING_HOST_SIDE: dict[str, str] = {}
# DDP variants beyond every registered backend at its test settings: options that sync state across ranks.
VARIANTS = {
    "vq+groups": ("vq", {"num_groups": 2, "shared_codebook": False}),
    "ema_vq+groups_shared": ("ema_vq", {"num_groups": 2, "shared_codebook": True}),
    "vq+rotation": ("vq", {"estimator": "rotation"}),
    "gq+target_rate": ("gq", {"target_rate": 0.5}),  # the running gate statistics are averaged over ranks
}


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def latents(seed: int, b: int = 3, n: int = 10, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def off_initial_state(q):
    """Every parameter moved by a little noise: zero-initialised generators (vqbridge) start with one code."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))
    return q


def usage(q, out) -> torch.Tensor:
    """(K,) or (S, K) code counts of an output's ids (every position's id for variable-token backends)."""
    ids = position_ids(out)
    if q.num_stages is None:
        return torch.bincount(ids[ids >= 0], minlength=K)
    return torch.stack([torch.bincount(ids[..., s].reshape(-1), minlength=K) for s in range(q.num_stages)])


# --- (a) bf16 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_bf16_autocast_gives_the_fp32_ids_and_usage(name, training):
    q_bf16 = off_initial_state(make(name)).train(training)
    q_fp32 = copy.deepcopy(q_bf16)
    z = latents(seed=7, b=4, n=256, dtype=torch.bfloat16)  # bf16 values: the fp32 copy holds the same numbers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16 = q_bf16(z)
    out_fp32 = q_fp32(z.float())
    assert torch.equal(position_ids(out_bf16), position_ids(out_fp32))
    counts = usage(q_bf16, out_bf16)
    assert torch.equal(counts, usage(q_fp32, out_fp32)) and int((counts > 0).sum()) > 1


# --- (b) DDP ----------------------------------------------------------------------------------------------
def _sync_options(name: str) -> dict:
    """Options that make a backend keep state that must be reduced across ranks, where it takes them."""
    wanted = {"kmeans_init": True, "dead_code_threshold": 1.0}
    return {k: v for k, v in wanted.items() if k in _init_params(name)}


def _build(kind: str):
    name, extra = VARIANTS.get(kind, (kind, {}))
    return make(name, seed=0, **_sync_options(name), **extra)


def _train(kind: str, rank: int) -> dict:
    q = _build(kind).train()
    torch.manual_seed(0)
    encoder = torch.nn.Linear(D, D)
    initial = {k: v.detach().clone() for k, v in q.state_dict().items()}
    params = [p for p in [*encoder.parameters(), *q.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    for step in range(STEPS):
        x = latents(seed=100 * rank + step, b=2, n=16) + (2.0 if rank else -2.0)  # different data per rank
        out = q(encoder(x))
        loss = out.loss + (out.z_q.float() - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        opt.step()
    return {
        "state": {k: v.detach().clone() for k, v in q.state_dict().items()},
        "encoder": {k: v.detach().clone() for k, v in encoder.state_dict().items()},
        "initial": initial,
    }


def _ranks_train(rank: int, kinds: list[str]) -> dict:
    return {kind: _train(kind, rank) for kind in kinds}


@pytest.mark.slow
def test_every_backend_stays_identical_across_ranks(tmp_path):
    kinds = [*NAMES, *VARIANTS]
    r0, r1 = on_ranks(_ranks_train, tmp_path, kinds, timeout_s=TIMEOUT_S)
    for kind in kinds:
        a, b = r0[kind], r1[kind]
        assert a["state"].keys() == b["state"].keys()
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), f"{kind}: {key} differs between ranks"
        for key in a["encoder"]:
            assert torch.equal(a["encoder"][key], b["encoder"][key]), f"{kind}: encoder {key} differs"
        # the steps changed the quantizer (a state identical because nothing moved would prove nothing)
        assert any(not torch.equal(a["state"][k], a["initial"][k]) for k in a["state"]), kind


# --- (c) torch.compile ------------------------------------------------------------------------------------
def _compiled_matches_eager(q, training: bool, backend: str) -> None:
    torch._dynamo.reset()
    eager = copy.deepcopy(q)
    compiled = torch.compile(q, fullgraph=True, backend=backend)
    z = latents(seed=3)
    z_c, z_e = z.clone().requires_grad_(training), z.clone().requires_grad_(training)
    out_c, out_e = compiled(z_c), eager(z_e)
    assert torch.equal(out_c.indices, out_e.indices)
    torch.testing.assert_close(out_c.z_q, out_e.z_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_c.loss, out_e.loss, atol=1e-5, rtol=1e-5)
    if training:
        for out in (out_c, out_e):
            (out.z_q.sum() + out.loss).backward()
        torch.testing.assert_close(z_c.grad, z_e.grad, atol=1e-5, rtol=1e-5)
        state_c, state_e = q.state_dict(), eager.state_dict()  # the training step's bookkeeping ran in the graph
        for key in state_e:
            torch.testing.assert_close(state_c[key], state_e[key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.slow
def test_eval_forward_compiles_to_one_graph(name):
    _compiled_matches_eager(make(name).eval(), training=False, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True])
def test_the_hard_forward_builds_with_inductor(training):
    """vq.py's forward (every hard backend's) through inductor's C++ code generation, once per mode."""
    _compiled_matches_eager(make("vq").train(training), training=training, backend="inductor")


@pytest.mark.slow
def test_training_forward_compiles_to_one_graph(name):
    if name in TRAINING_HOST_SIDE:
        pytest.xfail(TRAINING_HOST_SIDE[name])
    _compiled_matches_eager(make(name).train(), training=True, backend="aot_eager")


@pytest.mark.slow
def test_kmeans_init_is_a_host_side_decision():
    """The documented limit: with k-means init the first training step clusters on the host (a Python branch
    on the ``initialized`` buffer), so that training forward is not one graph."""
    torch._dynamo.reset()
    q = make("vq", kmeans_init=True).train()
    with pytest.raises(torch._dynamo.exc.UserError, match="data-dependent"):
        torch.compile(q, fullgraph=True, backend="eager")(latents(seed=3))
