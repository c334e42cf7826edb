"""Dead-code revival (``vqkit.quantizers.revival``) through the public API of the hard backends:
the ``batch`` and ``reservoir`` strategies, their options, and the backends that refuse revival."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqkit.quantizers import VectorQuantizer, build_quantizer
from vqkit.quantizers.generated_codebook import GeneratedCodebookQuantizer
from vqkit.quantizers.revival import CodeRevival, resolve_strategy

BACKENDS = ("vq", "ema_vq")
K, D = 6, 3


def make(name: str, **options) -> VectorQuantizer:
    torch.manual_seed(0)
    return build_quantizer(name, dim=D, codebook_size=K, **options)


def far_codebook(k: int = K, d: int = D) -> torch.Tensor:
    return 100.0 + 10.0 * torch.arange(k * d, dtype=torch.float32).reshape(k, d) / (k * d)


def start_far(q: VectorQuantizer, near: dict[int, torch.Tensor] | None = None) -> None:
    """Every code far from the data, except the codes of ``near`` (id -> vector), through the public API."""
    codes = far_codebook()
    for row, vector in (near or {}).items():
        codes[row] = vector
    q.replace_codes(torch.arange(K), codes)


def blob(centre: list[float], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.tensor(centre) + 0.1 * torch.randn(n, D, generator=g)).unsqueeze(0)  # (1, n, D)


def is_row_of(rows: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """(R,) bool: each of ``rows`` equals some row of ``data`` (D-dim, flattened)."""
    diff = rows.unsqueeze(1) - data.reshape(1, -1, rows.shape[1])
    return (diff == 0).all(-1).any(1)


def codes_of(q: VectorQuantizer) -> torch.Tensor:
    return q.codebook.detach().clone()


# --- options ------------------------------------------------------------------------------------
def test_strategy_follows_the_options_and_old_configs_keep_their_meaning():
    assert resolve_strategy(None, 0.0) == "none"
    assert resolve_strategy(None, 2.0) == "batch"  # configs written before `revival` existed
    assert resolve_strategy("batch", 0.5) == "batch"
    assert resolve_strategy("reservoir", 0.0) == "reservoir"
    assert make("vq").revival.strategy == "none"
    assert make("ema_vq", dead_code_threshold=2.0).revival.strategy == "batch"
    assert make("vq", revival="reservoir").revive_every == 250  # the reservoir's default period
    assert make("vq", dead_code_threshold=1.0).revive_every == 1  # the batch default, as before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"revival": "batch"}, "dead_code_threshold=0"),
        ({"revival": "none", "dead_code_threshold": 1.0}, "only applies to revival='batch'"),
        ({"revival": "reservoir", "dead_code_threshold": 1.0}, "unused since the last revival"),
        ({"revival": "sometimes"}, "revival must be one of"),
        ({"dead_code_threshold": 1.0, "revive_every": 0}, "revive_every must be >= 1"),
        ({"revival": "reservoir", "reservoir_size": 0}, "reservoir_size"),
    ],
)
@pytest.mark.parametrize("name", BACKENDS)
def test_inconsistent_revival_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        make(name, **options)


@pytest.mark.parametrize("name", BACKENDS)
def test_explicit_batch_is_the_legacy_threshold_bit_for_bit(name):
    runs = []
    for options in ({"dead_code_threshold": 1.0}, {"dead_code_threshold": 1.0, "revival": "batch"}):
        q = make(name, usage_decay=0.5, **options)
        start_far(q)
        torch.manual_seed(3)  # same random draws for the revived rows
        for step in range(3):
            q(blob([0.0, 0.0, 0.0], 32, seed=step))
        runs.append({k: v.clone() for k, v in q.state_dict().items()})
    assert runs[0].keys() == runs[1].keys()
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key


# --- batch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_batch_revival_replaces_codes_below_the_usage_threshold_by_batch_latents(name):
    q = make(name, revival="batch", dead_code_threshold=1.0, usage_decay=0.5, revive_every=2)
    start_far(q)
    z = blob([0.0, 0.0, 0.0], 32, seed=1)
    q(z)
    assert q.revival.num_revived == 0  # step 1 is not a revival step
    torch.testing.assert_close(codes_of(q)[1:], far_codebook()[1:], atol=1e-3, rtol=0)  # (EMA: Laplace smoothing)
    out = q(z)
    assert out.indices.unique().tolist() == [0]  # every latent picked code 0: codes 1..5 are dead
    assert q.revival.num_revived == K - 1
    revived = codes_of(q)[1:]
    assert is_row_of(revived, z).all() and len({tuple(r) for r in revived.tolist()}) == K - 1
    torch.testing.assert_close(q.code_usage[1:], torch.full((K - 1,), 1.0))  # restart alive at the threshold
    assert q.encode(z).unique().numel() > 1  # and they are used now


# --- reservoir ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_reservoir_holds_the_highest_distortion_latents(name):
    q = make(name, revival="reservoir", reservoir_size=100, reservoir_per_step=4)
    start_far(q, {0: torch.zeros(D)})  # every latent picks code 0 at the origin: distortion = ||z||^2
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 32, D, generator=g) * torch.linspace(0.1, 3.0, 32).view(1, 32, 1)
    z = z[:, torch.randperm(32, generator=g)]
    before = codes_of(q)
    q(z)
    policy = q.revival
    assert policy.filled == 4 and int(policy.seen) == 4
    farthest = z[0][z[0].pow(2).sum(-1).topk(4).indices]
    assert is_row_of(policy.reservoir[:4], farthest).all() and is_row_of(farthest, policy.reservoir[:4]).all()
    if name == "vq":  # no revival step yet (every 250 steps), no optimizer: nothing moved
        assert torch.equal(codes_of(q), before)


def test_reservoir_is_a_uniform_sample_of_all_offered_latents():
    """Algorithm R: after 100 latents offered in batches of 10, each one is held with probability 10/100."""
    torch.manual_seed(0)
    trials, size, total = 300, 10, 100
    held = torch.zeros(total)
    codebook = torch.zeros(1, 1)
    for _ in range(trials):
        policy = CodeRevival("reservoir", codebook_size=1, code_dim=1, reservoir_size=size, reservoir_per_step=total)
        for start in range(0, total, 10):
            items = torch.arange(start, start + 10, dtype=torch.float32).unsqueeze(1)  # (10, 1): the ids
            policy.offer(items, codebook, torch.zeros(10, dtype=torch.long))
        assert int(policy.seen) == total and policy.filled == size
        held[policy.reservoir.squeeze(1).long()] += 1
    rate = held / trials  # ~0.1 each
    assert abs(float(rate[:50].mean()) - 0.1) < 0.02 and abs(float(rate[50:].mean()) - 0.1) < 0.02, rate
    assert abs(float(rate[:10].mean()) - 0.1) < 0.04 and abs(float(rate[-10:].mean()) - 0.1) < 0.04, rate


@pytest.mark.parametrize("name", BACKENDS)
def test_reservoir_revival_replaces_the_codes_unused_since_the_last_revival(name):
    a, b = [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]
    q = make(name, revival="reservoir", reservoir_size=64, reservoir_per_step=8, revive_every=2)
    start_far(q, {0: torch.tensor(a), 1: torch.tensor(b)})
    q(torch.cat([blob(a, 16, seed=1), blob(b, 16, seed=2)], dim=1))  # step 1: codes 0 and 1 used
    before = codes_of(q)
    q(blob(a, 32, seed=3))  # step 2 (revival): code 1 unused in this step, but used since the last revival
    policy = q.revival
    assert policy.num_revived == K - 2
    after = codes_of(q)
    assert is_row_of(after[2:], policy.reservoir[: policy.filled]).all()  # the dead codes: reservoir latents
    assert not is_row_of(before[2:], policy.reservoir[: policy.filled]).any()
    assert torch.equal(policy.counts_since_revival, torch.zeros(K))
    if name == "vq":
        assert torch.equal(after[:2], before[:2])  # live codes are not touched
    else:  # EMA: the revived rows restart their statistics at the new vectors with mass 1
        torch.testing.assert_close(q.cluster_size[2:], torch.ones(K - 2))
        torch.testing.assert_close(q.embed_avg[2:], q.embed[2:])
    q(blob(a, 32, seed=4))  # steps 3 and 4: only blob a, so code 1 stays unused and is revived at step 4
    revived_before = policy.num_revived
    out = q(blob(a, 32, seed=5))
    assert 1 not in out.indices.unique().tolist()
    assert policy.num_revived > revived_before
    assert is_row_of(codes_of(q)[1:2], policy.reservoir[: policy.filled]).all()


def test_reservoir_sees_only_the_masked_positions_in_code_space():
    q = make("vq", code_dim=2, revival="reservoir", reservoir_size=64, reservoir_per_step=64)
    z = torch.randn(2, 10, D, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :7] = True
    q(z, mask)
    policy = q.revival
    assert policy.filled == 7 and policy.reservoir.shape == (64, 2)
    expected = q.to_code_space(z[mask]).detach()  # (7, 2): the latents the search saw
    assert is_row_of(policy.reservoir[:7], expected).all()
    assert float(policy.counts_since_revival.sum()) == 7


def test_to_code_space_is_the_searched_space():
    q = make("vq", code_dim=2, normalize=True)
    z = torch.randn(4, D)
    torch.testing.assert_close(q.to_code_space(z), F.normalize(q.project_in(z), dim=-1))
    torch.testing.assert_close(q.from_code_space(q.to_code_space(z)), q.project_out(q.to_code_space(z)))


def test_configure_revival_swaps_the_policy():
    q = make("ema_vq")
    policy = q.configure_revival("reservoir", reservoir_size=8, reservoir_per_step=4, revive_every=3)
    assert q.revival is policy and policy.strategy == "reservoir" and q.revive_every == 3
    assert q.configure_revival("batch", dead_code_threshold=2.0).strategy == "batch" and q.dead_code_threshold == 2.0
    assert q.configure_revival("none").strategy == "none" and q.dead_code_threshold == 0.0
    assert "revival" not in {k.split(".")[0] for k in q.state_dict()}  # policies never change checkpoints


def test_configure_revival_before_training_equals_the_constructor_options():
    late = make("vq")
    late.configure_revival("batch", dead_code_threshold=1.0)
    early = make("vq", dead_code_threshold=1.0)
    torch.testing.assert_close(late.code_usage, early.code_usage)  # codes start alive at the new threshold
    for q in (late, early):
        start_far(q)
    torch.manual_seed(5)
    late(blob([0.0, 0.0, 0.0], 32, seed=1))
    torch.manual_seed(5)
    early(blob([0.0, 0.0, 0.0], 32, seed=1))
    assert late.revival.num_revived == early.revival.num_revived == K - 1
    torch.testing.assert_close(late.codebook, early.codebook, atol=0, rtol=0)
    torch.testing.assert_close(late.code_usage, early.code_usage, atol=0, rtol=0)


# --- backends whose codebook is generated ------------------------------------------------------------
GENERATED = {"vqgan_lc": {"feature_dim": 5}, "vqbridge": {"width": 16, "num_heads": 2, "depth": 1}}


@pytest.mark.parametrize("name", GENERATED)
def test_generated_codebooks_refuse_revival_and_code_overwrites(name):
    q = build_quantizer(name, dim=4, codebook_size=16, **GENERATED[name])
    assert q.revival.strategy == "none"
    for strategy, options in (("batch", {"dead_code_threshold": 1.0}), ("reservoir", {})):
        with pytest.raises(TypeError, match="cannot be revived by overwriting its row"):
            q.configure_revival(strategy, **options)
    with pytest.raises(TypeError, match="cannot be overwritten"):
        q.replace_codes(torch.tensor([0]), torch.zeros(1, 4))
    for option in ({"kmeans_init": True}, {"revival": "batch"}, {"dead_code_threshold": 1.0}, {"code_dim": 2}):
        with pytest.raises(TypeError, match="unexpected keyword"):  # not offered at all
            build_quantizer(name, dim=4, codebook_size=16, **GENERATED[name], **option)


def test_the_vq_base_refuses_learned_codebook_options_for_generated_codebooks():
    class Generated(GeneratedCodebookQuantizer):
        def __init__(self, **options) -> None:
            VectorQuantizer.__init__(self, 4, 8, **options)

        def generate_codebook(self) -> torch.Tensor:
            return torch.zeros(8, 4)

    assert Generated().codebook.shape == (8, 4)
    for options in ({"kmeans_init": True}, {"code_dim": 2}, {"normalize": True}):
        with pytest.raises(TypeError, match="do not apply"):
            Generated(**options)
    with pytest.raises(TypeError, match="cannot be revived"):
        Generated(dead_code_threshold=1.0)


# --- GQ-VAE's mechanics: pass-through warm-up, reservoir reset ----------------------------------
def is_near_row_of(rows: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """(R,) bool: each of ``rows`` is within float rounding of a row of ``data`` (straight-through outputs)."""
    return torch.cdist(rows, data).min(1).values < 1e-5


WARMUP = {"revival": "reservoir", "reservoir_size": 256, "reservoir_per_step": 4, "passthrough_steps": 3}


@pytest.mark.parametrize("name", BACKENDS)
def test_passthrough_warmup_returns_z_fills_the_reservoir_then_replaces_every_code(name):
    q = make(name, **WARMUP, revive_every=2)
    q.train()
    start = codes_of(q)
    fed = []
    for step in range(1, 4):
        z = blob([float(step), 0.0, 0.0], 10, seed=step)
        fed.append(z[0])
        out = q(z)
        assert torch.equal(out.z_q, z)  # the caller sees the continuous latents
        assert float(out.loss.detach()) == 0.0 and int(q.steps) == step
        if step < 3:
            assert torch.equal(codes_of(q), start)  # no code moves during the warm-up ...
            assert q.revival.filled == 10 * step  # ... while every latent (not only the 4 worst) is kept
    seen = torch.cat(fed)
    assert q.revival.num_revived == K  # the last warm-up step draws every code from the reservoir
    assert is_row_of(codes_of(q), seen).all() and not is_row_of(start, seen).any()
    replaced = codes_of(q)
    z = blob([1.0, 0.0, 0.0], 10, seed=9)
    out = q(z)  # step 4: quantized, and no revival (the next one is at 3 + revive_every = 5)
    assert not torch.equal(out.z_q, z) and is_near_row_of(out.z_q[0], replaced).all()
    assert q.revival.num_revived == K
    q(blob([50.0, 0.0, 0.0], 4, seed=10))  # step 5: a revival of the codes unused since step 3
    assert q.revival.num_revived > K


def test_passthrough_warmup_only_in_training_and_only_on_real_positions():
    q = make("vq", **WARMUP)
    z = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, :3] = True
    q.eval()
    out = q(z, mask)
    assert int(q.steps) == 0 and q.revival.filled == 0 and is_near_row_of(out.z_q[mask], codes_of(q)).all()
    q.train()
    out = q(z, mask)
    assert torch.equal(out.z_q[mask], z[mask]) and torch.equal(out.z_q[~mask], torch.zeros_like(z[~mask]))
    assert q.revival.filled == 6 and int(q.steps) == 1
    q(z, torch.zeros_like(mask))  # nothing valid anywhere: not a step
    assert int(q.steps) == 1


@pytest.mark.parametrize("name", BACKENDS)
def test_resume_mid_warmup_continues_it(name):
    q = make(name, **WARMUP)
    q.train()
    q(blob([1.0, 0.0, 0.0], 10, seed=1))
    state = q.state_dict()
    assert int(state["steps"]) == 1  # the warm-up's position is checkpointed
    resumed = make(name, **WARMUP)
    resumed.load_state_dict(state)
    resumed.train()
    start = codes_of(resumed)
    z = blob([2.0, 0.0, 0.0], 10, seed=2)
    assert torch.equal(resumed(z).z_q, z) and torch.equal(codes_of(resumed), start)  # step 2: still warming up
    late = blob([-2.0, 0.0, 0.0], 10, seed=3)
    assert torch.equal(resumed(late).z_q, late)  # step 3, the last: every code from the latents since the resume
    assert resumed.revival.num_revived == K and is_row_of(codes_of(resumed), torch.cat([z[0], late[0]])).all()
    after = blob([2.0, 0.0, 0.0], 10, seed=4)
    assert not torch.equal(resumed(after).z_q, after)  # step 4: quantized


@pytest.mark.parametrize(("reset", "filled_after"), [(True, 0), (False, 16)])
def test_reservoir_reset_empties_the_reservoir_after_a_revival(reset, filled_after):
    q = make("vq", revival="reservoir", reservoir_size=64, reservoir_per_step=8, revive_every=2,
             reservoir_reset=reset)
    start_far(q, {0: torch.tensor([3.0, 0.0, 0.0])})
    q(blob([3.0, 0.0, 0.0], 16, seed=1))
    assert q.revival.filled == 8
    q(blob([3.0, 0.0, 0.0], 16, seed=2))  # step 2: revival
    assert q.revival.num_revived == K - 1
    assert q.revival.filled == filled_after
    late = blob([-3.0, 0.0, 0.0], 16, seed=3)
    q(late)
    if reset:  # the next revival draws only from latents offered after this one
        assert is_row_of(q.revival.reservoir[: q.revival.filled], late[0]).all()


def test_passthrough_options_are_checked():
    with pytest.raises(ValueError, match="revival='reservoir'"):
        make("vq", passthrough_steps=5)
    with pytest.raises(ValueError, match="kmeans_init"):
        make("vq", revival="reservoir", passthrough_steps=5, kmeans_init=True)
    with pytest.raises(ValueError, match=">= 0"):
        make("vq", revival="reservoir", passthrough_steps=-1)
    q = make("vq", **WARMUP)
    with pytest.raises(ValueError, match="needs revival='reservoir'"):
        q.configure_revival("batch", dead_code_threshold=1.0)
    assert q.configure_revival("reservoir", reservoir_reset=True).start_step == 3


def test_gq_passthrough_gates_the_continuous_latents():
    torch.manual_seed(0)
    gq = build_quantizer("gq", dim=D, codebook_size=K, inner_options=WARMUP, max_token_len=4, width=8, depth=1,
                         num_heads=2)
    gq.train()
    z = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(5))
    out = gq(z)
    assert torch.equal(out.z_q, z)
    torch.testing.assert_close(out.gates, gq.gates_for(z, torch.ones(2, 6, dtype=torch.bool)))
    assert int(gq.state_dict()["inner.steps"]) == 1
