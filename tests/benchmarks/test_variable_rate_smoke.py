"""Smoke test of benchmarks/variable_rate.py: a tiny fixed-rate and a tiny gq cell through the real subprocess,
train, export and test path; the realised rate, the tables and both plots are written; a re-run trains nothing."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark
from tests.conftest import FAST_AUDIO_MODEL

# hop 8 at 8 kHz: 1,000 frames/s
TINY = [*FAST_AUDIO_MODEL, "data.segment_seconds=0.1", "data.batch_size=4", "data.train_samples=8",
        "trainer.accelerator=cpu"]


def test_tiny_cells_report_realised_rate_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("variable_rate")
    argv = ["--cells", "fixed_16", "gq_0.5", "--steps", "2", "--threads", "1", "--segment", "0.5",
            "--max-segments", "1", "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
            "--override", *TINY]
    bench.main(argv)
    with (tmp_path / "variable_rate.csv").open(newline="") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    fixed, gq = rows["fixed_16"], rows["gq_0.5"]
    assert float(fixed["kbps"]) == pytest.approx(float(fixed["target_kbps"])) == pytest.approx(4.0)  # 4 bits x 1,000/s
    assert float(fixed["rate_error"]) == pytest.approx(0.0)
    # gq: 13 bits (1,024 codes, tokens of up to 8 frames) per token at the tokens it really emitted
    tokens_per_s = float(gq["tokens_per_s"])
    assert float(gq["kbps"]) == pytest.approx(tokens_per_s * 13 / 1000, rel=1e-4)
    assert float(gq["kbps_min"]) <= float(gq["kbps"]) <= float(gq["kbps_max"])
    assert float(gq["target_tokens_per_s"]) == pytest.approx(0.5 * 1000)
    for row in rows.values():
        assert math.isfinite(float(row["si_snr_db"])) and float(row["mel_distance"]) > 0 and int(row["clips"]) > 0
    assert (tmp_path / "variable_rate.png").stat().st_size > 1000
    assert (tmp_path / "variable_rate_boundaries.png").stat().st_size > 1000
    assert "| gq_0.5 | gq | ok |" in (tmp_path / "variable_rate.md").read_text()

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "run_capped", no_run)
    assert all(r["cached"] for r in bench.main(argv))
