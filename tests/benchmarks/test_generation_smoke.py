"""Smoke test of benchmarks/generation.py: one tiny cell through the real train, export, eval, tokenize and
train_prior commands; the table holds rFID, gFID, the prior's loss and throughput; a re-run trains nothing."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tests.benchmarks import load_benchmark


def test_a_tiny_cell_goes_from_tokenizer_to_gfid(tmp_path: Path) -> None:
    bench = load_benchmark("generation")
    argv = ["--cells", "1d_vq_32", "--steps", "2", "--prior-steps", "3", "--prior-dim", "16", "--prior-depth", "1",
            "--prior-heads", "2", "--samples", "4", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
            "--out-dir", str(tmp_path), "--override", "data.train_samples=16", "data.val_samples=8",
            "model.encoder.size=null", "model.encoder.width=16", "model.encoder.depth=1", "model.encoder.num_heads=2"]
    bench.main(argv)
    with (tmp_path / "generation.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (int(row["tokens"]), int(row["codes"]), float(row["gfid_real"])) == (32, 1024, 8.0), row
    for key in ("psnr", "rfid", "gfid", "prior_val_bits_per_token", "prior_items_per_s", "decode_items_per_s"):
        assert math.isfinite(float(row[key])) and float(row[key]) > 0, key
    assert row["steps_to_fixed_loss"] != ""  # the only cell reaches its own final loss
    assert (tmp_path / "generation_1d_vq_32.png").stat().st_size > 100
    stamp = (tmp_path / "runs" / "1d_vq_32" / "prior" / "metrics.json").stat().st_mtime_ns
    bench.main(argv)  # every step's output exists: nothing runs again
    assert (tmp_path / "runs" / "1d_vq_32" / "prior" / "metrics.json").stat().st_mtime_ns == stamp
