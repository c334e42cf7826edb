"""GQ model: masks and targets against their definitions, shapes, losses, gradients, gate, revival."""

from __future__ import annotations

import pytest
import torch

from vqkit.modalities.text import ByteEncoder, SegmentDecoder
from vqkit.modalities.text_bytes import PAD_ID
from vqkit.modalities.text_gq import (
    BoundaryGate,
    GatedTextAutoencoder,
    enforce_max_length,
    predicted_lengths,
    segment_lengths,
    segment_mask,
    window_targets,
)
from vqkit.quantizers import build_quantizer

K = 4


def tiny(segmentation: str = "learned", quantizer: str = "vq", **options) -> GatedTextAutoencoder:
    torch.manual_seed(0)
    q = build_quantizer(quantizer, dim=8, codebook_size=16, kmeans_init=False)
    gate = BoundaryGate(8, width=16, depth=1, num_heads=2, kernel=K) if segmentation == "learned" else None
    return GatedTextAutoencoder(
        ByteEncoder(8, width=16, depth=1, num_heads=2), q, SegmentDecoder(8, width=16, depth=1, max_token_len=K),
        gate, segmentation=segmentation, fixed_length=K, **options,
    )


def rows() -> torch.Tensor:
    x = torch.randint(0, 256, (3, 6))
    x[0, 4:] = PAD_ID
    x[2, 1:] = PAD_ID
    return x


def test_segment_mask_matches_its_definition() -> None:
    g = torch.rand(2, 7)
    m = segment_mask(g, K)
    for b in range(2):
        for t in range(7):
            for j in range(K):
                expected = 0.0 if t - j < 0 else float(torch.prod(1 - g[b, t - j : t]))
                assert m[b, t, K - 1 - j] == pytest.approx(expected, abs=1e-6)


def test_window_targets_and_lengths() -> None:
    x = torch.tensor([[5, 6, 7, PAD_ID]])
    w = window_targets(x, 3)
    assert w[0, 0].tolist() == [PAD_ID, PAD_ID, 5] and w[0, 2].tolist() == [5, 6, 7]
    boundaries = torch.tensor([[False, True, False, True, True]])
    assert segment_lengths(boundaries)[0].tolist() == [1, 2, 1, 2, 1]
    logits = torch.full((1, 4), -20.0)
    logits[0, 1] = 20.0  # slot 1 starts the segment: 3 bytes
    assert int(predicted_lengths(logits)) == 3


def test_max_length_cuts_long_tokens() -> None:
    valid = torch.ones(1, 10, dtype=torch.bool)
    out = enforce_max_length(torch.zeros(1, 10, dtype=torch.bool), valid, 4)
    assert out[0].nonzero().squeeze(1).tolist() == [3, 7]
    assert segment_lengths(out)[0, 3] == 4


@pytest.mark.parametrize("quantizer", ["vq", "ema_vq"])
def test_forward_shapes_losses_and_gradients(quantizer: str) -> None:
    model = tiny(quantizer=quantizer)
    x = rows()
    out = model(x)
    valid = x != PAD_ID
    m = int(valid.sum())
    assert out.gates.shape == x.shape and out.byte_logits.shape == (m, K, 256) and out.length_logits.shape == (m, K)
    assert torch.isfinite(out.loss) and set(out.losses) >= {"rec", "mask", "compression"}
    assert (out.gates[~valid] == 0).all() and (out.indices[~valid] == -1).all()
    ends = torch.tensor([[0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert (out.gates[ends] == 1).all() and out.boundaries[ends].all()  # row ends always end a token
    assert out.metrics["bytes"] == m and out.metrics["tokens"] >= 3
    out.loss.backward()
    assert model.encoder.embed.weight.grad.abs().sum() > 0
    assert model.gate.inp.weight.grad.abs().sum() > 0  # the gate learns through the soft mask and compression


def test_fixed_baseline_cuts_every_k_bytes() -> None:
    model = tiny("fixed")
    x = torch.randint(0, 256, (2, 9))
    x[1, 6:] = PAD_ID
    boundaries, _, _ = model.segment(x)
    assert boundaries[0].nonzero().squeeze(1).tolist() == [3, 7, 8]
    assert boundaries[1].nonzero().squeeze(1).tolist() == [3, 5]


def test_compression_weight_lowers_gates() -> None:
    x = torch.randint(0, 256, (8, 8))
    means = []
    for alpha in (0.0, 50.0):
        model = tiny(alpha=alpha)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(30):
            out = model(x)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        means.append(float(out.losses["compression"]))
    assert means[1] < means[0]


def test_reservoir_revives_dead_codes() -> None:
    model = tiny(reservoir_size=32, reservoir_per_step=8, revive_every=2)
    revival = model.quantizer.revival  # the model's options are forwarded to the quantizer's own revival
    assert (revival.strategy, revival.reservoir_size, revival.reservoir_per_step, revival.revive_every) == (
        "reservoir", 32, 8, 2)
    before = model.quantizer.embedding.detach().clone()
    model.train()
    x = torch.randint(0, 256, (4, 6))
    for _ in range(2):
        model(x)
    changed = (model.quantizer.embedding.detach() != before).any(-1)
    assert revival.filled > 0
    assert changed.sum() > 0  # codes no position used were replaced by reservoir latents
    assert revival.counts_since_revival.sum() == 0
    assert int(model.steps) == 2


def test_reservoir_options_do_not_override_the_quantizers_revival() -> None:
    encoder, decoder = ByteEncoder(8, 16, 1, 2), SegmentDecoder(8, 16, 1, K)
    q = build_quantizer("vq", dim=8, codebook_size=16, revival="reservoir", reservoir_size=64, revive_every=5)
    with pytest.raises(ValueError, match="model.reservoir_size=0"):
        GatedTextAutoencoder(encoder, q, decoder, BoundaryGate(8, 16, 1, 2, K))
    model = GatedTextAutoencoder(encoder, q, decoder, BoundaryGate(8, 16, 1, 2, K), reservoir_size=0)
    assert model.quantizer.revival.reservoir_size == 64 and model.quantizer.revival.revive_every == 5


def test_code_strings_have_predicted_lengths() -> None:
    strings = tiny().code_strings()
    assert len(strings) == 16 and all(1 <= len(s) <= K for s in strings)


def test_reservoir_needs_a_codebook_quantizer() -> None:
    q = build_quantizer("softvq", dim=8, codebook_size=16)
    with pytest.raises(TypeError, match="reservoir_size=0"):
        GatedTextAutoencoder(ByteEncoder(8, 16, 1, 2), q, SegmentDecoder(8, 16, 1, K), BoundaryGate(8, 16, 1, 2, K))
