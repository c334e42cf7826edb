"""From a trained GQ-VAE to a vocabulary: which byte string each code stands for, and which codes to keep.

Two choices, independent of each other:

The string of a code (``strings``):
    ``decoded`` (the paper's export): the code decoded alone by the decoder, its length head choosing
        how many bytes it stands for (``TextTokenizer.code_strings``).
    ``empirical``: the segment the code most often ends when the network segments training rows.

The size of the vocabulary (``vocab_size``):
    None (the paper's export): every distinct multi-byte code string.
    N: the 256 single bytes plus N - 256 of the code strings, chosen on training rows (``prune``):
        ``usage`` (default): start from every code string; segment the rows as the tokenizer's ``vocab``
            mode does (fewest pieces) and drop the entries that save the fewest tokens (uses x (length - 1)),
            a tenth at a time, until N remain. The criterion is the one the exported tokenizer is used with.
        ``gates``: keep the strings the network's gates cut most often on the rows, times (length - 1), in
            one pass; entries ordered by that score (a smaller size is a prefix of a larger one).
    Either way the model decides what the strings are; the size is chosen as BPE's is, by frequency on the
    training text, so the two can be compared at any vocabulary size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

from vqkit.modalities.text_bytes import text_rows

CODE_STRINGS = ("decoded", "empirical")
PRUNE_RULES = ("usage", "gates")


def build_vocabulary(code_strings: Iterable[bytes]) -> list[bytes]:
    """The 256 single bytes, then each distinct multi-byte string in order of first appearance."""
    vocab = [bytes([b]) for b in range(256)]
    seen = set(vocab)
    for piece in code_strings:
        if len(piece) > 1 and piece not in seen:
            seen.add(piece)
            vocab.append(piece)
    return vocab


def fewest_pieces(data: bytes, ids: Mapping[bytes, int], max_piece_len: int) -> tuple[int, ...]:
    """Fewest vocabulary ids whose bytes concatenate to ``data`` (ties: longest first piece).

    ``ids`` maps each entry to its id and must hold the 256 single bytes, so every ``data`` has a segmentation.
    """
    n = len(data)
    best = [0] * (n + 1)
    for i in range(n - 1, -1, -1):
        best[i] = 1 + min(best[i + length] for length in range(1, min(max_piece_len, n - i) + 1)
                          if length == 1 or data[i : i + length] in ids)
    pieces, i = [], 0
    while i < n:
        for length in range(min(max_piece_len, n - i), 0, -1):
            if (length == 1 or data[i : i + length] in ids) and best[i + length] == best[i] - 1:
                pieces.append(ids[data[i : i + length]])
                i += length
                break
    return tuple(pieces)


def row_pieces(rows: torch.Tensor) -> Counter:
    """How often each row's bytes (padding removed) occur: the pre-tokens (or chunks) the tokenizer segments."""
    from vqkit.modalities.text_bytes import PAD_ID

    return Counter(bytes(b for b in row if b != PAD_ID) for row in rows.tolist())


def prune_by_usage(vocab: list[bytes], pieces: Mapping[bytes, int], vocab_size: int,
                   drop_fraction: float = 0.1) -> list[bytes]:
    """Drop the multi-byte entries that save the fewest tokens on ``pieces`` until ``vocab_size`` remain.

    Each round segments every piece into the fewest entries, scores an entry by its uses x (length - 1) and
    drops the lowest ``drop_fraction`` of the remaining entries (ties: the later entry goes first). The
    survivors keep their order.
    """
    vocab = list(vocab)
    while len(vocab) > vocab_size:
        ids = {piece: i for i, piece in enumerate(vocab)}
        longest = max(len(piece) for piece in vocab)
        uses = [0] * len(vocab)
        for piece, count in pieces.items():
            for i in fewest_pieces(piece, ids, longest):
                uses[i] += count
        order = sorted(range(256, len(vocab)), key=lambda i: (uses[i] * (len(vocab[i]) - 1), -i))
        drop = min(len(vocab) - vocab_size, max(1, int((len(vocab) - 256) * drop_fraction)))
        dropped = set(order[:drop])
        vocab = [piece for i, piece in enumerate(vocab) if i not in dropped]
    return vocab


@torch.no_grad()
def network_segments(model, rows: torch.Tensor, batch_size: int = 4096) -> Iterator[tuple[int, bytes]]:
    """(code, bytes) of every token the network cuts in ``rows`` (R, row_len), row by row, left to right.

    Args:
        model: a ``vqkit.models.TextTokenizer`` (or a module holding one as ``.model``).
        rows: byte rows as the data modules build them (``vqkit.modalities.text_bytes.text_rows``), PAD after
            each row's end.
    """
    from vqkit.modalities.text_bytes import PAD_ID
    from vqkit.quantizers.gq import segment_lengths

    model = getattr(model, "model", model).eval()
    device = next(model.parameters()).device
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start : start + batch_size].to(device)
        boundaries, indices, _ = model.segment(batch)
        boundaries = boundaries & (batch != PAD_ID)
        lengths = segment_lengths(boundaries).cpu()
        batch, indices = batch.cpu(), indices.cpu()
        for r, t in boundaries.nonzero().tolist():  # row-major: tokens in reading order
            n = int(lengths[r, t])
            yield int(indices[r, t]), bytes(batch[r, t - n + 1 : t + 1].tolist())


