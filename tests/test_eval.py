"""`python -m vqkit.eval` rebuilds a run from its checkpoint and reports every metric over the split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vqkit.eval import evaluate, parse_args
from vqkit.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from tests.conftest import FAST_OVERRIDES, compose_config

    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(FAST_OVERRIDES + ["quantizer=softvq", "trainer.max_steps=4", "test=false"], out)
    return train(cfg)["checkpoint"]


def test_eval_reports_all_metrics_and_writes_files(checkpoint: str, tmp_path: Path) -> None:
    report = evaluate(checkpoint, out=str(tmp_path), split="val", save_reconstructions=3, max_batches=1)
    m = report["metrics"]
    for key in ("psnr", "ssim", "lpips", "rfid", "codebook/usage", "codebook/perplexity", "codebook/dead"):
        assert key in m and math.isfinite(m[key]), key
    assert m["lpips"] > 0 and m["rfid"] > 0 and 0 < m["codebook/usage"] <= 1
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["metrics"] == m
    assert (tmp_path / "eval_metrics.csv").read_text().startswith("metric,value")
    assert len(list((tmp_path / "reconstructions").glob("*.png"))) == 3 and (tmp_path / "pairs.png").is_file()
    stats = json.loads((tmp_path / "latent_stats.json").read_text())
    assert len(stats["mean"]) == len(stats["std"]) == 8 and stats["global_std"] > 0 and stats["tokens"] > 0


def test_eval_data_overrides_and_usage_errors(checkpoint: str, tmp_path: Path) -> None:
    report = evaluate(checkpoint, {"val_samples": 4}, out=str(tmp_path), lpips=False, fid=False, latent_stats=False)
    assert report["metrics"]["num_images"] == 4
    with pytest.raises(SystemExit, match="unknown option"):
        parse_args([f"ckpt_path={checkpoint}", "no_such=1"])
    with pytest.raises(SystemExit, match="usage"):
        parse_args([])
    with pytest.raises(FileNotFoundError):
        evaluate(str(tmp_path / "missing.ckpt"))
