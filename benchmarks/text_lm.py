"""Downstream check: a small causal LM trained on GQ ids vs on BPE ids at matched compression.

    python benchmarks/text_lm.py --gq artifacts/gq-shakespeare --steps 300

The BPE vocabulary size is searched (bisection over HF byte-level BPE trained on the same training
works) so that its held-out bytes/token matches the GQ tokenizer's. Both LMs have the same
transformer (width, depth, heads, context in tokens), batch and number of steps; only the embedding
and output layers differ with the vocabulary. Metric: bits per byte on the held-out works =
total next-token NLL (nats) / ln 2 / held-out UTF-8 bytes, over non-overlapping windows.
Writes ``benchmarks/results/text_lm.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.tokenizers.text import train_byte_level_bpe

RESULTS = Path(__file__).resolve().parent / "results"


class TinyCausalLM(nn.Module):
    """Token + learned position embeddings, pre-norm causal transformer, tied output layer."""

    def __init__(self, vocab_size: int, context: int, width: int = 128, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embed.weight, std=0.02)  # GPT-2 init; unit-variance rows give huge tied logits
        self.pos = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor) -> Tensor:
        t = ids.shape[1]
        causal = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        h = self.blocks(self.embed(ids) + self.pos[:t], mask=causal, is_causal=True)
        return self.norm(h) @ self.embed.weight.T  # (B, T, V)


def windows(ids: list[int], context: int) -> Tensor:
    """Non-overlapping windows (N, context + 1) sharing one token at the seams."""
    n = (len(ids) - 1) // context
    t = torch.tensor(ids[: n * context + 1])
    return torch.stack([t[i * context : (i + 1) * context + 1] for i in range(n)])


def train_and_score(train_ids: list[int], test_ids: list[int], test_bytes: int, vocab_size: int, steps: int,
                    context: int, batch: int, seed: int = 0) -> dict[str, float]:
    """Train ``TinyCausalLM`` for ``steps`` on ``train_ids``; bits per byte on ``test_ids``."""
    torch.manual_seed(seed)
    model = TinyCausalLM(vocab_size, context)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    data = windows(train_ids, context)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        x = data[torch.randint(0, data.shape[0], (batch,), generator=gen)]
        lr = 3e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        test = windows(test_ids, context)
        for i in range(0, test.shape[0], 64):
            x = test[i : i + 64]
            nll += float(F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
            count += x[:, 1:].numel()
    scored_bytes = test_bytes * count / max(len(test_ids) - 1, 1)  # bytes covered by the scored tokens
    return {"bits_per_byte": nll / math.log(2) / scored_bytes, "test_nll_per_token": nll / count,
            "train_loss_last": float(loss.detach()), "train_seconds": train_seconds}


def matched_bpe(train_texts: Sequence[str], test_texts: Sequence[str], target_bpt: float, lo: int = 300,
                hi: int = 16384, iters: int = 7):
    """The byte-level BPE whose held-out bytes/token is closest to ``target_bpt`` (bisection on vocab size)."""
    n_bytes = sum(len(t.encode()) for t in test_texts)
    best = None
    for _ in range(iters):
        mid = (lo + hi) // 2
        tok = train_byte_level_bpe(train_texts, mid)
        bpt = n_bytes / sum(len(tok.encode(t).ids) for t in test_texts)
        if best is None or abs(bpt - target_bpt) < abs(best[1] - target_bpt):
            best = (tok, bpt)
        lo, hi = (mid, hi) if bpt < target_bpt else (lo, mid)
    return best


def encode_all(encode: Callable[[str], list[int]], texts: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for t in texts:
        ids.extend(encode(t))
    return ids


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gq", required=True, metavar="DIR", help="GQ tokenizer artifact")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--context", type=int, default=64, help="tokens per training window")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-train-bytes", type=int, default=None, help="truncate each training work (smoke runs)")
    parser.add_argument("--max-test-bytes", type=int, default=None, help="truncate each held-out work (smoke runs)")
    parser.add_argument("--bpe-iters", type=int, default=7, help="bisection steps of the BPE vocabulary search")
    parser.add_argument("--stem", default="text_lm")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import vqkit
    from vqkit.data.text import shakespeare_splits

    splits = shakespeare_splits()
    train = [d[: args.max_train_bytes].decode("utf-8", errors="ignore") for d in splits.train]
    test = [d[: args.max_test_bytes].decode("utf-8", errors="ignore") for d in splits.test]
    test_bytes = sum(len(t.encode()) for t in test)
    gq = vqkit.load_tokenizer(args.gq).set_mode("vocab")
    gq_test = encode_all(gq.encode, test)
    gq_bpt = test_bytes / len(gq_test)
    bpe, bpe_bpt = matched_bpe(train, test, gq_bpt, iters=args.bpe_iters)
    runs = [
        (f"GQ {Path(args.gq).name}", gq.vocab_size, gq_bpt, encode_all(gq.encode, train), gq_test),
        (f"BPE (matched, {bpe.get_vocab_size()})", bpe.get_vocab_size(), bpe_bpt,
         encode_all(lambda t: bpe.encode(t).ids, train), encode_all(lambda t: bpe.encode(t).ids, test)),
    ]
    results = []
    for name, vocab, bpt, train_ids, test_ids in runs:
        score = train_and_score(train_ids, test_ids, test_bytes, vocab, args.steps, args.context, args.batch)
        results.append({"tokenizer": name, "vocab_size": vocab, "bytes_per_token": bpt, **score})
        print(results[-1], flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    with (args.out_dir / f"{args.stem}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    load = os.getloadavg()[0]
    lines = [
        f"Causal LM (width 128, depth 2, 4 heads, context {args.context} tokens, batch {args.batch}, "
        f"{args.steps} steps), held-out Shakespeare test works ({test_bytes} bytes); load average {load:.1f}. "
        f"Command: python benchmarks/text_lm.py {' '.join(argv or [])}",
        "",
        "| tokenizer | vocab | bytes/token | bits/byte | train s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['tokenizer']} | {r['vocab_size']} | {r['bytes_per_token']:.3f} | {r['bits_per_byte']:.3f} | "
              f"{r['train_seconds']:.0f} |" for r in results]
    (args.out_dir / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
