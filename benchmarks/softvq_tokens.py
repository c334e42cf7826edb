"""SoftVQ against hard VQ on the 1-D (TiTok-style) image tokenizer, at equal training steps.

Trains ``model=image_1d`` on the embedded photos with ``softvq``, ``vq`` and ``ema_vq`` at
32 and 64 latent tokens (same steps, data, seed and codebook size), then evaluates every
run on the held-out photos with ``vqkit.eval``: PSNR, SSIM, LPIPS, rFID and codebook usage.
Writes ``softvq_tokens.csv`` and ``softvq_tokens.md`` under ``--out-dir``.

    python benchmarks/softvq_tokens.py                      # the full grid
    python benchmarks/softvq_tokens.py --steps 20 --tokens 32 --quantizers softvq   # a smoke run

rFID here compares a few hundred 48px crops against their reconstructions: it ranks the
methods on this data; it is not comparable with ImageNet 50k-image rFID.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from vqkit.config import compose_train_config
from vqkit.eval import evaluate
from vqkit.train import train

COLUMNS = ("quantizer", "tokens", "steps", "train_s", "psnr", "ssim", "lpips", "rfid", "usage", "perplexity", "dead")


def run_one(quantizer: str, tokens: int, steps: int, codebook_size: int, work: Path, val_samples: int) -> dict:
    overrides = [
        "model=image_1d", f"quantizer={quantizer}", f"quantizer.codebook_size={codebook_size}",
        f"model.encoder.num_latent_tokens={tokens}", f"trainer.max_steps={steps}", "test=false",
        f"data.val_samples={val_samples}", "callbacks.progress_bar.refresh_rate=0", "logger=csv",
    ]
    started = time.time()
    result = train(compose_train_config(overrides, work / f"{quantizer}_{tokens}"))
    seconds = time.time() - started
    report = evaluate(result["checkpoint"], split="val", out=str(work / f"{quantizer}_{tokens}" / "eval"),
                      latent_stats=False)
    m = report["metrics"]
    return {
        "quantizer": quantizer, "tokens": tokens, "steps": steps, "train_s": round(seconds, 1),
        "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m["lpips"], "rfid": m["rfid"],
        "usage": m["codebook/usage"], "perplexity": m["codebook/perplexity"], "dead": m["codebook/dead"],
    }


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# SoftVQ vs VQ vs EMA-VQ on the 1-D image tokenizer (embedded photos, CPU)",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}; torch {torch.__version__}",
        "- Metrics on the held-out photos (vqkit.eval, split=val); usage over the whole split",
        "",
        "| quantizer | tokens | steps | train s | PSNR | SSIM | LPIPS | rFID | usage | perplexity | dead |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['quantizer']} | {r['tokens']} | {r['steps']} | {r['train_s']:.0f} | {r['psnr']:.2f} | "
            f"{r['ssim']:.3f} | {r['lpips']:.3f} | {r['rfid']:.1f} | {r['usage']:.3f} | {r['perplexity']:.1f} | "
            f"{r['dead']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantizers", nargs="+", default=["softvq", "vq", "ema_vq"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--val-samples", type=int, default=128)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temp dir)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/softvq_tokens.py", *argv])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for tokens in args.tokens:
            for quantizer in args.quantizers:
                row = run_one(quantizer, tokens, args.steps, args.codebook_size, work, args.val_samples)
                rows.append(row)
                print(f"[{len(rows)}/{len(args.tokens) * len(args.quantizers)}] {row}", flush=True)
    with open(args.out_dir / "softvq_tokens.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, command)
    (args.out_dir / "softvq_tokens.md").write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
