"""`python -m vqkit.tools.codebook`: k-means pieces, a tiny end-to-end build, clear errors, ensure_codebook."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from vqkit.quantizers import build_quantizer
from vqkit.quantizers.codebook_file import load_codebook, save_codebook
from vqkit.tools import codebook as codebook_tool
from vqkit.tools.codebook import ensure_codebook, main, minibatch_kmeans, pool_grid, split_codes

TINY = ["--num-images", "8", "--image-size", "32", "--encoder-size", "64", "--iters", "5", "--batch-size", "8"]


def test_minibatch_kmeans_finds_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    x = (centres.repeat_interleave(200, 0) + 0.1 * torch.randn(800, 2, generator=g))[torch.randperm(800, generator=g)]
    found, counts = minibatch_kmeans(x, 8, iters=30, batch_size=256, generator=g)
    assert found.shape == (8, 2) and int(counts.sum()) == 800
    # every blob owns at least one centre, and most centres sit on a blob (mini-batch k-means may leave one
    # centre in a local optimum between blobs)
    assert (torch.cdist(centres, found).min(1).values < 0.5).all()
    assert (torch.cdist(found, centres).min(1).values < 0.5).sum() >= 6


def test_split_and_pool_helpers():
    assert split_codes(10, 3) == [4, 3, 3]
    with pytest.raises(ValueError, match="classes"):
        split_codes(2, 3)
    feats = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    pooled = pool_grid(feats, 2)
    assert pooled.shape == (2, 4, 3)
    torch.testing.assert_close(pooled[0, 0], feats[0, [0, 1, 4, 5]].mean(0))
    with pytest.raises(ValueError, match="square"):
        pool_grid(torch.zeros(1, 6, 3), 2)


def test_builds_a_loadable_codebook_from_the_photos(tmp_path):
    out = tmp_path / "cb.safetensors"
    assert main(["--out", str(out), "--num-codes", "16", *TINY]) == 0
    codebook, meta = load_codebook(out, expected_size=16)
    assert codebook.shape == (16, 1280) and torch.isfinite(codebook).all()
    assert meta["source"] == "efficientnet_lite0" and meta["data"] == "photos" and meta["num_features"] == "32"
    q = build_quantizer("vqgan_lc", dim=8, codebook_size=16, codebook_path=str(out))
    assert q.feature_dim == 1280 and q(torch.randn(1, 5, 8)).indices.shape == (1, 5)


def test_per_class_codes_from_an_image_folder(tmp_path):
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        folder = tmp_path / "data" / "train" / cls
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 36), tuple(c + 10 * i for c in colour)).save(folder / f"{i}.png")
    out = tmp_path / "cb.safetensors"
    argv = ["--out", str(out), "--num-codes", "6", "--data", "folder", "--data-root", str(tmp_path / "data"),
            "--num-images", "0", "--per-class", "--pool", "1", *TINY[2:]]
    assert main(argv) == 0
    _, meta = load_codebook(out, expected_size=6)
    assert meta["per_class"] == "true" and meta["num_classes"] == "2" and meta["num_features"] == "6"


def test_missing_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x.safetensors"), "--data", "folder", "--data-root",
                 str(tmp_path / "nowhere"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.safetensors"), "--source", "tokenizer", "--tokenizer",
                 str(tmp_path / "no.ckpt"), *TINY]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x.safetensors"), "--source", "timm", "--model-name", "resnet18",
                 "--weights-path", str(tmp_path / "no.pth"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


# --- ensure_codebook: the explicit preparation step ---------------------------------------------------
TINY_OPTIONS = {"num_images": 8, "image_size": 32, "encoder_size": 64, "iters": 5, "batch_size": 8, "progress": False}


def fake_features(args, progress=True):
    """Random (64, 4) features instead of the encoder: the file logic is under test, not the features."""
    return torch.randn(64, 4, generator=torch.Generator().manual_seed(args.seed)), None, {"data": "fake"}


def test_ensure_codebook_builds_once_then_keeps_the_file(tmp_path, monkeypatch, caplog):
    path = tmp_path / "run" / "codebook.safetensors"
    with caplog.at_level(logging.INFO, logger="vqkit.tools.codebook"):
        assert ensure_codebook(str(path), 16, **TINY_OPTIONS) == path
    assert "missing; building K=16" in caplog.text
    codebook, meta = load_codebook(path, expected_size=16)
    assert codebook.shape == (16, 1280) and meta["source"] == "efficientnet_lite0"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left beside it
    built = path.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("ensure_codebook rebuilt a file that fits")

    monkeypatch.setattr(codebook_tool, "build_codebook", no_rebuild)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vqkit.tools.codebook"):
        assert ensure_codebook(path, 16, **TINY_OPTIONS) == path
    assert path.stat().st_mtime_ns == built and "present, K=16 x F=1280; not rebuilt" in caplog.text


def test_ensure_codebook_refuses_a_file_that_does_not_fit(tmp_path):
    path = save_codebook(tmp_path / "cb.safetensors", torch.randn(8, 4))
    before = path.stat().st_mtime_ns
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} holds K=8 codes but K=16"):
        ensure_codebook(path, 16)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match=rf"{re.escape(str(corrupt))} is not a readable safetensors codebook"):
        ensure_codebook(corrupt, 8)
    assert path.stat().st_mtime_ns == before  # never overwritten
    with pytest.raises(ValueError, match=re.escape("prepare=[]")):
        ensure_codebook(None, 8)
    with pytest.raises(TypeError, match="out"):
        ensure_codebook(tmp_path / "new.safetensors", 8, out="elsewhere.safetensors")
    with pytest.raises(TypeError, match="no_such_option"):
        ensure_codebook(tmp_path / "new.safetensors", 8, no_such_option=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cb.safetensors", "corrupt.safetensors"]


def test_an_interrupted_build_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(codebook_tool, "extract_features", fake_features)
    path = tmp_path / "cb.safetensors"

    def killed_writer(out, codebook, metadata=None):
        Path(out).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as if the run were stopped mid-write

    monkeypatch.setattr(codebook_tool, "save_codebook", killed_writer)
    with pytest.raises(KeyboardInterrupt):
        ensure_codebook(path, 8, progress=False)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(codebook_tool, "save_codebook", save_codebook)
    ensure_codebook(path, 8, progress=False)  # the next run builds it
    assert load_codebook(path, expected_size=8)[0].shape == (8, 4)


def test_codes_from_a_trained_tokenizer_checkpoint_and_its_artifact(tmp_path, artifact):
    """--source tokenizer: k-means over the latents of a vqkit.train checkpoint or of its exported artifact."""
    from tests.artifacts import tiny_checkpoint

    outs = []
    for source in (tiny_checkpoint(tmp_path / "tiny.ckpt"), artifact):
        out = tmp_path / f"from_{Path(source).name}.safetensors"
        assert main(["--out", str(out), "--num-codes", "8", "--source", "tokenizer", "--tokenizer", str(source),
                     *TINY]) == 0
        codebook, meta = load_codebook(out, expected_size=8)
        assert meta["source"] == "tokenizer" and torch.isfinite(codebook).all()
        outs.append(codebook)
    assert outs[0].shape == outs[1].shape and outs[0].shape[0] == 8


# --- where the file goes, and its permissions ----------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_without_out_the_codebook_goes_beside_the_runs_with_normal_permissions(tmp_path, monkeypatch, capsys,
                                                                                mask):
    monkeypatch.setattr(codebook_tool, "extract_features", fake_features)
    monkeypatch.setenv("VQKIT_OUTPUTS", str(tmp_path / "outs"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    old = os.umask(mask)
    try:
        assert main(["--num-codes", "8"]) == 0
    finally:
        os.umask(old)
    path = tmp_path / "outs" / "codebooks" / "efficientnet_lite0_photos_K8.safetensors"
    assert f"wrote {path}" in capsys.readouterr().out
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing written into the current directory
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's / safetensors' 0600
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left beside it


def test_ensure_codebook_writes_with_normal_permissions(tmp_path, monkeypatch):
    monkeypatch.setattr(codebook_tool, "extract_features", fake_features)
    old = os.umask(0o022)
    try:
        path = ensure_codebook(tmp_path / "run" / "cb.safetensors", 8, progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_build_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    """As a training's `prepare` step the build runs after `seed=` seeded the run: resetting the global RNG
    to --seed there made every seed initialise the model the same way."""
    import random

    import numpy as np

    def features_drawing_from_the_global_rng(args, progress=True):
        torch.rand(3), random.random(), np.random.rand()  # what a data pipeline or a model init may do
        return fake_features(args, progress)

    monkeypatch.setattr(codebook_tool, "extract_features", features_drawing_from_the_global_rng)
    draws = []
    for run_seed in (1, 2):
        torch.manual_seed(run_seed), random.seed(run_seed), np.random.seed(run_seed)
        expected = (torch.rand(4), random.random(), np.random.rand())
        torch.manual_seed(run_seed), random.seed(run_seed), np.random.seed(run_seed)
        ensure_codebook(tmp_path / f"cb{run_seed}.safetensors", 8, progress=False)
        after = (torch.rand(4), random.random(), np.random.rand())
        torch.testing.assert_close(after[0], expected[0])
        assert after[1:] == expected[1:]
        draws.append(after[0])
    assert not torch.equal(draws[0], draws[1])  # two run seeds still give two inits
    # the codebook itself depends on --seed only: both files are the same
    torch.testing.assert_close(load_codebook(tmp_path / "cb1.safetensors")[0],
                               load_codebook(tmp_path / "cb2.safetensors")[0])
