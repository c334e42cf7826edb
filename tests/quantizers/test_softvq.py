"""SoftVQ specifics: the soft mix, stop-gradient logits, blocks, and the entropy term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqkit.quantizers import SoftVectorQuantizer, build_quantizer


def make(**kwargs) -> SoftVectorQuantizer:
    torch.manual_seed(0)
    q = build_quantizer("softvq", **{"dim": 4, "codebook_size": 12, **kwargs})
    assert isinstance(q, SoftVectorQuantizer)
    return q


def test_z_q_is_the_posterior_mix_of_the_block_codes() -> None:
    q = make(num_codebooks=3, return_probs=True, tau=0.5)
    z = torch.randn(2, 6, 4)
    out = q(z)
    assert out.probs.shape == (2, 6, 4)  # 12 codes / 3 blocks
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2, 6))
    codes = q.codebook.reshape(3, 4, 4)
    for n in range(6):
        block = n // 2
        expected_logits = F.normalize(z[:, n], dim=-1) @ codes[block].T
        torch.testing.assert_close(out.probs[:, n], torch.softmax(expected_logits / 0.5, -1))
        torch.testing.assert_close(out.z_q[:, n], out.probs[:, n] @ codes[block])
        ids = out.indices[:, n]
        assert ((ids >= block * 4) & (ids < (block + 1) * 4)).all()
        torch.testing.assert_close(ids, out.probs[:, n].argmax(-1) + block * 4)


def test_codebook_learns_only_through_the_mix() -> None:
    q = make(normalize=False, entropy_weight=0.0, tau=1.0, return_probs=True)
    z = torch.randn(1, 5, 4)
    out = q(z)
    upstream = torch.randn_like(out.z_q)
    (out.z_q * upstream).sum().backward()
    # logits see sg(E): dL/dE comes only from z_q = p @ E, i.e. p^T @ upstream
    expected = out.probs[0].T @ upstream[0]
    torch.testing.assert_close(q.embedding.grad, expected.detach())


def test_gradient_reaches_the_encoder_through_the_posterior() -> None:
    q = make()
    z = torch.randn(2, 4, 4, requires_grad=True)
    q(z).z_q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_entropy_term_matches_its_definition() -> None:
    q = make(entropy_temperature=0.5, entropy_weight=0.3)
    z = torch.randn(3, 2, 4)
    out = q(z)
    logits = F.normalize(z, dim=-1).reshape(-1, 4) @ q.codebook.T / 0.5
    p = torch.softmax(logits, -1)
    sample = -(p * torch.log_softmax(logits, -1)).sum(-1).mean()
    mean_p = p.mean(0)
    batch = -(mean_p * mean_p.log()).sum()
    torch.testing.assert_close(out.losses["entropy"], sample - batch)
    torch.testing.assert_close(out.loss, 0.3 * (sample - batch))


def test_low_temperature_approaches_hard_quantization() -> None:
    q = make(tau=1e-4)
    z = torch.randn(2, 3, 4)
    out = q(z)
    torch.testing.assert_close(out.z_q, q.decode(out.indices), atol=1e-4, rtol=0)


def test_sequence_must_split_into_blocks() -> None:
    q = make(num_codebooks=4)
    with pytest.raises(ValueError, match="divisible"):
        q(torch.randn(1, 6, 4))
    with pytest.raises(ValueError, match="divisible"):
        make(codebook_size=10, num_codebooks=4)