def segment_counts(model, rows: torch.Tensor, batch_size: int = 4096) -> dict[int, Counter]:
    """For each code, how often the network's gates cut each byte string ending on that code (``network_segments``)."""
    counts: dict[int, Counter] = {}
    for code, piece in network_segments(model, rows, batch_size):
        counts.setdefault(code, Counter())[piece] += 1
    return counts


def empirical_code_strings(counts: Mapping[int, Counter]) -> dict[int, bytes]:
    """Each code's most frequent segment (codes never chosen at a token end are left out; ties: first seen)."""
    return {code: counts[code].most_common(1)[0][0] for code in sorted(counts)}


def rank_by_savings(code_strings: Mapping[int, bytes], counts: Mapping[int, Counter]) -> list[bytes]:
    """Distinct multi-byte code strings, most tokens saved on the counted rows first (ties: lowest code).

    A string's score sums, over the codes that stand for it, how often the gates cut exactly that string
    on that code, times (length - 1). Strings never cut that way score 0 and come last, in code order.
    """
    score: dict[bytes, int] = {}
    first_code: dict[bytes, int] = {}
    for code in sorted(code_strings):
        piece = code_strings[code]
        if len(piece) < 2:
            continue
        uses = counts.get(code, Counter())[piece]
        score[piece] = score.get(piece, 0) + uses * (len(piece) - 1)
        first_code.setdefault(piece, code)
    return sorted(score, key=lambda piece: (-score[piece], first_code[piece]))


def sample_rows(documents: Iterable[bytes], row_len: int, segmentation: str, max_rows: int,
                seed: int = 0) -> torch.Tensor:
    """Up to ``max_rows`` training rows (a seeded random subset, in corpus order) of ``documents``."""
    rows = text_rows(list(documents), row_len, segmentation)
    if rows.shape[0] == 0:
        raise ValueError("the vocabulary text holds no bytes: give the training text (non-empty files)")
    if rows.shape[0] > max_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(rows.shape[0])[:max_rows])
        rows = rows[keep]
    return torch.from_numpy(rows.astype("int64"))


def model_vocabulary(model, strings: str = "decoded", vocab_rows: torch.Tensor | None = None,
                     vocab_size: int | None = None, prune: str = "usage") -> list[bytes]:
    """The vocabulary of a trained ``TextTokenizer`` (see the module docstring).

    Args:
        strings: ``decoded`` or ``empirical``.
        vocab_rows: training byte rows (R, row_len); needed for ``empirical`` and for ``vocab_size``.
        vocab_size: None, or the total size (>= 257) including the 256 single bytes.
        prune: how ``vocab_size`` entries are chosen: ``usage`` or ``gates``.

    Raises:
        ValueError: an unknown ``strings`` or ``prune``, a ``vocab_size`` below 257, or rows missing where needed.
    """
    if strings not in CODE_STRINGS:
        raise ValueError(f"strings must be one of {CODE_STRINGS}, got {strings!r}")
    if prune not in PRUNE_RULES:
        raise ValueError(f"prune must be one of {PRUNE_RULES}, got {prune!r}")
    if vocab_size is not None and vocab_size < 257:
        raise ValueError(f"vocab_size counts the 256 single bytes and must be at least 257, got {vocab_size}")
    if vocab_rows is None and (strings == "empirical" or vocab_size is not None):
        raise ValueError("strings='empirical' and vocab_size need training rows (vocab_rows) to count segments on")
    model = getattr(model, "model", model).eval()
    needs_counts = strings == "empirical" or (vocab_size is not None and prune == "gates")
    counts = segment_counts(model, vocab_rows) if needs_counts else {}
    return vocabulary_from_counts(model, counts, strings, vocab_size, prune, vocab_rows)


def vocabulary_from_counts(model, counts: Mapping[int, Counter], strings: str = "decoded",
                           vocab_size: int | None = None, prune: str = "usage",
                           vocab_rows: torch.Tensor | None = None) -> list[bytes]:
    """``model_vocabulary`` with the gates' segment counts already made (``segment_counts``; only read for
    ``empirical`` strings and ``gates`` pruning), to export several variants of one model."""
    model = getattr(model, "model", model)
    if strings == "empirical":
        code_strings = empirical_code_strings(counts)
    else:
        code_strings = dict(enumerate(model.code_strings()))
    if vocab_size is not None and prune == "gates":
        return build_vocabulary(rank_by_savings(code_strings, counts)[: vocab_size - 256])
    vocab = build_vocabulary(code_strings[code] for code in sorted(code_strings))
    if vocab_size is None:
        return vocab
    if vocab_rows is None:
        raise ValueError("prune='usage' needs the training rows (vocab_rows) to segment")
    return prune_by_usage(vocab, row_pieces(vocab_rows), vocab_size)
