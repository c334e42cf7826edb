"""VQGAN-LC backend: frozen file codebook, trained projector, VQGAN-LC loss weighting, clear file errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from vqkit.quantizers import build_quantizer
from vqkit.quantizers.codebook_file import load_codebook, save_codebook
from vqkit.quantizers.vqgan_lc import normalize_features

D, F_DIM = 8, 12


def features(k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, F_DIM, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def codebook_file(tmp_path):
    return save_codebook(tmp_path / "cb.safetensors", features(64), {"source": "test"})


def test_loads_the_file_and_keeps_it_frozen(codebook_file):
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(codebook_file)).train()
    assert torch.equal(q.features, normalize_features(features(64), "center_rms")) and q.feature_dim == F_DIM
    assert "features" not in dict(q.named_parameters())
    before = q.features.clone()
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    for step in range(3):
        out = q(torch.randn(2, 16, D, generator=torch.Generator().manual_seed(step)))
        opt.zero_grad()
        out.loss.backward()
        assert q.projector.weight.grad is not None and q.projector.weight.grad.abs().sum() > 0
        opt.step()
    assert torch.equal(q.features, before)
    assert "features" in q.state_dict()  # checkpoints carry the codebook


def test_codebook_is_the_projected_features_and_moves_with_the_projector(codebook_file):
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(codebook_file))
    scaled = normalize_features(features(64), "center_rms")
    expected = scaled @ q.projector.weight.T.detach() + q.projector.bias.detach()
    torch.testing.assert_close(q.codebook, expected)
    q.eval()
    first = q.codebook
    assert q.codebook is first  # cached in eval
    with torch.no_grad():
        q.projector.weight.mul_(2.0)
    assert not torch.allclose(q.codebook, first)  # the cache follows parameter changes


def test_loss_is_commit_plus_0_33_codebook():
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=32).train()
    out = q(torch.randn(2, 10, D))
    torch.testing.assert_close(out.loss, out.losses["commit"] + 0.33 * out.losses["codebook"])


def test_mlp_projector_and_bake(codebook_file):
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(codebook_file), projector="mlp",
                        projector_hidden=16).train()
    z = torch.randn(3, 20, D)
    q(z).loss.backward()
    assert all(p.grad is not None for p in q.projector.parameters())
    training_codebook = q.codebook.detach()
    plain = q.bake()
    assert type(plain).registry_name == "vq"
    torch.testing.assert_close(plain.codebook, training_codebook, atol=0, rtol=0)
    q.eval()
    assert torch.equal(plain.encode(z), q.encode(z))
    torch.testing.assert_close(plain.decode(q.encode(z)), q(z).z_q)


def test_100k_codes_train_on_a_small_batch():
    k = 100_000
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=k, feature_dim=32).train()
    z = torch.randn(2, 64, D, requires_grad=True)
    out = q(z)
    (out.loss + out.z_q.sum()).backward()
    assert int(out.indices.max()) < k and torch.isfinite(z.grad).all()
    assert q.projector.weight.grad.abs().sum() > 0


def test_random_codebook_is_logged(caplog):
    with caplog.at_level(logging.WARNING):
        build_quantizer("vqgan_lc", dim=D, codebook_size=16)
    assert "RANDOM" in caplog.text and "python -m vqkit.tools.codebook" in caplog.text


def test_a_missing_codebook_file_names_the_file_and_the_preparation_step(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError) as err:
        build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(missing))
    message = str(err.value)
    assert str(missing) in message
    assert f"build it first with `python -m vqkit.tools.codebook --out {missing} --num-codes 64" in message
    assert "the run's `prepare:` step" in message
    assert not missing.exists()  # nothing is built as a side effect of the constructor
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a directory is not a codebook file either
        build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(tmp_path))


def test_the_constructor_no_longer_builds_codebooks(tmp_path):
    with pytest.raises(TypeError, match="build"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(tmp_path / "cb.safetensors"),
                        build={"source": "random"})
    import vqkit.quantizers.vqgan_lc as module

    assert "build_codebook" not in Path(module.__file__).read_text()


def test_clear_errors_for_bad_files(tmp_path, codebook_file):
    with pytest.raises(ValueError, match="codebook_size=65.*--num-codes 65|quantizer.codebook_size=64"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=65, codebook_path=str(codebook_file))
    with pytest.raises(ValueError, match="feature_dim"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(codebook_file), feature_dim=7)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(codebook_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=64, codebook_path=str(corrupt))
    bad = save_codebook(tmp_path / "nan.safetensors", features(4))
    data = bad.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        save_codebook(tmp_path / "x.safetensors", torch.full((2, 2), float("nan")))
    assert load_codebook(bad)[0].shape == (4, F_DIM) and data
    with pytest.raises(ValueError, match="projector"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=16, projector="conv")


def test_identity_projector_init_starts_at_the_file_codebook(tmp_path):
    path = save_codebook(tmp_path / "same_dim.safetensors", torch.randn(32, D), {"source": "test"})
    q = build_quantizer("vqgan_lc", dim=D, codebook_size=32, codebook_path=str(path), projector_init="identity")
    torch.testing.assert_close(q.codebook, q.features, atol=0, rtol=0)
    with pytest.raises(ValueError, match="feature_dim == dim"):
        build_quantizer("vqgan_lc", dim=D, codebook_size=16, feature_dim=F_DIM, projector_init="identity")


def test_feature_norm_centres_the_codebook_at_unit_rms_and_keeps_its_geometry(tmp_path):
    """ReLU features (all >= 0, large norms) are centred and scaled: the projected codes start at the scale of
    unit-variance latents, and distances between codes only change by one common factor."""
    raw = torch.rand(256, 40) * 6.0  # non-negative, like ReLU6 features
    scaled = normalize_features(raw, "center_rms")
    assert scaled.mean(0).abs().max() < 1e-5
    assert scaled.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-4)
    ratio = torch.cdist(scaled, scaled)[0, 1:] / torch.cdist(raw, raw)[0, 1:]
    assert torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-4)
    std = normalize_features(raw, "standardize")
    assert std.std(0).mul(40**0.5).sub(1).abs().max() < 1e-4
    assert torch.equal(normalize_features(raw, "none"), raw)
    with pytest.raises(ValueError, match="feature_norm must be one of"):
        normalize_features(raw, "l2")


def test_default_feature_norm_brings_projected_codes_to_the_latents_scale(tmp_path):
    path = tmp_path / "relu.safetensors"
    save_codebook(path, torch.rand(512, 64) * 6.0, {"source": "test"})
    q = build_quantizer("vqgan_lc", dim=8, codebook_size=512, codebook_path=str(path))
    assert q.feature_norm == "center_rms"
    rms = q.codebook.pow(2).sum(1).mean().sqrt().item()
    assert 0.5 < rms < 2.0  # E||e||^2 = 1 with N(0, D^-1/2) weights (+ the small default bias)
    raw = build_quantizer("vqgan_lc", dim=8, codebook_size=512, codebook_path=str(path), feature_norm="none")
    assert raw.codebook.pow(2).sum(1).mean().sqrt().item() > 10 * rms  # the file as it is: far outside
    bias = q.projector.bias.detach()
    assert bias.abs().max() <= 64**-0.5 and bias.abs().max() > 0  # PyTorch's default, as the official code
