"""Smoke test of benchmarks/quantizer_speed.py on a tiny grid (vqkit implementations only)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from tests.benchmarks import load_benchmark


def test_tiny_grid_writes_finite_positive_timings(tmp_path: Path) -> None:
    bench = load_benchmark("quantizer_speed")
    impls = [bench.SEARCH, bench.VQKIT_VQ, bench.VQKIT_EMA]
    argv = ["--ks", "64", "--dims", "8", "--n", "256", "--repeats", "1", "--gemm-size", "256"]
    bench.main([*argv, "--impls", *impls, "--out-dir", str(tmp_path)])

    with (tmp_path / "quantizer_speed.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == bench.COLUMNS
        rows = list(reader)
    assert [r["impl"] for r in rows] == impls
    for row in rows:
        assert (row["K"], row["N"], row["D"], row["status"]) == ("64", "256", "8", "ok"), row
        timing = "search_s" if row["impl"] == bench.SEARCH else "fwd_bwd_s"
        for column in (timing, "peak_rss_mib"):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, row)
    search = rows[0]
    for column in ("search_gflops", "pct_of_peak_matmul", "pct_of_same_shape_matmul"):
        assert float(search[column]) > 0, (column, search)
    assert "vqkit.vq" in (tmp_path / "quantizer_speed.md").read_text()


def test_fsq_lfq_rotation_cells_run_or_say_the_backend_is_missing(tmp_path: Path) -> None:
    import importlib.util

    bench = load_benchmark("quantizer_speed")
    # (vqp.vq_rotation is vqp.vq's code path with one flag: left out to keep the test short)
    impls = [bench.VQKIT_ROTATION, bench.VQKIT_FSQ, bench.REF_FSQ, bench.VQKIT_LFQ, bench.REF_LFQ]
    argv = ["--ks", "64", "--dims", "8", "--n", "256", "--repeats", "1", "--gemm-size", "256", "--fsq-levels", "4,4",
            "--lfq-ks", "16"]
    rows = bench.main([*argv, "--impls", *impls, "--out-dir", str(tmp_path)])
    assert [(r["impl"], r["K"], r["levels"]) for r in rows] == [
        (bench.VQKIT_ROTATION, 64, None), (bench.VQKIT_FSQ, 16, "4x4"),
        (bench.REF_FSQ, 16, "4x4"), (bench.VQKIT_LFQ, 16, None), (bench.REF_LFQ, 16, None)]
    has_reference = importlib.util.find_spec("vector_quantize_pytorch") is not None
    for row in rows:
        if row["impl"] in bench.REFERENCE_IMPLS:
            expected = "ok" if has_reference else f"skipped ({bench.REFERENCE_PACKAGE} not installed)"
        else:
            expected = bench.MISSING if bench.vqkit_missing(row["impl"]) else "ok"
        assert row["status"] == expected, row
        if expected == "ok":
            assert math.isfinite(row["fwd_bwd_s"]) and row["fwd_bwd_s"] > 0 and row["peak_rss_mib"] > 0, row
    assert "| vqp.fsq | 16 | 8 | 4x4 |" in (tmp_path / "quantizer_speed.md").read_text()
