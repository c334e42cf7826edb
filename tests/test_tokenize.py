"""``python -m vqkit.tokenize``: token shards equal the artifact's own encode, resume, refusals, 2 DDP ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.artifacts import SOFTVQ, TINY_1D_MODEL, TINY_AUDIO_MODEL, TINY_MODEL
from tests.conftest import FAST_AUDIO_DATA
from tests.gloo_ranks import free_port
from vqkit.data.token_shards import MANIFEST, TokenShards, load_tokens, read_manifest, shard_name
from vqkit.models import TokenizerModel
from vqkit.tokenize import main
from vqkit.tokenizers import load_tokenizer

PHOTOS = ["data.image_size=8", "data.train_samples=50", "data.val_samples=6", "data.batch_size=5", "progress=false"]
GQ_1D = {
    **TINY_1D_MODEL,
    "quantizer": {"_target_": "vqkit.quantizers.GatedQuantizer", "dim": 4, "codebook_size": 16, "max_token_len": 3,
                  "width": 8, "depth": 1, "num_heads": 2},
}


def artifact(folder: Path, model: dict = TINY_MODEL) -> Path:
    torch.manual_seed(0)
    TokenizerModel.from_config(model).save_pretrained(folder)
    return folder


def photos_train(image_size: int = 8, count: int = 50) -> torch.Tensor:
    from vqkit.data import EmbeddedPhotosDataModule

    data = EmbeddedPhotosDataModule(image_size=image_size, train_samples=count)
    dataset = data.tokenize_dataset("train")
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def test_shards_hold_what_the_artifact_encodes(tmp_path: Path) -> None:
    art = artifact(tmp_path / "art")
    assert main([f"tokenizer={art}", f"out={tmp_path / 'tok'}", "shard_size=16", *PHOTOS]) == 0
    loaded = load_tokens(tmp_path / "tok")
    manifest = loaded["manifest"]
    assert manifest["num_items"] == 50 and manifest["num_shards"] == 4 and manifest["complete"]
    assert [s["count"] for s in manifest["shards"]] == [16, 16, 16, 2]
    assert manifest["dtype"] == "I16" and manifest["item_shape"] == [4, 4] and manifest["key"] == "ids"
    expected = load_tokenizer(art).encode(photos_train())
    assert torch.equal(loaded["ids"].long(), expected)
    assert torch.equal(loaded["index"], torch.arange(50))
    dataset = TokenShards(tmp_path / "tok")
    assert len(dataset) == 50 and torch.equal(dataset[7]["ids"].long(), expected[7])
    # the same command again: nothing to do, nothing rewritten
    stamp = (tmp_path / "tok" / shard_name(0)).stat().st_mtime_ns
    assert main([f"tokenizer={art}", f"out={tmp_path / 'tok'}", "shard_size=16", *PHOTOS]) == 0
    assert (tmp_path / "tok" / shard_name(0)).stat().st_mtime_ns == stamp


def test_a_killed_run_continues_at_the_unfinished_shards(tmp_path: Path, caplog) -> None:
    art, out = artifact(tmp_path / "art"), tmp_path / "tok"
    args = [f"tokenizer={art}", f"out={out}", "shard_size=16", *PHOTOS]
    assert main(args) == 0
    before = load_tokens(out)["ids"]
    # what a kill leaves: no manifest, a shard never written, a temporary file, a shard cut short by a disk error
    (out / MANIFEST).unlink()
    (out / shard_name(1)).unlink()
    (out / f".{shard_name(2)}.abc.tmp").write_bytes(b"half a shard")
    (out / shard_name(3)).write_bytes((out / shard_name(3)).read_bytes()[:40])
    with pytest.raises(FileNotFoundError, match="unfinished run: run the same"):
        read_manifest(out)
    kept = {s: (out / shard_name(s)).stat().st_mtime_ns for s in (0, 2)}
    assert main(args) == 0
    assert {s: (out / shard_name(s)).stat().st_mtime_ns for s in (0, 2)} == kept  # finished shards untouched
    assert torch.equal(load_tokens(out)["ids"], before)
    assert "unreadable" in caplog.text


def test_a_folder_of_other_settings_is_refused(tmp_path: Path, capsys) -> None:
    art, out = artifact(tmp_path / "art"), tmp_path / "tok"
    assert main([f"tokenizer={art}", f"out={out}", "shard_size=16", *PHOTOS]) == 0
    (out / MANIFEST).unlink()
    assert main([f"tokenizer={art}", f"out={out}", "shard_size=16", *PHOTOS, "data.seed=3"]) == 1
    assert "written by other settings" in capsys.readouterr().err


def test_bad_input_names_the_problem(tmp_path: Path, capsys) -> None:
    art = artifact(tmp_path / "art")
    assert main([f"tokenizer={tmp_path / 'nowhere'}", f"out={tmp_path / 'tok'}", *PHOTOS]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert main([f"tokenizer={art}", f"out={tmp_path / 'tok'}", "split=dev", *PHOTOS]) == 1
    assert "split must be train, val or test" in capsys.readouterr().err
    assert main([f"tokenizer={art}", f"out={tmp_path / 'tok'}", "augment=mirror", *PHOTOS]) == 1
    assert "augment must be one of" in capsys.readouterr().err
    audio = artifact(tmp_path / "audio", TINY_AUDIO_MODEL)
    assert main([f"tokenizer={audio}", f"out={tmp_path / 'tok'}", *PHOTOS]) == 1
    assert "holds image data but" in capsys.readouterr().err
    assert main([f"out={tmp_path / 'tok'}"]) == 2
    assert "tokenizer must be given" in capsys.readouterr().err


def test_soft_tokens_views_and_variable_lengths(tmp_path: Path) -> None:
    soft = artifact(tmp_path / "soft", {**TINY_MODEL, "quantizer": SOFTVQ})
    assert main([f"tokenizer={soft}", f"out={tmp_path / 'soft_tok'}", "token_dtype=float16", "split=val",
                 *PHOTOS]) == 0
    loaded = load_tokens(tmp_path / "soft_tok")
    assert loaded["tokens"].dtype == torch.float16 and loaded["tokens"].shape == (6, 4, 4, 4)

    art = artifact(tmp_path / "art")
    assert main([f"tokenizer={art}", f"out={tmp_path / 'ten'}", "augment=tencrop", "data.train_samples=6",
                 *PHOTOS[:1], *PHOTOS[2:]]) == 0
    ten = load_tokens(tmp_path / "ten")
    assert ten["ids"].shape == (6, 10, 4, 4) and ten["manifest"]["views"] == 10
    from vqkit.data.transforms import tokenize_views

    views = tokenize_views(photos_train(count=6), "tencrop")
    assert torch.equal(ten["ids"].long(), load_tokenizer(art).encode(views.flatten(0, 1)).reshape(6, 10, 4, 4))
    assert torch.equal(views[:, 5], views[:, 1].flip(-1))  # the mirror's top-left crop is the top-right's mirror

    gq = artifact(tmp_path / "gq", GQ_1D)
    assert main([f"tokenizer={gq}", f"out={tmp_path / 'gq_tok'}", "shard_size=8", *PHOTOS]) == 0
    variable = load_tokens(tmp_path / "gq_tok")
    assert variable["manifest"]["tokenizer"]["variable_tokens"]
    assert torch.equal(variable["num_tokens"].long(), (variable["ids"] >= 0).sum(-1))
    assert int(variable["num_tokens"].min()) >= 2  # at most 3 positions per token over 6 positions


def test_audio_and_labelled_image_folders_keep_paths(tmp_path: Path) -> None:
    audio = artifact(tmp_path / "audio", TINY_AUDIO_MODEL)
    assert main([f"tokenizer={audio}", f"out={tmp_path / 'speech'}", "data=speech", "split=test", "progress=false",
                 *[o for o in FAST_AUDIO_DATA if "max_eval" not in o]]) == 0
    speech = load_tokens(tmp_path / "speech")
    n = speech["manifest"]["num_items"]
    assert speech["ids"].shape == (n, 100, 2) and len(speech["paths"]) == n and "#" in speech["paths"][0]
    assert speech["manifest"]["tokenizer"]["frame_rate"] == 1000

    root = tmp_path / "images"
    for split in ("train", "val"):
        for label, name in enumerate(["cat", "dog"]):
            (root / split / name).mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (12, 10), (40 * k, 100 * label, 90)).save(root / split / name / f"{k}.png")
    art = artifact(tmp_path / "art")
    assert main([f"tokenizer={art}", f"out={tmp_path / 'folder'}", "data=imagenet", f"data.root={root}",
                 "data.image_size=8", "data.num_workers=0", "progress=false"]) == 0
    folder = load_tokens(tmp_path / "folder")
    assert folder["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert folder["paths"] == [f"{c}/{k}.png" for c in ("cat", "dog") for k in range(3)]


def test_two_processes_write_every_shard_once(tmp_path: Path) -> None:
    art = artifact(tmp_path / "art")
    assert main([f"tokenizer={art}", f"out={tmp_path / 'one'}", "shard_size=7", *PHOTOS]) == 0
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
        "-m", "vqkit.tokenize", f"tokenizer={art}", f"out={tmp_path / 'two'}", "shard_size=7", *PHOTOS,
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for rank in (0, 1):  # shards 0, 2, 4, 6 on rank 0 and 1, 3, 5, 7 on rank 1
        assert f"rank {rank} of 2: 4 shards to write" in proc.stderr, proc.stderr[-3000:]
    one, two = load_tokens(tmp_path / "one"), load_tokens(tmp_path / "two")  # load_tokens checks 0..n-1 once each
    assert torch.equal(one["ids"], two["ids"]) and two["manifest"]["num_shards"] == 8
    assert json.loads((tmp_path / "two" / MANIFEST).read_text())["plan"] == one["manifest"]["plan"]
