"""The AR prior: causal, cached sampling equals recomputation, learns class-conditional patterns, trains end to end
on a token folder (samples decoded, prior folder reloads, resume), and refuses what it cannot model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.artifacts import SOFTVQ, TINY_MODEL
from tests.test_tokenize import PHOTOS, artifact
from vqkit.config import compose_train_config
from vqkit.data.token_shards import FORMAT, FORMAT_VERSION, write_manifest, write_shard
from vqkit.prior import ARPrior, FlowPrior, load_prior
from vqkit.tokenize import main as tokenize
from vqkit.train_prior import generation_fid, train_prior

TINY_PRIOR = ["prior.dim=32", "prior.depth=2", "prior.num_heads=2"]


def test_logits_are_causal() -> None:
    torch.manual_seed(0)
    prior = ARPrior(vocab_size=11, seq_len=9, num_classes=3, dim=16, depth=2, num_heads=2).eval()
    ids = torch.randint(11, (2, 9))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    labels = torch.tensor([0, 2])
    a, b = prior(ids, labels), prior(changed, labels)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)  # position i sees ids before i only
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_cached_sampling_equals_recomputing_the_sequence(cfg_scale: float) -> None:
    torch.manual_seed(1)
    prior = ARPrior(vocab_size=13, seq_len=7, num_classes=4, dim=16, depth=2, num_heads=2).eval()
    labels = torch.tensor([0, 3, 1])
    sampled = prior.sample(3, labels, top_k=1, cfg_scale=cfg_scale)  # greedy: deterministic
    ids = torch.zeros(3, 0, dtype=torch.long)
    null = torch.full_like(labels, prior.null_class)
    with torch.no_grad():
        for _ in range(7):
            padded = torch.cat([ids, torch.zeros(3, 1, dtype=torch.long)], 1)  # the last id is never read
            cond = prior(padded, labels)[:, -1]
            logits = prior(padded, null)[:, -1] + cfg_scale * (cond - prior(padded, null)[:, -1])
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(sampled, ids)


def fake_token_folder(folder: Path, ids: torch.Tensor, labels: torch.Tensor, vocab: int) -> Path:
    """A token folder holding ``ids`` (n, L) and labels, as vqkit.tokenize writes one."""
    digest = "0" * 16
    write_shard(folder, 0, {"ids": ids.to(torch.int16), "index": torch.arange(len(ids)), "label": labels}, digest)
    tokenizer = {"path": str(folder / "none"), "digest": "x", "modality": "image", "codebook_size": vocab,
                 "token_dim": 4, "soft": False, "variable_tokens": False, "num_stages": None}
    write_manifest(folder, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "plan": digest, "complete": True,
        "num_items": len(ids), "num_shards": 1, "shard_size": len(ids), "key": "ids", "dtype": "I16",
        "item_shape": list(ids.shape[1:]), "views": 1, "split": "train", "augment": "none", "tokenizer": tokenizer,
        "data": {}, "shards": [{"file": "shard-00000.safetensors", "count": len(ids)}],
    })
    return folder


def test_the_prior_learns_one_pattern_per_class(tmp_path: Path) -> None:
    patterns = torch.tensor([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [7, 7, 0, 0, 7, 7]])
    labels = torch.arange(96) % 3
    folder = fake_token_folder(tmp_path / "tok", patterns[labels], labels, vocab=8)
    cfg = compose_train_config([f"tokens={folder}", *TINY_PRIOR, "trainer.max_steps=150", "data.batch_size=16",
                                "sample.num=6", "sample.top_k=1", "module.optimizer.lr=3e-3", "logger=csv"],
                               tmp_path / "run", config_name="train_prior")
    result = train_prior(cfg)
    assert result["metrics"]["val/bits_per_token"] < 0.5  # uniform over 8 ids: 3 bits
    sampled = json.loads((tmp_path / "run" / "samples" / "ids.json").read_text())
    assert sampled["labels"] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(torch.tensor(sampled["ids"]), patterns[torch.tensor(sampled["labels"])])
    prior, config = load_prior(result["prior"])
    assert config["kind"] == "ar" and prior.num_classes == 3 and prior.seq_len == 6


def test_train_prior_on_tokenized_photos_decodes_samples_and_resumes(tmp_path: Path) -> None:
    art = artifact(tmp_path / "art")
    assert tokenize([f"tokenizer={art}", f"out={tmp_path / 'tok'}", *PHOTOS]) == 0
    run = tmp_path / "run"
    base = [f"tokens={tmp_path / 'tok'}", *TINY_PRIOR, "data.batch_size=8", "sample.num=4"]
    result = train_prior(compose_train_config([*base, "trainer.max_steps=6"], run, config_name="train_prior"))
    assert (run / "samples" / "grid.png").is_file() and len(list((run / "samples").glob("0*.png"))) == 4
    metrics = result["metrics"]
    assert metrics["sample/prior_items_per_s"] > 0 and metrics["sample/decode_items_per_s"] > 0
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    resumed = train_prior(compose_train_config([*base, "trainer.max_steps=10", f"resume={run}"], run,
                                               config_name="train_prior"))
    assert first == 6 and torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert resumed["prior"] == str(run / "prior")


def test_flow_prior_fits_two_clusters_and_samples_decode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    prior = FlowPrior(token_dim=2, seq_len=3, num_classes=2, dim=32, depth=2, num_heads=2)
    centres = torch.tensor([[2.0, -1.0], [-3.0, 4.0]])
    labels = torch.arange(256) % 2
    data = centres[labels][:, None].expand(256, 3, 2) + 0.05 * torch.randn(256, 3, 2)
    prior.set_normalization(data.reshape(-1, 2).mean(0), data.reshape(-1, 2).std(0))
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(300):
        optimizer.zero_grad()
        prior.loss(data, labels).backward()
        optimizer.step()
    drawn = prior.eval().sample(8, torch.tensor([0, 1] * 4), steps=20, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (8, 3, 2)
    assert (drawn - centres[torch.tensor([0, 1] * 4)][:, None]).abs().mean() < 0.5  # each class at its centre

    soft = artifact(tmp_path / "soft", {**TINY_MODEL, "quantizer": SOFTVQ})
    assert tokenize([f"tokenizer={soft}", f"out={tmp_path / 'soft_tok'}", *PHOTOS]) == 0
    run = tmp_path / "run"
    result = train_prior(compose_train_config(
        [f"tokens={tmp_path / 'soft_tok'}", "prior=flow", *TINY_PRIOR, "trainer.max_steps=4", "data.batch_size=8",
         "sample.num=3", "sample.flow_steps=4"], run, config_name="train_prior"))
    assert (run / "samples" / "grid.png").is_file() and result["metrics"]["sample/decode_items_per_s"] > 0
    loaded, config = load_prior(result["prior"])
    assert config["kind"] == "flow" and loaded.seq_len == 16 and loaded.token_dim == 4
    assert not torch.equal(loaded.std, torch.ones(4))  # the training tokens' statistics travel with the weights


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    soft = artifact(tmp_path / "soft", {**TINY_MODEL, "quantizer": SOFTVQ})
    assert tokenize([f"tokenizer={soft}", f"out={tmp_path / 'soft_tok'}", *PHOTOS]) == 0
    with pytest.raises(ValueError, match="continuous tokens of a soft quantizer; prior=ar models ids: use prior=flow"):
        train_prior(compose_train_config([f"tokens={tmp_path / 'soft_tok'}", *TINY_PRIOR], tmp_path / "r1",
                                         config_name="train_prior"))
    art, other = artifact(tmp_path / "art"), artifact(tmp_path / "other", {**TINY_MODEL, "normalization": {}})
    assert tokenize([f"tokenizer={art}", f"out={tmp_path / 'tok'}", *PHOTOS]) == 0
    with pytest.raises(ValueError, match="is not the one that made"):
        train_prior(compose_train_config([f"tokens={tmp_path / 'tok'}", *TINY_PRIOR, "trainer.max_steps=1",
                                          "sample.num=1", f"tokenizer={other}"], tmp_path / "r2",
                                         config_name="train_prior"))
    with pytest.raises(FileNotFoundError, match="has no manifest.json|does not exist"):
        train_prior(compose_train_config([f"tokens={tmp_path / 'nothing'}"], tmp_path / "r3",
                                         config_name="train_prior"))
    with pytest.raises(FileNotFoundError, match="prior.json not found"):
        load_prior(tmp_path)


def test_generation_fid_is_near_zero_for_the_same_images_and_large_for_noise() -> None:
    torch.manual_seed(0)
    images = torch.rand(1, 3, 1, 1).expand(24, 3, 16, 16) * 0.5 + 0.4 * torch.rand(24, 3, 16, 16)
    same = generation_fid(images, images)
    noise = generation_fid(torch.rand(24, 3, 16, 16), images)
    assert abs(same) < 1.0 and noise > 50 * max(same, 1e-3)
