"""Smoke test of benchmarks/codebook_utilization.py: tiny features, tiny K, a few steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark


def test_cells_measure_finite_metrics_and_write_outputs(tmp_path: Path) -> None:
    bench = load_benchmark("codebook_utilization")
    features = tmp_path / "features.pt"
    info = bench._child_features({"threads": 1, "train": 512, "heldout": 256, "dim": 4, "seed": 0,
                                  "path": str(features)})
    assert info == {"train": 512, "heldout": 256, "raw_dim": 40}
    cell = {"threads": 1, "k": 16, "features": str(features), "steps": 3, "batch": 32, "lr": 1e-3,
            "eval_chunk": 100, "seed": 0}
    rows = []
    for backend in ("vq_revival", "vqgan_lc", "vqbridge", "vqbridge_kmeans", "softvq"):
        result = bench._child_cell({**cell, "backend": backend})
        assert 0 < result["usage"] <= 1 and result["dead_codes"] == round(16 * (1 - result["usage"]))
        assert result["ids_match"] == 1.0, backend  # the k-d tree finds codes as near as the quantizer's search
        assert 1 <= result["perplexity"] <= 16
        for key in ("mse", "step_s", "peak_rss_mib"):
            assert math.isfinite(result[key]) and result[key] > 0, (backend, key)
        rows.append({"backend": backend, "K": 16, "status": "ok", "usage_bound_random": 1.0, **result})
    rows.append({"backend": "vq", "K": 16, "status": "out of memory (> 1 GiB cap)", "usage_bound_random": 1.0})
    assert "out of memory" in bench._markdown_table(rows)
    # vqgan_lc and vqbridge_kmeans start from one shared k-means file, built once and reused
    assert len(list(tmp_path.glob("features_kmeans_K16_s0.safetensors"))) == 1
    bench.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_main_runs_a_cell_in_a_capped_subprocess(tmp_path: Path) -> None:
    bench = load_benchmark("codebook_utilization")
    features = tmp_path / "features.pt"
    bench._child_features({"threads": 1, "train": 256, "heldout": 256, "dim": 4, "seed": 0, "path": str(features)})
    bench.main(["--ks", "16", "--backends", "vq", "--steps", "3", "--batch", "32", "--train", "256", "--heldout",
                "256", "--dim", "4", "--threads", "1", "--features", str(features), "--out-dir", str(tmp_path)])
    with (tmp_path / "codebook_utilization.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backend"], r["K"], r["status"]) for r in rows] == [("vq", "16", "ok")]
    assert 0 < float(rows[0]["usage"]) <= 1
    assert (tmp_path / "codebook_utilization.md").exists() and (tmp_path / "codebook_utilization.png").exists()


def test_merge_combines_runs_in_k_order(tmp_path: Path) -> None:
    bench = load_benchmark("codebook_utilization")
    features = tmp_path / "features.pt"
    bench._child_features({"threads": 1, "train": 256, "heldout": 256, "dim": 4, "seed": 0, "path": str(features)})
    common = ["--backends", "vq", "--steps", "2", "--batch", "32", "--train", "256", "--heldout", "256", "--dim", "4",
              "--threads", "1", "--features", str(features)]
    bench.main(["--ks", "32", *common, "--out-dir", str(tmp_path / "k32")])
    bench.main(["--ks", "16", *common, "--out-dir", str(tmp_path / "k16")])
    bench.main(["--ks", "16", *common, "--steps", "3", "--out-dir", str(tmp_path / "k16again")])
    rows = bench.main(["--merge", str(tmp_path / "k32"), str(tmp_path / "k16"), str(tmp_path / "k16again"),
                       "--out-dir", str(tmp_path / "all")])
    assert [(r["backend"], r["K"], r["steps"]) for r in rows] == [("vq", 16, 3), ("vq", 32, 2)]
    md = (tmp_path / "all" / "codebook_utilization.md").read_text()
    assert md.count("--ks") == 3 and "| vq | 16 | ok |" in md
    with pytest.raises(SystemExit, match="no codebook_utilization"):
        bench.main(["--merge", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "x")])


def test_tree_search_matches_argmin_with_duplicate_codes() -> None:
    import torch

    from vqkit.quantizers.search import nearest_code

    bench = load_benchmark("codebook_utilization")
    g = torch.Generator().manual_seed(0)
    codebook = torch.randn(50, 8, generator=g)[torch.randint(0, 50, (4096,), generator=g)]  # ~80 copies each
    z = torch.randn(3000, 8, generator=g)
    expected, _ = nearest_code(z, codebook)  # ties between copies go to the lowest id
    assert torch.equal(bench._nearest_ids(codebook, z, 1), expected)


def test_new_backends_run_in_process_or_are_recorded_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark("codebook_utilization")
    monkeypatch.setitem(bench.FSQ_LEVELS, 16, (4, 4))
    monkeypatch.setitem(bench.NEW_BACKENDS, "no_such", ("no_such_backend", lambda k: {"codebook_size": k}, "encode"))
    monkeypatch.setattr(bench, "BACKENDS", (*bench.BACKENDS, "no_such"))
    features = tmp_path / "features.pt"
    bench._child_features({"threads": 1, "train": 256, "heldout": 256, "dim": 4, "seed": 0, "path": str(features)})
    present = [b for b in bench.NEW_BACKENDS if bench._new_backend_cell(b, 16)[1] is None]
    for backend in present:  # the backends merged into this checkout: the real cell, in-process
        result = bench._child_cell({"threads": 1, "k": 16, "features": str(features), "steps": 3, "batch": 32,
                                    "lr": 1e-3, "eval_chunk": 100, "seed": 0, "backend": backend})
        assert result["K"] == 16 and 0 < result["usage"] <= 1, backend
        assert math.isfinite(result["mse"]) and result["mse"] > 0, backend
    missing = [b for b in bench.NEW_BACKENDS if b not in present]
    assert "no_such" in missing
    rows = bench.main(["--ks", "16", "--backends", *missing, "--steps", "2", "--batch", "32", "--train", "256",
                       "--heldout", "256", "--dim", "4", "--threads", "1", "--features", str(features), "--out-dir",
                       str(tmp_path)])
    assert [(r["backend"], r["status"]) for r in rows] == [(b, "missing-backend") for b in missing]
    assert "| no_such | 16 | missing-backend |" in (tmp_path / "codebook_utilization.md").read_text()
