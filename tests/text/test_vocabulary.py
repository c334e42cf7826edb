"""Vocabulary export of a GQ model: decoded/empirical strings, pruning to a size by tokens saved, the export CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

import vqkit
from vqkit.data.text import training_documents
from vqkit.export import main as export_main
from vqkit.tokenizers.text import GQTokenizer
from vqkit.tokenizers.text_vocab import (
    build_vocabulary,
    model_vocabulary,
    prune_by_usage,
    rank_by_savings,
    sample_rows,
    segment_counts,
    vocabulary_from_counts,
)
from vqkit.train import train

from .test_model import tiny


def test_rank_by_savings_counts_exact_cuts_times_bytes_saved() -> None:
    code_strings = {0: b"ab", 1: b"xyz", 2: b"ab", 3: b"q", 4: b"never", 5: b"zz"}
    counts = {
        0: Counter({b"ab": 5, b"abc": 100}),  # only cuts equal to the code's string count: 5 x 1
        1: Counter({b"xyz": 2}),  # 2 x 2 = 4
        2: Counter({b"ab": 1}),  # the same string on another code adds: ab = 6
        3: Counter({b"q": 50}),  # single bytes are never entries
        5: Counter({b"zz": 4}),  # 4 x 1 = 4, ties with xyz: lower code first
    }
    assert rank_by_savings(code_strings, counts) == [b"ab", b"xyz", b"zz", b"never"]


def test_prune_by_usage_keeps_the_entries_the_encoder_uses_most() -> None:
    vocab = build_vocabulary([b"the", b"th", b"he", b"cat", b"zq", b"at"])
    pieces = {b"the": 10, b"cat": 3, b"hat": 1}
    # "the" saves 2 x 10, "cat" 2 x 3, "at" is used once in "hat"; "th", "he", "zq" are never used
    assert prune_by_usage(vocab, pieces, 259) == [bytes([b]) for b in range(256)] + [b"the", b"cat", b"at"]
    assert prune_by_usage(vocab, pieces, 257)[256:] == [b"the"]
    # "thx" saves 3 x 2 tokens, "th" (in "thy") 1, "ab" and "cd" nothing
    vocab = build_vocabulary([b"thx", b"th", b"ab", b"cd"])
    assert prune_by_usage(vocab, {b"thx": 3, b"thy": 1}, 257)[256:] == [b"thx"]
    assert prune_by_usage(build_vocabulary([b"ab", b"th"]), {b"thx": 3}, 257)[256:] == [b"th"]
    assert prune_by_usage(build_vocabulary([b"ab", b"cd"]), {}, 257)[256:] == [b"ab"]  # ties: the later goes
    assert prune_by_usage(vocab, pieces, 10_000) == vocab


def _rows(n: int = 64) -> torch.Tensor:
    text = b"the cat and the hat sat on the mat with the rat " * 20
    return sample_rows([text], row_len=6, segmentation="within", max_rows=n)


def test_sizes_prefixes_and_strings() -> None:
    model = tiny()
    rows = _rows()
    counts = segment_counts(model, rows)
    assert sum(sum(c.values()) for c in counts.values()) >= rows.shape[0]  # at least one token per row
    full = vocabulary_from_counts(model, counts, "decoded")
    assert full == model_vocabulary(model)  # the paper's export needs no rows
    ranked = vocabulary_from_counts(model, counts, "decoded", vocab_size=10_000, prune="gates")
    assert sorted(ranked) == sorted(full)  # a size above what the codes hold keeps them all
    small = vocabulary_from_counts(model, counts, "decoded", vocab_size=258, prune="gates")
    assert len(small) == 258 and small == ranked[:258]  # a smaller size is a prefix of a larger one
    used = vocabulary_from_counts(model, {}, "decoded", vocab_size=258, vocab_rows=rows)
    assert len(used) == 258 and set(used) <= set(full)
    empirical = vocabulary_from_counts(model, counts, "empirical")
    seen = {piece for c in counts.values() for piece in c}
    assert set(empirical[256:]) <= seen  # empirical entries are segments the gates actually cut
    tok = GQTokenizer.from_model(model, "within", 6, vocab_rows=rows, strings="empirical", vocab_size=258,
                                 prune="gates")
    assert tok.vocab_size <= 258
    text = "the cat sat, 猫 🐈"
    assert tok.decode(tok.encode(text)) == text


def test_bad_vocabulary_requests_name_the_fix() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="at least 257"):
        model_vocabulary(model, vocab_rows=_rows(), vocab_size=256)
    with pytest.raises(ValueError, match="vocab_rows"):
        model_vocabulary(model, vocab_size=300)
    with pytest.raises(ValueError, match="vocab_rows"):
        model_vocabulary(model, strings="empirical")
    with pytest.raises(ValueError, match="strings must be one of"):
        model_vocabulary(model, strings="best")
    with pytest.raises(ValueError, match="prune must be one of"):
        model_vocabulary(model, vocab_rows=_rows(), vocab_size=300, prune="random")
    with pytest.raises(ValueError, match="holds no bytes"):
        sample_rows([b""], 6, "within", 10)
    with pytest.raises(ValueError, match="not a vqkit text data module"):
        training_documents({"_target_": "os.system", "command": "true"})
    with pytest.raises(ValueError, match="does not fit"):
        training_documents({"_target_": "vqkit.data.TextFilesDataModule", "no_such_option": 1})


def test_export_cli_prunes_to_a_vocabulary_size(make_text_config, tmp_path: Path, capsys) -> None:
    result = train(make_text_config("model=text_gq", "trainer.max_steps=3", "test=false"))
    full, pruned = tmp_path / "full", tmp_path / "pruned"
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={full}"]) == 0
    # the training text comes from the run's own data config (data=text with the test's corpus file)
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={pruned}", "vocab_size=260", "vocab_rows=500"]) == 0
    tok = vqkit.load_tokenizer(pruned)
    config = json.loads((pruned / "config.json").read_text())
    assert config["vocabulary"] == {"strings": "decoded", "requested_size": 260, "prune": "usage", "rows": 500}
    assert tok.vocab_size <= 260 and set(tok.vocab) <= set(vqkit.load_tokenizer(full).vocab)
    text = "Shall I compare thee to a summer's day? 夏の日 🌞"
    assert tok.decode(tok.encode(text)) == text
    gates = tmp_path / "gates"
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={gates}", "vocab_size=260", "vocab_prune=gates",
                        "vocab_strings=empirical", "vocab_rows=500"]) == 0
    assert vqkit.load_tokenizer(gates).decode(vqkit.load_tokenizer(gates).encode(text)) == text
    capsys.readouterr()
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={pruned}", "vocab_size=many"]) == 2
    assert "integers" in capsys.readouterr().err
    missing = tmp_path / "missing.txt"
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={pruned}", "vocab_size=300",
                        f"vocab_text={missing}"]) == 1
    assert "missing.txt" in capsys.readouterr().err


def test_export_says_when_the_model_has_fewer_pieces_than_vocab_size(make_text_config, tmp_path: Path,
                                                                      capsys) -> None:
    result = train(make_text_config("model=text_gq", "trainer.max_steps=3", "test=false"))
    out = tmp_path / "big"  # 32 codes cannot give 1000 - 256 distinct pieces
    assert export_main([f"ckpt_path={result['checkpoint']}", f"out={out}", "vocab_size=1000", "vocab_rows=500"]) == 0
    tok = vqkit.load_tokenizer(out)
    line = capsys.readouterr().out
    assert tok.vocab_size < 1000 and f"vocabulary of {tok.vocab_size}" in line
    assert "warning: vocab_size=1000 asks for 744 learned pieces" in line and "32 codes" in line
    vocabulary = json.loads((out / "config.json").read_text())["vocabulary"]
    assert vocabulary["available_size"] == tok.vocab_size and vocabulary["note"] in line
    assert tok.config["vocabulary"]["note"] == vocabulary["note"]  # the loaded tokenizer's info keeps it
