"""GQ's hold expansion: how a (code, length) token reaches every latent position it covers.

Models that decode every position (image, audio) read gated tokens through ``GatedQuantizer.hold_tokens``
(training: soft weights from the gates; eval: one-hot at the next boundary) and ``expand`` (from ids).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from vqkit.quantizers import gq
from vqkit.quantizers.gq import GatedQuantizer, hard_hold_weights, hold_weights, next_boundary


def brute_force_hold_weights(gates: torch.Tensor, max_token_len: int) -> torch.Tensor:
    """P[t, j] = g[t+j] prod_{i<j} (1 - g[t+i]) by explicit loops, renormalized over j < L."""
    b, t = gates.shape
    out = torch.zeros(b, t, max_token_len, dtype=torch.float64)
    g = gates.double()
    for row, pos, j in itertools.product(range(b), range(t), range(max_token_len)):
        if pos + j >= t:
            continue
        survive = torch.prod(1.0 - g[row, pos:pos + j]) if j else torch.tensor(1.0, dtype=torch.float64)
        out[row, pos, j] = g[row, pos + j] * survive
    return out / out.sum(-1, keepdim=True).clamp_min(1e-6)


def quantizer(**options) -> GatedQuantizer:
    torch.manual_seed(0)
    return GatedQuantizer(8, 16, **{"inner_options": {"kmeans_init": False}, "max_token_len": 4, "width": 16,
                                    "depth": 1, "num_heads": 2, **options})


def test_soft_weights_match_the_product_formula() -> None:
    torch.manual_seed(1)
    gates = torch.rand(2, 9)
    gates[:, -1] = 1.0  # a row end always closes a token
    got = hold_weights(gates, 4).double()
    assert torch.allclose(got, brute_force_hold_weights(gates, 4), atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(2, 9, dtype=torch.float64), atol=1e-6)


def test_hard_weights_point_at_the_next_boundary() -> None:
    boundaries = torch.tensor([[False, True, False, False, True, True]])
    assert next_boundary(boundaries).tolist() == [[1, 1, 4, 4, 4, 5]]
    weights = hard_hold_weights(boundaries, 3)
    assert weights.argmax(-1).tolist() == [[1, 0, 2, 1, 0, 0]]
    assert weights.sum(-1).tolist() == [[1.0] * 6]
    # a run longer than max_token_len leaves the positions too far from their boundary with no token
    assert hard_hold_weights(boundaries, 2).sum(-1).tolist() == [[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]]


def test_eval_hold_equals_expand_of_encode() -> None:
    q = quantizer().eval()
    z = torch.randn(3, 11, 8)
    with torch.no_grad():
        out = q(z)
        held, weights = q.hold_tokens(out)
        ids = q.encode(z)
        expanded, expanded_weights = q.expand(ids)
    assert torch.equal(weights, expanded_weights)
    assert torch.allclose(held, expanded, atol=1e-5)
    lengths = q.token_lengths(ids)
    assert int(lengths.sum()) == 3 * 11  # every position belongs to exactly one token
    assert int(lengths.max()) <= q.max_token_len
    assert torch.equal(lengths > 0, ids >= 0)


def test_soft_hold_gives_the_gate_gradients() -> None:
    q = quantizer().train()
    held, _ = q.hold_tokens(q(torch.randn(2, 10, 8)))
    held.square().sum().backward()
    grads = [p.grad for p in q.gate.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_straight_through_forward_is_the_hard_hold() -> None:
    q = quantizer(expansion="straight_through").train()
    z = torch.randn(2, 10, 8)
    out = q(z)
    held, weights = q.hold_tokens(out)
    hard = hard_hold_weights(out.mask, q.max_token_len) * out.valid[..., None]
    assert torch.allclose(weights.detach(), hard, atol=1e-6)  # hard + soft - soft.detach(): equal up to rounding
    held.square().sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in q.gate.parameters())


def test_compression_weight_enters_the_loss() -> None:
    z = torch.randn(2, 10, 8)
    plain, weighted = quantizer().train(), quantizer(compression_weight=0.5).train()
    a, b = plain(z), weighted(z)
    assert torch.allclose(b.loss - a.loss, 0.5 * a.losses["compression"], atol=1e-6)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([1, 2, 3]), r"\(B, T\)"),
        (torch.tensor([[1, 2, -1]]), "cut inside a token"),
        (torch.tensor([[-1, -1, -1, -1, -1, 3]]), "more than this quantizer's max_token_len=4"),
        (torch.tensor([[1, -2, 3]]), "minimum of -2"),
        (torch.zeros(1, 0, dtype=torch.long), "nothing to decode"),
    ],
)
def test_expand_rejects_ids_it_cannot_decode(ids: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantizer().expand(ids)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="expansion must be one of"):
        quantizer(expansion="linear")
    with pytest.raises(ValueError, match="compression_weight must be >= 0"):
        quantizer(compression_weight=-1.0)


def test_rate_control_moves_the_logit_threshold_towards_the_target() -> None:
    q = quantizer(target_rate=0.25, rate_lr=0.5, rate_momentum=0.9).train()
    z = torch.randn(4, 24, 8)
    out = q(z)
    logits = q.gate.logits(out.z_q, out.valid).detach()
    assert torch.allclose(out.gates[:, :-1], torch.sigmoid(logits)[:, :-1], atol=1e-5)  # tau starts at 0
    spread = logits[:, :-1].std()  # the row ends (always tokens) do not count
    rate = float(out.metrics["tokens_per_position"])  # cuts at max_token_len and row ends included
    assert float(q.rate_stats[1]) == pytest.approx(0.9 + 0.1 * float(spread), rel=1e-4)
    assert float(q.rate_stats[0]) == pytest.approx(0.5 * float(q.rate_stats[1]) * (rate - 0.25) / 0.25, rel=1e-4)
    stats = q.rate_stats.clone()
    q.encode(z)
    assert torch.equal(q.rate_stats, stats)  # encode never moves them, even in training mode
    q.eval()
    eval_out = q(z)
    assert torch.equal(q.rate_stats, stats)  # eval uses the threshold and never moves it
    assert torch.allclose(eval_out.gates[:, :-1], torch.sigmoid(logits - stats[0])[:, :-1], atol=1e-5)
    assert "rate_stats" in dict(q.named_buffers())  # saved with the weights: resume and artifacts keep it


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_rate_control_finds_the_threshold_of_a_target_rate(target: float) -> None:
    # A fixed gate on fresh batches: the controller alone must find the logit threshold at which the held-out
    # rate (eval, new data) is the target, from a start (tau = 0) that gives another rate.
    torch.manual_seed(0)
    q = quantizer(target_rate=target, rate_lr=0.1).train()
    for _ in range(300):
        q(torch.randn(8, 24, 8))
    q.eval()
    with torch.no_grad():
        held_out = q(torch.randn(64, 24, 8))
    assert float(held_out.metrics["tokens_per_position"]) == pytest.approx(target, rel=0.05)
    untouched = quantizer(target_rate=target).eval()
    with torch.no_grad():
        start = float(untouched(torch.randn(64, 24, 8)).metrics["tokens_per_position"])
    assert abs(start - target) > 0.05  # the target was not met by the untrained threshold already


@pytest.mark.parametrize(("options", "message"), [
    ({"target_rate": 0.1}, r"\[0.25, 1\]"),
    ({"target_rate": 0.5, "segmentation": "fixed", "fixed_length": 2}, "needs segmentation=learned"),
    ({"target_rate": 0.5, "rate_momentum": 1.0}, r"rate_momentum must lie in \[0, 1\)"),
    ({"target_rate": 0.5, "rate_lr": 0.0}, "rate_lr must be > 0"),
])
def test_rate_control_refuses_targets_it_cannot_reach(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantizer(**options)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_budget_gives_every_sequence_its_share_of_tokens(target: float) -> None:
    # No training at all: each row (of its own length) gets round(target x length) tokens at once, in training
    # and eval alike, where the gate's logits are highest (max_token_len 40: no forced cuts in these rows).
    q = quantizer(target_rate=target, rate_control="budget", max_token_len=40)
    z = torch.randn(6, 40, 8)
    mask = torch.ones(6, 40, dtype=torch.bool)
    for row, length in enumerate([40, 33, 25, 17, 9, 2]):
        mask[row, length:] = False
    inner = mask & ~gq.row_ends(mask)
    expected = torch.round(mask.sum(1).float() * target).long().clamp_min(1)
    for training in (True, False):
        out = q.train(training)(z, mask)
        assert torch.equal(out.mask.sum(1), expected)
        chosen = out.mask & inner
        assert torch.equal(chosen, (out.gates > 0.5) & inner)  # the soft gates agree with the hard choice
        logits = q.gate.logits(out.z_q, mask).detach()
        for row in range(6):
            picked, left = logits[row][chosen[row]], logits[row][inner[row] & ~chosen[row]]
            if len(picked) and len(left):
                assert picked.min() >= left.max()  # the budget goes to the highest logits
    assert "rate_stats" not in dict(q.named_buffers())  # no state: nothing to learn or resume
    q.eval()
    assert torch.equal(q.encode(z, mask) >= 0, q(z, mask).mask)  # the artifact's tokens are the forward's


def test_budget_takes_forced_cuts_out_of_the_budget() -> None:
    # max_token_len 4 at 0.3 tokens per position: runs longer than 4 are cut, and those cuts are paid from the
    # budget, so that the rate stays within 5% of the target.
    q = quantizer(target_rate=0.3, rate_control="budget")
    out = q(torch.randn(4, 200, 8))
    assert float(out.metrics["tokens_per_position"]) == pytest.approx(0.3, rel=0.05)
    assert int(gq.segment_lengths(out.mask)[out.mask].max()) <= 4


def test_budget_soft_gates_train_the_gate() -> None:
    q = quantizer(target_rate=0.5, rate_control="budget").train()
    out = q(torch.randn(2, 16, 8))
    out.gates.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in q.gate.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in q.gate.parameters())


def test_unknown_rate_control_is_refused() -> None:
    with pytest.raises(ValueError, match="rate_control must be one of"):
        quantizer(target_rate=0.5, rate_control="quantile")
