"""Byte-level text basics shared by the data modules and the tokenizer: rows of bytes, text files (no Lightning).

Rows of byte ids use 0..255 for bytes and ``PAD_ID`` (256) after the end of a row. Text that is not
valid UTF-8 is carried byte for byte: decoded with ``surrogateescape`` for the pre-tokenizer regex and
re-encoded exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import regex

log = logging.getLogger(__name__)

PAD_ID = 256
BYTE_VOCAB = 257  # 256 byte values + PAD
SEGMENTATIONS = ("within", "across")
# GPT-2's pre-tokenizer (contractions, letters, numbers, other symbols, whitespace runs).
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def decode_lossless(data: bytes) -> tuple[str, bool]:
    """``(text, valid)``: UTF-8 text, with invalid bytes kept as lone surrogates (``surrogateescape``).

    ``encode_lossless(text) == data`` always; ``valid`` says whether ``data`` was valid UTF-8.
    """
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="surrogateescape"), False


def encode_lossless(text: str) -> bytes:
    """Inverse of ``decode_lossless``."""
    return text.encode("utf-8", errors="surrogateescape")


def pretokenize(text: str) -> list[str]:
    """GPT-2 pre-tokens of ``text``; their concatenation is ``text``."""
    return GPT2_PATTERN.findall(text)


def byte_pieces(data: bytes, segmentation: str) -> list[bytes]:
    """The byte strings the model segments: GPT-2 pre-tokens (``within``) or the whole text (``across``)."""
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    if segmentation == "across":
        return [data] if data else []
    text, _ = decode_lossless(data)
    return [encode_lossless(piece) for piece in pretokenize(text)]


def rows_from_pieces(pieces: Sequence[bytes], row_len: int) -> np.ndarray:
    """Cut each piece into chunks of at most ``row_len`` bytes, one chunk per row, padded with ``PAD_ID``.

    Returns:
        (R, row_len) int16; the concatenation of the rows without padding is the concatenation of the pieces.
    """
    if row_len <= 0:
        raise ValueError(f"row_len must be positive, got {row_len}")
    pieces = [p for p in pieces if p]
    if not pieces:
        return np.full((0, row_len), PAD_ID, dtype=np.int16)
    data = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    chunks = -(-lengths // row_len)  # ceil
    piece_of_row = np.repeat(np.arange(len(pieces)), chunks)
    first_row = np.concatenate([[0], np.cumsum(chunks)[:-1]])
    chunk_index = np.arange(len(piece_of_row)) - first_row[piece_of_row]
    starts = offsets[piece_of_row] + chunk_index * row_len
    row_lengths = np.minimum(lengths[piece_of_row] - chunk_index * row_len, row_len)
    cols = np.arange(row_len)
    valid = cols[None, :] < row_lengths[:, None]
    rows = np.full((len(starts), row_len), PAD_ID, dtype=np.int16)
    rows[valid] = data[(starts[:, None] + cols[None, :])[valid]]
    return rows


def text_rows(documents: Sequence[bytes], row_len: int, segmentation: str) -> np.ndarray:
    """Rows (R, row_len) of all documents, in order (see the module docstring for the layouts)."""
    pieces: list[bytes] = []
    for doc in documents:
        pieces.extend(byte_pieces(doc, segmentation))
    return rows_from_pieces(pieces, row_len)


def read_documents(paths: Sequence[str | Path], extensions: Sequence[str] | None = (".txt", ".md")) -> list[bytes]:
    """Bytes of every file in ``paths`` (``text_files``); files that are not valid UTF-8 are logged, kept as they are.

    Raises:
        FileNotFoundError: a path does not exist, or the folders hold no matching file.
    """
    files = text_files(paths, extensions)
    documents = [f.read_bytes() for f in files]
    invalid = [str(f) for f, d in zip(files, documents, strict=True) if not decode_lossless(d)[1]]
    if invalid:
        log.warning(
            "%d of %d files are not valid UTF-8 and are used byte for byte: %s",
            len(invalid),
            len(files),
            ", ".join(invalid[:5]) + (" ..." if len(invalid) > 5 else ""),
        )
    return documents


def text_files(paths: Sequence[str | Path] | str | Path,
               extensions: Sequence[str] | None = (".txt", ".md")) -> list[Path]:
    """The files ``paths`` name (folders are walked recursively, sorted, hidden entries skipped).

    Args:
        paths: files or folders.
        extensions: in folders, only files with these suffixes (case-insensitive); None = every file.
            Files named explicitly are always read.

    Raises:
        FileNotFoundError: a path does not exist, or the folders hold no matching file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and (extensions is None or p.suffix.lower() in {e.lower() for e in extensions})
            )
            if not found:
                raise FileNotFoundError(f"{path} holds no text files with suffixes {list(extensions or [])}")
            files.extend(found)
        else:
            raise FileNotFoundError(f"text path not found: {path}; pass existing files or folders in data.paths")
    return files
