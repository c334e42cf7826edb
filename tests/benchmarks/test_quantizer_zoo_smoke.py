"""Smoke tests of benchmarks/quantizer_zoo.py: one tiny vq cell through the real subprocess, train and eval path;
missing backends and options are recorded, not run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark

# The tiny model and data of tests/conftest.py's FAST_OVERRIDES (the codebook size comes from --sizes).
TINY = ["data.image_size=32", "data.batch_size=4", "data.train_samples=16", "data.val_samples=8",
        "model.encoder.channels=8", "model.encoder.latent_dim=8", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_vq_cell_trains_evaluates_and_is_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("quantizer_zoo")
    argv = ["--backends", "vq", "--sizes", "16", "--steps", "4", "--threads", "1", "--out-dir", str(tmp_path),
            "--runs-dir", str(tmp_path / "runs"), "--override", *TINY]
    bench.main(argv)
    rows = _rows(tmp_path / "quantizer_zoo.csv")
    assert [(r["backend"], r["K"], r["status"], r["steps"]) for r in rows] == [("vq", "16", "ok", "4")]
    row = rows[0]
    for column in ("psnr", "ssim", "lpips", "perplexity", "step_s", "train_s", "total_s", "peak_rss_mib"):
        assert math.isfinite(float(row[column])) and float(row[column]) > 0, (column, row)
    assert 0 < float(row["usage"]) <= 1 and 1 <= float(row["perplexity"]) <= 16
    assert float(row["max_usage"]) == 1.0  # 8 test crops x 144 tokens >> 16 codes
    assert float(row["dead"]) == round(16 * (1 - float(row["usage"])))
    assert float(row["step_s"]) < float(row["train_s"]) < float(row["total_s"])
    assert math.isnan(float(row["rfid"] or "nan"))  # rFID off by default
    run = tmp_path / "runs" / "vq_16"
    assert Path(row["run_dir"]) == run and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(json.loads((run / "step_times.json").read_text())["step_s"]) == 4
    assert "| vq | 16 | ok |" in (tmp_path / "quantizer_zoo.md").read_text()
    assert (tmp_path / "quantizer_zoo.png").stat().st_size > 1000

    # a re-run reads the finished cell back instead of training it again
    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(bench, "run_capped", no_run)
    again = bench.main(argv)
    assert again[0]["cached"] and again[0]["psnr"] == pytest.approx(float(row["psnr"]), rel=1e-5)
    # other settings (here: steps) make the stored result stale: the cell runs again
    with pytest.raises(AssertionError, match="run again"):
        bench.main([*argv[:4], "--steps", "5", *argv[6:]])


def test_missing_backends_and_options_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("quantizer_zoo")
    monkeypatch.setitem(bench.SETTINGS, "no_such_backend", bench.Backend("no_such_backend"))
    monkeypatch.setitem(bench.SETTINGS, "vq_no_such_option", bench.Backend("vq", ("quantizer.no_such_option=1",)))
    monkeypatch.setattr(bench, "run_capped", lambda *a, **k: pytest.fail("a missing backend was run"))
    bench.main(["--backends", "no_such_backend", "vq_no_such_option", "softvq", "--sizes", "262144", "--steps", "1",
                "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    rows = {r["backend"]: r for r in _rows(tmp_path / "quantizer_zoo.csv")}
    assert rows["no_such_backend"]["status"] == "missing-backend"
    assert "no conf/quantizer/no_such_backend.yaml" in rows["no_such_backend"]["note"]
    assert rows["vq_no_such_option"]["status"] == "missing-backend"
    assert "no option quantizer.no_such_option" in rows["vq_no_such_option"]["note"]
    assert rows["softvq"]["status"].startswith("not run")  # softvq's row skips K = 262,144, with the reason
    md = (tmp_path / "quantizer_zoo.md").read_text()
    assert md.count("missing-backend") == 2 and (tmp_path / "quantizer_zoo.png").is_file()


def test_fsq_levels_give_the_table_sizes() -> None:
    bench = load_benchmark("quantizer_zoo")
    sizes = {s: bench.make_cell("fsq", s, Path("/tmp"), ["fsq"]).codebook_size for s in bench.SIZES}
    assert sizes == {1024: 1000, 16384: 15360, 262144: 262144}


def test_larger_codebooks_are_tested_on_more_held_out_crops() -> None:
    bench = load_benchmark("quantizer_zoo")
    args = bench._parse_args([])
    assert args.test_tokens_per_code == 16 and args.max_test_crops == 8192
    assert bench.test_crops(1024, args) is None  # 128 crops x 144 tokens = 18 per code: make train's split
    assert bench.test_crops(16384, args) == 1821  # ceil(16 x 16,384 / 144)
    assert bench.test_crops(262144, args) == 8192  # capped


def test_finished_only_tabulates_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("quantizer_zoo")

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("--finished-only trained a cell")

    monkeypatch.setattr(bench, "run_capped", no_run)
    rows = bench.main(["--backends", "vq", "fsq", "--sizes", "1024", "--finished-only", "--out-dir", str(tmp_path),
                       "--runs-dir", str(tmp_path / "runs")])
    assert [r["status"] for r in rows] == ["not run yet", "not run yet"]
    assert (tmp_path / "quantizer_zoo.md").read_text().count("not run yet") == 2
