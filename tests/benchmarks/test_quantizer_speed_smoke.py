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
