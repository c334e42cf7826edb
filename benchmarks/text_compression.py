"""Bytes per token on held-out text: GQ-VAE tokenizers vs the fixed-length VQ baseline vs BPE at equal vocabulary.

    python benchmarks/text_compression.py --gq artifacts/gq-shakespeare --fixed artifacts/fixed-shakespeare

Held-out text: the test works of the embedded Shakespeare corpus (``ShakespeareDataModule``:
The Tempest, Julius Caesar, the Sonnets). BPE: Hugging Face ``tokenizers`` byte-level BPE (GPT-2
pre-tokenizer) trained on the training works with ``vocab_size`` equal to each learned
tokenizer's vocabulary (256 bytes + learned pieces). Every tokenizer is checked to round-trip the
held-out text exactly. Encode throughput is MB of held-out UTF-8 per second, single process,
measured on a shared machine (see ``uptime`` in the markdown file). Writes
``benchmarks/results/text_compression.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqkit.tokenizers.text import train_byte_level_bpe

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    tokenizer: str
    vocab_size: int
    bytes_per_token: float
    tokens: int
    encode_mb_per_s: float
    lossless: bool


def measure(name: str, vocab_size: int, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
            texts: Sequence[str]) -> Row:
    """Bytes/token, token count, throughput and exact round trip of ``encode`` over ``texts``."""
    n_bytes = sum(len(t.encode()) for t in texts)
    start = time.perf_counter()
    encoded = [encode(t) for t in texts]
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for ids in encoded)
    lossless = all(decode(ids) == t for ids, t in zip(encoded, texts, strict=True))
    return Row(name, vocab_size, n_bytes / max(tokens, 1), tokens, n_bytes / 1e6 / max(seconds, 1e-9), lossless)


def gq_rows(label: str, tok, texts: Sequence[str], model_mode: bool) -> list[Row]:
    """Rows for one GQ tokenizer: vocab mode (Python DP), its HF Unigram export, and model mode."""
    rows = [measure(f"{label} (vocab DP)", tok.vocab_size, tok.set_mode("vocab").encode, tok.decode, texts)]
    hf = tok.to_hf_tokenizer()
    rows.append(measure(f"{label} (HF Unigram export)", tok.vocab_size, lambda t: hf.encode(t).ids, hf.decode, texts))
    if model_mode and tok.model is not None:
        rows.append(measure(f"{label} (model segmentation)", tok.vocab_size, tok.set_mode("model").encode,
                            tok.decode, texts))
    return rows


def exported_variant(tok, counts, strings: str, vocab_size: int | None, prune: str = "usage", train_rows=None):
    """The same network exported again: ``strings`` per code, pruned to ``vocab_size`` by ``prune`` (text_vocab)."""
    from vqkit.tokenizers.text import GQTokenizer
    from vqkit.tokenizers.text_vocab import vocabulary_from_counts

    vocab = vocabulary_from_counts(tok.model, counts, strings, vocab_size, prune, train_rows)
    return GQTokenizer(vocab, tok.segmentation, tok.max_token_len, "vocab", tok.model, tok.row_len)


def compare(artifacts: dict[str, str | Path], train_texts: Sequence[str], test_texts: Sequence[str],
            model_mode: bool = True, empirical_rows: int = 0, vocab_sizes: Sequence[int] = (),
            vocab_rows: int = 100_000) -> list[Row]:
    """All rows: each artifact in its modes, its empirical-vocabulary variant (``empirical_rows`` > 0), its
    vocabularies pruned to each of ``vocab_sizes`` (decoded strings by usage and by gate cuts, empirical strings
    by gate cuts, on ``vocab_rows`` training rows), then BPE at each vocabulary size that occurred."""
    import vqkit
    from vqkit.tokenizers.text_vocab import sample_rows, segment_counts

    rows: list[Row] = []
    sizes: list[int] = []
    train_bytes = [t.encode() for t in train_texts]
    for label, path in artifacts.items():
        tok = vqkit.load_tokenizer(path)
        rows.extend(gq_rows(label + " decoded-code vocab", tok, test_texts, model_mode))
        sizes.append(tok.vocab_size)
        if tok.model is None:
            continue
        if empirical_rows:
            counts = segment_counts(tok.model, sample_rows(train_bytes, tok.row_len, tok.segmentation, empirical_rows))
            variant = exported_variant(tok, counts, "empirical", None)
            rows.extend(gq_rows(label + " empirical vocab", variant, test_texts, model_mode))
            sizes.append(variant.vocab_size)
        if vocab_sizes:
            train_rows = sample_rows(train_bytes, tok.row_len, tok.segmentation, vocab_rows)
            counts = segment_counts(tok.model, train_rows)
        for size in vocab_sizes:
            for strings, prune in (("decoded", "usage"), ("decoded", "gates"), ("empirical", "gates")):
                variant = exported_variant(tok, counts, strings, size, prune, train_rows)
                rows.extend(gq_rows(f"{label} {strings} vocab, {size} by {prune}", variant, test_texts,
                                    model_mode=False))
                sizes.append(variant.vocab_size)
    for size in dict.fromkeys(sizes):
        bpe = train_byte_level_bpe(train_texts, size)
        rows.append(measure(f"BPE (HF byte-level, {bpe.get_vocab_size()})", bpe.get_vocab_size(),
                            lambda t, b=bpe: b.encode(t).ids, bpe.decode, test_texts))
    return rows


def write(rows: list[Row], out_dir: Path, stem: str, note: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tokenizer", "vocab_size", "bytes_per_token", "tokens", "encode_mb_per_s", "lossless"])
        for r in rows:
            writer.writerow([r.tokenizer, r.vocab_size, f"{r.bytes_per_token:.4f}", r.tokens,
                             f"{r.encode_mb_per_s:.3f}", r.lossless])
    lines = [note, "", "| tokenizer | vocab | bytes/token | tokens | encode MB/s | lossless |",
             "|---|---:|---:|---:|---:|:---:|"]
    lines += [f"| {r.tokenizer} | {r.vocab_size} | {r.bytes_per_token:.3f} | {r.tokens} | "
              f"{r.encode_mb_per_s:.2f} | {'yes' if r.lossless else 'NO'} |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def short_names(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(label, path): each artifact's folder name, with its parent's when two folders share a name."""
    names = [Path(p).name for p in paths]
    return [(Path(p).name if names.count(Path(p).name) == 1 else f"{Path(p).parent.name}/{Path(p).name}", p)
            for p in paths]


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gq", action="append", default=[], metavar="DIR", help="GQ tokenizer artifact (repeatable)")
    parser.add_argument("--fixed", action="append", default=[], metavar="DIR", help="fixed-length baseline artifact")
    parser.add_argument("--no-model-mode", action="store_true", help="skip the (slow) model-segmentation mode")
    parser.add_argument("--empirical-rows", type=int, default=0,
                        help="also build each code's most frequent segment on this many training rows as vocabulary")
    parser.add_argument("--vocab-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[],
                        help="also export each GQ model pruned to these vocabulary sizes (comma-separated)")
    parser.add_argument("--vocab-rows", type=int, default=100_000,
                        help="training rows the pruned vocabularies count segments on")
    parser.add_argument("--max-train-bytes", type=int, default=None, help="truncate each training work (smoke runs)")
    parser.add_argument("--max-test-bytes", type=int, default=None, help="truncate each held-out work (smoke runs)")
    parser.add_argument("--stem", default="text_compression", help="output file stem")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.gq and not args.fixed:
        parser.error("give at least one --gq or --fixed artifact directory")
    from vqkit.data.text import shakespeare_splits

    splits = shakespeare_splits()
    train = [d[: args.max_train_bytes].decode("utf-8", errors="ignore") for d in splits.train]
    test = [d[: args.max_test_bytes].decode("utf-8", errors="ignore") for d in splits.test]
    artifacts = {f"GQ {name}": p for name, p in short_names(args.gq)}
    artifacts |= {f"fixed VQ {name}": p for name, p in short_names(args.fixed)}
    rows = compare(artifacts, train, test, model_mode=not args.no_model_mode, empirical_rows=args.empirical_rows,
                   vocab_sizes=args.vocab_sizes, vocab_rows=args.vocab_rows)
    load = os.getloadavg()
    note = (f"Held-out: Shakespeare test works ({sum(len(t.encode()) for t in test)} bytes). "
            f"Load average during the run: {load[0]:.1f} on {os.cpu_count()} cores (throughput is indicative only). "
            f"Command: python benchmarks/text_compression.py {' '.join(argv or [])}".rstrip())
    csv_path, md_path = write(rows, args.out_dir, args.stem, note)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
