"""`python -m vqkit.eval` rebuilds a run from its checkpoint and reports every metric over the split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vqkit.eval import evaluate, main
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.train import train


def trained_checkpoint(out: Path, *overrides: str, steps: int = 4) -> str:
    from tests.conftest import compose_config, fast_overrides

    overrides = (*overrides, f"trainer.max_steps={steps}", "test=false")
    cfg = compose_config(fast_overrides(list(overrides)) + list(overrides), out)
    return train(cfg)["checkpoint"]


def split_size(ckpt_path: str, split: str) -> int:
    """Samples in a split of the checkpoint's stored data config."""
    datamodule = instantiate(OmegaConf.create(load_checkpoint(ckpt_path)["vqkit_config"]["data"]))
    datamodule.setup("fit" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return len(loader.dataset)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return trained_checkpoint(tmp_path_factory.mktemp("run"), "quantizer=softvq")


@pytest.fixture(scope="module")
def audio_checkpoint(tmp_path_factory) -> str:
    return trained_checkpoint(tmp_path_factory.mktemp("audio_run"), "model=audio_conv", "data=speech", "quantizer=vq",
                              "callbacks.audio_samples=null", steps=1)


def test_eval_reports_all_metrics_and_writes_files(checkpoint: str, tmp_path: Path) -> None:
    report = evaluate(checkpoint, out=str(tmp_path), split="val", save_reconstructions=3, max_batches=1)
    m = report["metrics"]
    for key in ("psnr", "ssim", "lpips", "rfid", "codebook/usage", "codebook/perplexity", "codebook/dead", "l1", "l2",
                "loss"):
        assert key in m and math.isfinite(m[key]), key
    assert not any(k.startswith(("val/", "test/")) for k in m), sorted(m)
    assert m["lpips"] > 0 and m["rfid"] > 0 and 0 < m["codebook/usage"] <= 1
    assert m["num_samples"] == 4  # one batch of data.batch_size=4
    assert report["split"] == "val" and report["checkpoint"] == checkpoint
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"] == m
    assert (tmp_path / "eval_metrics.csv").read_text().startswith("metric,value")
    assert len(list((tmp_path / "reconstructions").glob("*.png"))) == 3 and (tmp_path / "pairs.png").is_file()
    stats = json.loads((tmp_path / "latent_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 8 and stats["global_std"] > 0 and stats["tokens"] > 0


def test_eval_data_overrides_and_usage_errors(checkpoint: str, tmp_path: Path) -> None:
    report = evaluate(checkpoint, {"val_samples": 4}, out=str(tmp_path), lpips=False, fid=False, latent_stats=False)
    # the photos' test split holds data.val_samples crops: 8 in the stored config, 4 with the override
    assert split_size(checkpoint, "test") == 8
    assert report["split"] == "test" and report["metrics"]["num_samples"] == 4
    assert "lpips" not in report["metrics"] and "rfid" not in report["metrics"]
    assert not (tmp_path / "latent_stats.json").exists()
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['no_such'\]"):
        evaluate(checkpoint, no_such=1)
    with pytest.raises(ValueError, match="split must be 'test' or 'val'"):
        evaluate(checkpoint, split="train")
    with pytest.raises(FileNotFoundError):
        evaluate(str(tmp_path / "missing.ckpt"))


def test_cli_merges_data_options_into_the_stored_config(checkpoint: str, tmp_path: Path, capsys) -> None:
    main([f"ckpt_path={checkpoint}", "split=val", "data.val_samples=4", "data.batch_size=2", f"out={tmp_path}",
          "lpips=false", "fid=false"])
    assert "vqkit.eval: " in capsys.readouterr().out
    report = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert report["split"] == "val" and report["metrics"]["num_samples"] == 4
    with pytest.raises(SystemExit, match="usage"):
        main([])
    with pytest.raises(Exception, match="no_such"):  # Hydra: Could not override 'no_such'
        main([f"ckpt_path={checkpoint}", "no_such=1"])


def test_eval_of_an_audio_tokenizer(audio_checkpoint: str, tmp_path: Path) -> None:
    report = evaluate(audio_checkpoint, out=str(tmp_path), split="val", save_reconstructions=2)
    m = report["metrics"]
    for key in ("si_snr", "mel_distance", "mel", "loss", "codebook/usage", "codebook/perplexity", "codebook/dead"):
        assert key in m and math.isfinite(m[key]), key
    assert 0 < m["codebook/usage"] <= 1 and m["mel_distance"] > 0
    assert m["num_samples"] == split_size(audio_checkpoint, "val")
    assert "lpips" not in m and "rfid" not in m and "psnr" not in m  # image metrics only for image models
    assert not (tmp_path / "reconstructions").exists()  # reconstructions are saved as PNG for images only
    stats = json.loads((tmp_path / "latent_stats.json").read_text())
    assert len(stats["mean"]) == 8 and stats["tokens"] > 0


def test_eval_of_a_text_tokenizer(tmp_path: Path) -> None:
    """Text models evaluate through the same trainer.test: bytes per token, exact tokens, codebook usage."""
    ckpt = trained_checkpoint(tmp_path / "run", "data=shakespeare", "model=text_gq", steps=2)
    report = evaluate(ckpt, {"max_eval_rows": 64}, out=str(tmp_path / "eval"))
    m = report["metrics"]
    for key in ("bytes_per_token", "rec_token_acc", "rec_byte_acc", "rec", "mask", "compression",
                "codebook/usage", "loss"):
        assert key in m and math.isfinite(m[key]), key
    assert 1.0 <= m["bytes_per_token"] <= 8.0 and 0.0 <= m["rec_token_acc"] <= 1.0
    assert "psnr" not in m and "lpips" not in m
    assert json.loads((tmp_path / "eval" / "eval_metrics.json").read_text())["metrics"] == m
