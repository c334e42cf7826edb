"""Text data: byte rows, deterministic splits, non-UTF-8 files byte for byte, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from vqkit.data.text import (
    TextFilesDataModule,
    TinyStoriesDataModule,
    read_documents,
    shakespeare_splits,
    split_document,
    text_rows,
)
from vqkit.modalities.text_bytes import PAD_ID, byte_pieces, pretokenize, rows_from_pieces


def unpad(rows: np.ndarray) -> bytes:
    return rows[rows != PAD_ID].astype(np.uint8).tobytes()


def test_pretokens_and_rows_keep_every_byte() -> None:
    text = "Hello, world! Ünïcödé 漢字 🙂  tabs\tand 12345 numbers'll"
    assert "".join(pretokenize(text)) == text
    data = text.encode()
    for segmentation in ("within", "across"):
        rows = text_rows([data], 4, segmentation)
        assert rows.shape[1] == 4 and unpad(rows) == data
    assert byte_pieces(b" averyveryverylongword", "within") == [b" averyveryverylongword"]
    rows = rows_from_pieces([b" averyveryverylongword"], 8)
    assert rows.shape == (3, 8) and (rows[2] == PAD_ID).sum() == 2


def test_shakespeare_split_is_deterministic_and_disjoint() -> None:
    a, b = shakespeare_splits(), shakespeare_splits()
    assert a == b
    assert len(a.train) == 37 and len(a.val) == 2 and len(a.test) == 3
    assert not set(a.train) & (set(a.val) | set(a.test))
    assert a.val[0].startswith(b"HAMLET")


def test_text_files_split_and_non_utf8_file(tmp_path: Path, caplog) -> None:
    (tmp_path / "a.txt").write_text("line one\n" * 30)
    bad = b"caf\xe9 latin-1 text\n" * 30 + b"\xff\xfe\x00 raw\n"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(bad)
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="vqkit.data.text"):
        docs = read_documents([tmp_path])
    assert docs == [(tmp_path / "a.txt").read_bytes(), bad]
    assert "not valid UTF-8" in caplog.text and "b.txt" in caplog.text
    dm = TextFilesDataModule(paths=[str(tmp_path)], row_len=8, batch_size=4, held_out_fraction=0.2)
    dm.setup()
    again = TextFilesDataModule(paths=[str(tmp_path)], row_len=8, batch_size=4, held_out_fraction=0.2)
    again.setup()
    for name in ("train", "val", "test"):
        assert np.array_equal(dm.datasets[name].rows.numpy(), again.datasets[name].rows.numpy())
    train, val, test = split_document(bad, 0.2)
    assert train + val + test == bad and train.endswith(b"\n") and val
    all_rows = np.concatenate([dm.datasets[n].rows.numpy() for n in ("train", "val", "test")])
    assert sorted(unpad(all_rows)) == sorted((tmp_path / "a.txt").read_bytes() + bad)  # the invalid bytes survive
    batch = next(iter(dm.train_dataloader()))
    assert batch["bytes"].shape == (4, 8) and int(batch["bytes"].max()) <= PAD_ID


@pytest.mark.parametrize("segmentation", ["within", "across"])
def test_a_file_without_newlines_still_holds_out_val_and_test_text(tmp_path: Path, segmentation: str) -> None:
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer. " * 20
    (tmp_path / "one_line.txt").write_text(text)
    dm = TextFilesDataModule(paths=[str(tmp_path / "one_line.txt")], row_len=8, batch_size=4,
                             segmentation=segmentation)
    dm.setup()
    assert all(len(dm.datasets[name]) > 0 for name in ("train", "val", "test"))
    parts = [unpad(dm.datasets[name].rows.numpy()) for name in ("train", "val", "test")]
    assert sorted(b"".join(parts)) == sorted(text.encode())  # every byte once, none lost at the cuts
    assert 0.05 < len(parts[1] + parts[2]) / len(text) < 0.15  # the held-out tenth


def test_short_and_multibyte_documents_split_at_characters() -> None:
    assert split_document(b"ab", 0.1) == (b"ab", b"", b"")  # too short to hold anything out
    for text in ["abc", "ab€", "é€ü", "one line\n", "line\n" * 3, "ünïcödé wörds " * 5]:
        parts = split_document(text.encode(), 0.1)
        assert b"".join(parts) == text.encode() and all(parts), (text, parts)
        assert "".join(p.decode() for p in parts) == text  # no cut inside a character
    lines = b"line one\n" * 30  # enough lines: every cut stays after a newline
    assert all(p.endswith(b"\n") for p in split_document(lines, 0.2))


def test_empty_or_too_short_text_files_are_named(tmp_path: Path, caplog) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"every text file is empty \(.*empty.txt\)"):
        TextFilesDataModule(paths=[str(tmp_path / "empty.txt")], row_len=8).setup()
    (tmp_path / "tiny.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"tiny.txt\) is too short to hold out validation and test text.*3 characters"):
        TextFilesDataModule(paths=[str(tmp_path / "tiny.txt")], row_len=8).setup()
    (tmp_path / "text.txt").write_text("Some real text to train on.\n" * 20)
    with caplog.at_level(logging.WARNING, logger="vqkit.data.text"):
        dm = TextFilesDataModule(paths=[str(tmp_path)], row_len=8)
        dm.setup()
    assert "skipping 1 empty text files" in caplog.text and "empty.txt" in caplog.text
    assert all(len(dm.datasets[name]) > 0 for name in ("train", "val", "test"))


def test_missing_paths_are_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="text path not found"):
        read_documents([tmp_path / "nope"])
    with pytest.raises(ValueError, match="data.paths"):
        TextFilesDataModule(paths=None)
    with pytest.raises(FileNotFoundError, match="TinyStories"):
        TinyStoriesDataModule(root=str(tmp_path)).setup()
    with pytest.raises(ValueError, match="data.root"):
        TinyStoriesDataModule(root=None).setup()


def test_tinystories_layout(tmp_path: Path) -> None:
    stories = b"<|endoftext|>".join(b"Once upon a time %d.\n" % i for i in range(6))
    (tmp_path / "TinyStoriesV2-GPT4-train.txt").write_bytes(stories)
    (tmp_path / "TinyStoriesV2-GPT4-valid.txt").write_bytes(stories)
    dm = TinyStoriesDataModule(root=str(tmp_path), row_len=8, batch_size=2)
    dm.setup()
    assert len(dm.splits.train) == 6 and len(dm.splits.val) == 3 and len(dm.splits.test) == 3
    assert b"<|endoftext|>" not in b"".join(dm.splits.train)
