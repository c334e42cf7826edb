"""GQ's hold expansion: how a (code, length) token reaches every latent position it covers.

Models that decode every position (image, audio) read gated tokens through ``GatedQuantizer.hold_tokens``
(training: soft weights from the gates; eval: one-hot at the next boundary) and ``expand`` (from ids).
"""

from __future__ import annotations

import itertools

import pytest
import torch

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
    return GatedQuantizer(8, 16, inner_options={"kmeans_init": False}, max_token_len=4, width=16, depth=1,
                          num_heads=2, **options)


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


def test_rate_control_moves_the_weight_towards_the_target() -> None:
    q = quantizer(target_rate=0.25, compression_weight=0.1, rate_lr=0.5).train()
    z = torch.randn(2, 12, 8)
    rate = float(q(z).metrics["tokens_per_position"])
    after = float(q.rate_weight)
    # one step of dual ascent on the relative rate error: up when too many tokens, down when too few
    assert after == pytest.approx(0.1 + 0.5 * (rate - 0.25) / 0.25, abs=1e-6)
    q.eval()
    q(z)
    assert float(q.rate_weight) == after  # eval never moves it
    assert "rate_weight" in dict(q.named_buffers())  # saved with the weights: resume and artifacts keep it


def test_rate_control_reaches_a_target_rate() -> None:
    # The reconstruction of every position from its token's vector asks for as many tokens as possible (rate 1);
    # the controller's multiplier must hold the rate at the target instead.
    torch.manual_seed(0)
    q = quantizer(target_rate=0.5, compression_weight=0.0).train()
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    z = torch.randn(8, 24, 8)
    for _ in range(400):
        opt.zero_grad()
        out = q(z)
        held, _ = q.hold_tokens(out)
        (torch.nn.functional.mse_loss(held, z) + out.loss).backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        assert float(q(z).metrics["tokens_per_position"]) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize(("options", "message"), [
    ({"target_rate": 0.1}, r"\[0.25, 1\]"),
    ({"target_rate": 0.5, "segmentation": "fixed", "fixed_length": 2}, "needs segmentation=learned"),
    ({"target_rate": 0.5, "rate_lr": 0.0}, "rate_lr must be > 0"),
])
def test_rate_control_refuses_targets_it_cannot_reach(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quantizer(**options)
