"""Grouped (multi-head) VQ: ``vq`` / ``ema_vq`` with ``num_groups = G`` (vqkit/quantizers/grouped.py).

Ids (B, N, G) through the contract's multi-stage form; one codebook per group or one shared; every group keeps
k-means init and revival; the training entry point, the artifact and the usage metric take it unchanged.
"""

from __future__ import annotations

import pytest
import torch

import vqkit.quantizers  # noqa: F401  (registers the backends)
from vqkit.metrics.codebook import CodebookUsage
from vqkit.quantizers import GroupedQuantizer, VectorQuantizer, build_quantizer
from vqkit.quantizers.base import batch_usage_metrics

D, K, G, B, N = 8, 16, 4, 3, 10
BACKENDS = ("vq", "ema_vq")


def make(name: str, shared: bool, seed: int = 0, **kwargs) -> GroupedQuantizer:
    torch.manual_seed(seed)
    return build_quantizer(name, dim=D, codebook_size=K, num_groups=G, shared_codebook=shared, **kwargs)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("name", BACKENDS)
def test_shapes_and_decode_of_encode(name, shared):
    q = make(name, shared)
    assert isinstance(q, GroupedQuantizer) and q.num_stages == G
    q.train()
    out = q(latents())
    assert out.z_q.shape == (B, N, D) and out.indices.shape == (B, N, G) and out.indices.dtype == torch.int64
    assert q.codebook.shape == (G, K, D // G) and torch.isfinite(out.loss)
    q.eval()
    z = latents(seed=2)
    out = q(z)
    ids = q.encode(z)
    assert torch.equal(ids, out.indices)
    torch.testing.assert_close(q.decode(ids), out.z_q, atol=1e-6, rtol=1e-6)  # z + (e - z) rounding
    # group g's channels are group g's code: the search ran per group of D/G channels
    expected = torch.cat([q.codebook[g][ids[..., g]] for g in range(G)], dim=-1)
    torch.testing.assert_close(out.z_q, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"one id per group on the last axis: expected \(\.\.\., 4\)"):
        q.decode(ids[..., :2])


@pytest.mark.parametrize("name", BACKENDS)
def test_shared_codebook_has_one_codebook_separate_has_one_per_group(name):
    def codebook_elements(q):
        tensors = list(q.parameters()) if name == "vq" else [q.groups[i].embed for i in range(len(q.groups))]
        return sum(t.numel() for t in tensors)

    shared, separate = make(name, True), make(name, False)
    assert codebook_elements(shared) == K * D // G
    assert codebook_elements(separate) == G * K * D // G
    assert torch.equal(shared.codebook[0], shared.codebook[G - 1])
    assert not torch.equal(separate.codebook[0], separate.codebook[1])


@pytest.mark.parametrize("shared", [True, False])
def test_per_group_usage_metrics_and_codebook_usage_metric(shared):
    q = make("vq", shared).train()
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(3)) > 0.3
    out = q(latents(), mask)
    assert (out.indices[~mask] == -1).all() and (out.indices[mask] >= 0).all()
    for g in range(G):
        expected = batch_usage_metrics(torch.bincount(out.indices[..., g][mask], minlength=K).float())
        for key, value in expected.items():
            torch.testing.assert_close(out.metrics[f"stage{g}/{key}"], value)
    usage = CodebookUsage(K, num_stages=G)  # the evaluation metric reads grouped ids as multi-stage ones
    usage.update(out.indices)
    result = usage.compute()
    for g in range(G):
        used = torch.unique(out.indices[..., g][mask]).numel()
        assert result[f"stage{g}/usage"].item() == pytest.approx(used / K)


def test_one_group_is_the_plain_quantizer():
    torch.manual_seed(0)
    a = build_quantizer("vq", dim=D, codebook_size=K)
    torch.manual_seed(0)
    b = build_quantizer("vq", dim=D, codebook_size=K, num_groups=1, shared_codebook=False)
    assert type(b) is VectorQuantizer and a.state_dict().keys() == b.state_dict().keys()
    assert torch.equal(a(latents()).z_q, b(latents()).z_q)


@pytest.mark.parametrize("name", BACKENDS)
def test_kmeans_init_and_revival_run_per_group(name):
    """Group 0's channels sit around +4, the others' around -4: each group's codes come from its own vectors."""
    extra = {"usage_decay": 0.5} if name == "vq" else {"decay": 0.5}
    q = make(name, False, kmeans_init=True, dead_code_threshold=1.0, **extra).train()
    offsets = torch.full((D,), -4.0)
    offsets[: D // G] = 4.0
    z = latents() + offsets
    q(z)
    assert all(bool(group.initialized) for group in q.groups)
    assert (q.codebook[0] > 0).all() and (q.codebook[1:] < 0).all()
    revived = [group.revival.num_revived for group in q.groups]
    for step in range(3):  # a tiny batch leaves codes unused: revival rewrites them from the group's own latents
        q(latents(seed=10 + step)[:1, :3] + offsets)
    assert all(group.revival.num_revived > r for group, r in zip(q.groups, revived, strict=True))
    assert (q.codebook[0] > 0).all() and (q.codebook[1:] < 0).all()


def test_bad_options_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match=r"dim=8 cannot be split into num_groups=3 .*e\.g\. 2, 4, 8"):
        build_quantizer("vq", dim=8, codebook_size=K, num_groups=3)
    with pytest.raises(ValueError, match="num_groups >= 2"):
        build_quantizer("vq", dim=8, codebook_size=K, num_groups=0)
    with pytest.raises(TypeError, match="num_groups applies to .*vq, ema_vq.*VQGANLCQuantizer"):
        build_quantizer("vqgan_lc", dim=8, codebook_size=K, num_groups=2)


def test_residual_of_grouped_is_refused():
    """A residual stage must give one id per token: grouped stages (ids (B, N, G)) are refused by name."""
    with pytest.raises(ValueError, match="'vq' is multi-stage; it must give one id per token"):
        build_quantizer("residual", dim=D, codebook_size=K, num_stages=2, stage_options={"num_groups": 2})


def test_train_a_grouped_image_tokenizer_and_load_its_artifact(make_config, tmp_path):
    from vqkit.export import export_tokenizer
    from vqkit.tokenizers import load_tokenizer
    from vqkit.train import train

    result = train(make_config("quantizer=vq", "quantizer.num_groups=2", "trainer.max_steps=3"))
    ckpt = torch.load(result["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["vqkit_config"]["quantizer"]["num_groups"] == 2
    assert "model.quantizer.groups.0.embedding" in ckpt["state_dict"]
    for g in range(2):
        assert 0 < result["metrics"][f"test/codebook/stage{g}/usage"] <= 1
    export_tokenizer(result["checkpoint"], tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    images = torch.rand(2, 3, 32, 32)
    ids = tok.encode(images)
    assert isinstance(tok.quantizer, GroupedQuantizer) and ids.shape == (2, 8, 8, 2)
    assert tok.decode(ids).shape == (2, 3, 32, 32)
