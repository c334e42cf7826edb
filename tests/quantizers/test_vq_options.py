"""Options of the ``vq`` and ``ema_vq`` backends: loss weights, cosine and factorised codes,
k-means initialisation, dead-code revival and the EMA update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vqkit.quantizers import EMAVectorQuantizer, VectorQuantizer, build_quantizer
from vqkit.quantizers.search import nearest_code


def latents(b: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def clustered(centres: torch.Tensor, per: int, std: float, seed: int) -> torch.Tensor:
    """(1, len(centres) * per, D) latents in tight, shuffled blobs around ``centres``."""
    g = torch.Generator().manual_seed(seed)
    pts = centres.repeat_interleave(per, 0) + std * torch.randn(len(centres) * per, centres.shape[1], generator=g)
    return pts[torch.randperm(len(pts), generator=g)].unsqueeze(0)


def zero_or_none(grad: torch.Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


# --- loss weights ---------------------------------------------------------------------------
def test_codebook_weight_only_moves_the_codebook_not_the_encoder():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=6, codebook_size=10, codebook_weight=1.0, commit_weight=0.0)
    z = latents(2, 7, 6).requires_grad_(True)
    out = q(z)
    out.loss.backward()
    assert zero_or_none(z.grad)
    assert q.embedding.grad is not None and q.embedding.grad.abs().sum() > 0
    # only the codes that were picked get a gradient
    used = torch.zeros(10, dtype=torch.bool)
    used[out.indices.flatten()] = True
    assert (q.embedding.grad[~used] == 0).all() and (q.embedding.grad[used].abs().sum(1) > 0).all()


def test_commit_weight_only_moves_the_encoder_not_the_codebook():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=6, codebook_size=10, codebook_weight=0.0, commit_weight=1.0)
    z = latents(2, 7, 6).requires_grad_(True)
    q(z).loss.backward()
    assert zero_or_none(q.embedding.grad)
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("swap", [False, True])
def test_loss_weights_follow_the_manual_formula(swap):
    w_codebook, w_commit = 0.7, 0.2
    torch.manual_seed(0)
    q = build_quantizer(
        "vq", dim=5, codebook_size=9, codebook_weight=w_codebook, commit_weight=w_commit, swap_loss_weights=swap
    )
    z = latents(3, 4, 5, seed=1).requires_grad_(True)
    out = q(z)
    out.loss.backward()

    # the same computation written out by hand
    z_ref = z.detach().clone().requires_grad_(True)
    e_ref = q.embedding.detach().clone().requires_grad_(True)
    codes = e_ref[out.indices]
    codebook_term = ((codes - z_ref.detach()) ** 2).mean()
    commit_term = ((z_ref - codes.detach()) ** 2).mean()
    a, b = (w_commit, w_codebook) if swap else (w_codebook, w_commit)
    loss_ref = a * codebook_term + b * commit_term
    loss_ref.backward()

    torch.testing.assert_close(out.loss, loss_ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.losses["codebook"], codebook_term.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.losses["commit"], commit_term.detach(), atol=1e-6, rtol=1e-6)
    # the two terms have the same value, so only the gradients tell which weight went where
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(q.embedding.grad, e_ref.grad, atol=1e-7, rtol=1e-5)


def test_swap_moves_the_weight_between_terms():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=4, codebook_size=8, codebook_weight=1.0, commit_weight=0.0, swap_loss_weights=True)
    z = latents(2, 5, 4).requires_grad_(True)
    q(z).loss.backward()
    # swapped: commit gets weight 1, codebook gets 0
    assert zero_or_none(q.embedding.grad)
    assert z.grad.abs().sum() > 0


# --- cosine and factorised codes ------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
def test_normalize_gives_unit_norm_codes_and_cosine_search(training):
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=6, codebook_size=12, normalize=True).train(training)
    z = 3.0 * latents(2, 9, 6)
    out = q(z)
    torch.testing.assert_close(q.codebook.norm(dim=1), torch.ones(12))
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(2, 9))
    torch.testing.assert_close(q.decode(out.indices).norm(dim=-1), torch.ones(2, 9))
    # the search is by cosine similarity, whatever the raw norms are
    cos = F.normalize(z, dim=-1) @ F.normalize(q.embedding.detach(), dim=-1).T
    assert torch.equal(out.indices, cos.argmax(-1))


def test_normalize_is_scale_invariant():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=6, codebook_size=12, normalize=True).eval()
    z = latents(1, 20, 6)
    assert torch.equal(q.encode(z), q.encode(7.5 * z))
    with torch.no_grad():
        q.embedding.mul_(torch.linspace(0.1, 10.0, 12).unsqueeze(1))  # raw code norms do not matter either
    assert torch.equal(q.encode(z), q.encode(0.01 * z))


def test_code_dim_factorises_with_projections():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=10, codebook_size=7, code_dim=3)
    assert isinstance(q.project_in, torch.nn.Linear) and isinstance(q.project_out, torch.nn.Linear)
    assert q.project_in.weight.shape == (3, 10) and q.project_out.weight.shape == (10, 3)
    assert q.codebook.shape == (7, 3) and q.embedding.shape == (7, 3)
    z = latents(2, 5, 10).requires_grad_(True)
    out = q(z)
    assert out.z_q.shape == (2, 5, 10)
    # the search runs in code space
    with torch.no_grad():
        expected, _ = nearest_code(q.project_in(z.reshape(-1, 10)), q.codebook)
    assert torch.equal(out.indices.flatten(), expected)
    (out.z_q.sum() + out.loss).backward()
    for p in (q.project_in.weight, q.project_out.weight, q.embedding):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0
    q.eval()
    torch.testing.assert_close(q.decode(q.encode(z)), q(z).z_q, atol=1e-6, rtol=1e-6)

    same = build_quantizer("vq", dim=10, codebook_size=7, code_dim=10)
    assert isinstance(same.project_in, torch.nn.Identity) and same.codebook.shape == (7, 10)


# --- k-means initialisation -------------------------------------------------------------------
CENTRES = torch.tensor([[8.0, 0.0, 0.0, 0.0], [-8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0], [0.0, 0.0, 8.0, 8.0]])


@pytest.mark.parametrize("name", ["vq", "ema_vq"])
def test_kmeans_init_on_first_training_batch(name):
    torch.manual_seed(0)
    q = build_quantizer(name, dim=4, codebook_size=16, kmeans_init=True)
    assert not bool(q.initialized)
    z = clustered(CENTRES, 64, 0.2, seed=1)
    before = q.codebook.clone()

    q.eval()
    q(z)  # eval forwards never initialise
    assert not bool(q.initialized) and torch.equal(q.codebook, before)

    q.train()
    out = q(z)
    assert bool(q.initialized)
    assert not torch.allclose(q.codebook, before)
    # the first batch is already searched against the k-means codes
    assert torch.equal(q.encode(z), out.indices)
    # every code sits on a cluster, and every cluster has codes
    d = torch.cdist(q.codebook, CENTRES)  # (K, clusters)
    near = d.min(1).values < 1.0
    assert near.float().mean() >= 0.75, d.min(1).values
    assert set(d.argmin(1)[near].tolist()) == {0, 1, 2, 3}
    assert out.metrics["used_codes"] >= 12

    # the next batch does not re-run k-means
    after = q.codebook.clone()
    q(z + 100.0)
    assert bool(q.initialized)
    if name == "vq":  # no optimizer step, no revival: nothing may change
        assert torch.equal(q.codebook, after)
    else:  # the EMA drags only the code the shifted batch hits
        still_near = torch.cdist(q.codebook, CENTRES).min(1).values < 1.0
        assert int(still_near.sum()) >= int(near.sum()) - 1


def test_kmeans_batches_waits_and_uses_all_batches():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=4, codebook_size=8, kmeans_init=True, kmeans_batches=2)
    first = clustered(CENTRES[:2], 32, 0.2, seed=1)
    second = clustered(CENTRES[2:], 32, 0.2, seed=2)
    before = q.codebook.clone()
    q.encode(first)  # encode (even in training mode) neither collects nor initialises
    q.encode(second)
    assert not bool(q.initialized) and torch.equal(q.codebook, before)
    q(first)
    assert not bool(q.initialized)
    assert torch.equal(q.codebook, before)
    q(second)
    assert bool(q.initialized)
    d = torch.cdist(q.codebook, CENTRES)
    near = d.min(1).values < 1.0
    assert near.float().mean() >= 0.75
    # codes on the clusters of both batches, not only the last one
    assert set(d.argmin(1)[near].tolist()) == {0, 1, 2, 3}


# --- dead-code revival ---------------------------------------------------------------------------
def far_codebook(k: int, d: int) -> torch.Tensor:
    return 100.0 + 10.0 * torch.arange(k * d, dtype=torch.float32).reshape(k, d) / (k * d)


def is_row_of(rows: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """(R,) bool: each of ``rows`` equals some row of ``data`` (D-dim, flattened)."""
    diff = rows.unsqueeze(1) - data.reshape(1, -1, rows.shape[1])
    return (diff == 0).all(-1).any(1)


def test_vq_revives_dead_codes_with_batch_latents():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=3, codebook_size=6, dead_code_threshold=1.0, usage_decay=0.5)
    with torch.no_grad():
        q.embedding.copy_(far_codebook(6, 3))
    old = q.embedding.detach().clone()
    z = latents(1, 32, 3)
    out = q(z)
    hit = out.indices.unique()
    assert hit.tolist() == [0]  # every latent picks the same far code
    dead = torch.arange(1, 6)

    # the used code survives untouched, the dead ones are now distinct latents of the batch
    assert torch.equal(q.embedding[0], old[0])
    assert is_row_of(q.embedding.detach()[dead], z).all()
    assert len({tuple(r) for r in q.embedding.detach()[dead].tolist()}) == 5
    # their usage restarts at the threshold; the survivor's running usage started at the
    # threshold (1) and moved halfway to the 32 tokens it took: 0.5 * 1 + 0.5 * 32
    torch.testing.assert_close(q.code_usage[dead], torch.full((5,), 1.0))
    torch.testing.assert_close(q.code_usage[0], torch.tensor(16.5))
    # and they are usable: the next search spreads over them
    assert q.encode(z).unique().numel() > 1


def test_revive_every_and_threshold_zero():
    torch.manual_seed(0)
    q = build_quantizer("vq", dim=3, codebook_size=6, dead_code_threshold=1.0, usage_decay=0.5, revive_every=2)
    with torch.no_grad():
        q.embedding.copy_(far_codebook(6, 3))
    z = latents(1, 32, 3)
    q(z)
    assert torch.equal(q.embedding.detach(), far_codebook(6, 3))  # step 1: not a revival step
    q(z)
    assert is_row_of(q.embedding.detach()[1:], z).all()  # step 2: revived

    off = build_quantizer("vq", dim=3, codebook_size=6, dead_code_threshold=0.0)
    with torch.no_grad():
        off.embedding.copy_(far_codebook(6, 3))
    off(z)
    assert torch.equal(off.embedding.detach(), far_codebook(6, 3))


def make_ema(**kwargs) -> EMAVectorQuantizer:
    torch.manual_seed(0)
    q = build_quantizer("ema_vq", **kwargs)
    assert isinstance(q, EMAVectorQuantizer)
    return q


def set_ema_state(q: EMAVectorQuantizer, embed: torch.Tensor, cluster_size: torch.Tensor) -> None:
    q.embed.copy_(embed)
    q.cluster_size.copy_(cluster_size)
    q.embed_avg.copy_(embed * cluster_size.unsqueeze(1))


def test_ema_revival_resets_ema_statistics():
    """Revived codes must not be pulled back to their stale EMA means by the next update
    (audiocraft resets only the vectors, so the next update drags them back)."""
    q = make_ema(dim=2, codebook_size=4, decay=0.9, dead_code_threshold=1.0)
    set_ema_state(q, far_codebook(4, 2), torch.ones(4))
    centres = torch.tensor([[0.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 3.0]])
    z = clustered(centres, 16, 0.1, seed=3)

    out = q(z)
    assert out.indices.unique().tolist() == [0]
    dead = torch.arange(1, 4)
    revived = q.embed[dead].clone()
    assert is_row_of(revived, z).all()
    # statistics restart from the new vectors with a mass of max(threshold, 1)
    torch.testing.assert_close(q.cluster_size[dead], torch.ones(3))
    torch.testing.assert_close(q.embed_avg[dead], revived)

    # next EMA step (revival off, to look at the update alone): the revived codes stay on the data
    q.configure_revival("none")
    out2 = q(z)
    assert set(out2.indices.unique().tolist()) & {1, 2, 3}
    moved = q.embed[dead]
    assert (torch.cdist(moved, z[0]).min(1).values < 1.0).all(), moved
    assert ((moved - revived).norm(dim=1) < 3.0).all(), (moved, revived)


def test_ema_revival_with_high_threshold_keeps_codes_alive():
    q = make_ema(dim=2, codebook_size=4, decay=0.9, dead_code_threshold=3.0, usage_decay=0.9)
    set_ema_state(q, far_codebook(4, 2), torch.full((4,), 3.5))
    q.code_usage.fill_(3.5)  # dead codes are decided by the running usage, as for vq
    z = clustered(torch.tensor([[0.0, 0.0], [0.0, 3.0], [3.0, 0.0], [3.0, 3.0]]), 16, 0.1, seed=3)
    q(z)  # unused codes: 0.9 * 3.5 = 3.15 >= 3 -> alive; nothing revived
    torch.testing.assert_close(q.embed[1:], far_codebook(4, 2)[1:], atol=1e-3, rtol=0)  # Laplace smoothing
    q(z)  # 0.9 * 3.15 = 2.835 < 3 -> revived with mass 3
    assert is_row_of(q.embed[1:], z).all()
    torch.testing.assert_close(q.cluster_size[1:], torch.full((3,), 3.0))
    torch.testing.assert_close(q.embed_avg[1:], 3.0 * q.embed[1:])


# --- the EMA update -----------------------------------------------------------------------------
def test_ema_update_matches_hand_computed_formula():
    decay, eps = 0.5, 0.1
    q = make_ema(dim=2, codebook_size=3, decay=decay, eps=eps, commit_weight=0.25)
    set_ema_state(q, torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), torch.ones(3))
    z = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 1.0]]])

    out = q(z)
    assert out.indices.tolist() == [[0, 0, 1]]
    # z_q and the commitment loss use the codes from before the update
    torch.testing.assert_close(out.z_q, torch.tensor([[[0.0, 0.0], [0.0, 0.0], [10.0, 0.0]]]))
    torch.testing.assert_close(out.losses["commit"], torch.tensor(14.0 / 6.0))
    torch.testing.assert_close(out.loss, torch.tensor(0.25 * 14.0 / 6.0))

    # counts [2, 1, 0], sums [[4, 2], [9, 1], [0, 0]]
    # cluster_size = 0.5 * 1 + 0.5 * counts              = [1.5, 1.0, 0.5]
    # embed_avg    = 0.5 * embed + 0.5 * sums             = [[2, 1], [9.5, 0.5], [0, 5]]
    # smoothed     = (cs + eps) / (n + K * eps) * n, n = 3 = [1.6, 1.1, 0.6] / 1.1
    # embed        = embed_avg / smoothed
    torch.testing.assert_close(q.cluster_size, torch.tensor([1.5, 1.0, 0.5]))
    torch.testing.assert_close(q.embed_avg, torch.tensor([[2.0, 1.0], [9.5, 0.5], [0.0, 5.0]]))
    expected = torch.tensor([[1.375, 0.6875], [9.5, 0.5], [0.0, 55.0 / 6.0]])
    torch.testing.assert_close(q.embed, expected)
    torch.testing.assert_close(q.codebook, expected)


def test_ema_update_only_in_training_and_ignores_gradients():
    q = make_ema(dim=4, codebook_size=8)
    assert not any(p.requires_grad for p in q.parameters())
    before = q.embed.clone()
    q.eval()
    q(latents(1, 10, 4))
    assert torch.equal(q.embed, before)
    q.train()
    z = latents(1, 10, 4).requires_grad_(True)
    out = q(z)
    assert not torch.equal(q.embed, before)
    assert set(out.losses) == {"commit"}
    out.loss.backward()
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vq", "ema_vq"])
def test_tile_sizes_do_not_change_the_result(name):
    torch.manual_seed(0)
    a = build_quantizer(name, dim=5, codebook_size=23).eval()
    b = build_quantizer(name, dim=5, codebook_size=23, code_chunk=4, row_chunk=7).eval()
    b.load_state_dict(a.state_dict())
    z = latents(3, 11, 5)
    assert torch.equal(a.encode(z), b.encode(z))
    torch.testing.assert_close(a(z).z_q, b(z).z_q, atol=0, rtol=0)


def test_ema_rejects_codebook_options():
    with pytest.raises(TypeError, match="codebook_weight"):
        build_quantizer("ema_vq", dim=4, codebook_size=8, codebook_weight=1.0)
    with pytest.raises(TypeError, match="swap_loss_weights"):
        build_quantizer("ema_vq", dim=4, codebook_size=8, swap_loss_weights=True)
    for decay in (1.0, -0.1):
        with pytest.raises(ValueError, match="decay"):
            build_quantizer("ema_vq", dim=4, codebook_size=8, decay=decay)
    with pytest.raises(ValueError):
        VectorQuantizer(dim=0, codebook_size=8)
