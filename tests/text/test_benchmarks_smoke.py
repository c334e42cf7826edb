"""Smoke tests of benchmarks/text_compression.py and benchmarks/text_lm.py on truncated text."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.benchmarks import load_benchmark as load
from vqkit.tokenizers.text import GQTokenizer
from vqkit.tokenizers.text_vocab import build_vocabulary

from .test_tokenizer import model_tokenizer


def artifact(tmp_path: Path) -> Path:
    vocab = build_vocabulary([b" the", b" and", b" of", b"ing", b" to", b" thou", b" my", b"ll", b" I"])
    return GQTokenizer(vocab).save(tmp_path / "gq-tiny")


def test_text_compression_smoke(tmp_path: Path) -> None:
    bench = load("text_compression")
    rows = bench.main(["--gq", str(artifact(tmp_path)), "--max-train-bytes", "3000", "--max-test-bytes", "2000",
                       "--out-dir", str(tmp_path)])
    assert all(r.lossless for r in rows) and len(rows) == 3
    gq, bpe = rows[0], rows[-1]
    assert gq.vocab_size == 265 and bpe.vocab_size <= 265 and bpe.tokenizer.startswith("BPE")
    assert gq.bytes_per_token > 1.0 and rows[1].tokens == gq.tokens  # the HF export segments as the DP does
    with (tmp_path / "text_compression.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3


def test_text_compression_exports_each_vocabulary_size(tmp_path: Path) -> None:
    bench = load("text_compression")
    art = model_tokenizer().save(tmp_path / "gq-model")
    rows = bench.main(["--gq", str(art), "--no-model-mode", "--vocab-sizes", "258,260", "--vocab-rows", "300",
                       "--max-train-bytes", "3000", "--max-test-bytes", "1000", "--out-dir", str(tmp_path)])
    assert all(r.lossless for r in rows)
    pruned = [r for r in rows if " by " in r.tokenizer and "(vocab DP)" in r.tokenizer]
    assert [r.tokenizer.split(" vocab, ")[1] for r in pruned] == [
        f"{n} by {rule} (vocab DP)" for n in (258, 260) for rule in ("usage", "gates", "gates")]
    assert all(r.vocab_size <= int(r.tokenizer.split(" vocab, ")[1].split()[0]) for r in pruned)
    assert any(r.tokenizer.startswith("BPE") and r.vocab_size == 258 for r in rows)


def test_text_lm_smoke(tmp_path: Path) -> None:
    bench = load("text_lm")
    results = bench.main(["--gq", str(artifact(tmp_path)), "--steps", "2", "--context", "16", "--batch", "4",
                          "--max-train-bytes", "3000", "--max-test-bytes", "1000", "--bpe-iters", "2",
                          "--out-dir", str(tmp_path)])
    assert len(results) == 2 and all(0 < r["bits_per_byte"] < 20 for r in results)
    assert (tmp_path / "text_lm.md").is_file()
