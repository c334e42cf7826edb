"""SoftVQ against hard VQ on the 1-D (TiTok-style) image tokenizer, at equal training steps.

Trains ``model=image_1d`` on the embedded photos with ``softvq``, ``vq`` and ``ema_vq`` at
32 and 64 latent tokens (same steps, data, seed and codebook size), then evaluates every
run on the held-out photos with ``vqkit.eval``: PSNR, SSIM, LPIPS, rFID and codebook usage.
Writes ``softvq_tokens.csv`` and ``softvq_tokens.md`` under ``--out-dir``.

The model, optimizer, schedule, data and loss settings are those of the CPU recipe
(conf/recipe/softvq_photos_cpu.yaml, read at run time) without its adversarial / perceptual
terms, so every quantizer is trained on reconstruction alone. The recipe's quantizer keys
(e.g. ``num_codebooks``) are softvq's and are applied to the softvq runs only; the total
codebook size is the same for every quantizer.

    python benchmarks/softvq_tokens.py                      # the full grid, the recipe's steps
    python benchmarks/softvq_tokens.py --steps 20 --tokens 32 --quantizers softvq   # a smoke run

rFID here compares a few hundred 48px crops against their reconstructions: it ranks the
methods on this data; it is not comparable with ImageNet 50k-image rFID.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vqkit.config import CONF_DIR, compose_train_config
from vqkit.eval import evaluate
from vqkit.train import train

RECIPE = CONF_DIR / "recipe" / "softvq_photos_cpu.yaml"
# Sections of the recipe carried over as overrides: the data, the model, its optimizer and schedule and the
# reconstruction terms (module.* keys outside these, disc_* and losses.lpips, are the GAN's).
SHARED_SECTIONS = ("data", "model.encoder", "model.decoder", "module.optimizer", "module.scheduler",
                   "module.losses.l1", "module.losses.l2")
COLUMNS = ("quantizer", "tokens", "steps", "train_s", "psnr", "ssim", "lpips", "rfid", "usage", "perplexity", "dead")


def _flatten(node: object, prefix: str) -> list[str]:
    """Dotted ``key=value`` overrides of every leaf under ``prefix`` of a plain config tree."""
    if isinstance(node, dict):
        return [o for k, v in node.items() for o in _flatten(v, f"{prefix}.{k}")]
    value = "null" if node is None else str(node).lower() if isinstance(node, bool) else node
    if isinstance(value, list):
        value = "[" + ",".join(str(v) for v in value) + "]"
    return [f"{prefix}={value}"]


# The table in README/docs was measured with plain vq codes (full width, no revival), vq's defaults before
# issue 14 made factorized cosine codes with revival the default; the comparison keeps those settings.
PLAIN_CODES = {"vq": ["quantizer.code_dim=null", "quantizer.normalize=false", "quantizer.dead_code_threshold=0.0"]}


def recipe_overrides(quantizer: str, recipe: Path = RECIPE) -> tuple[list[str], int, int]:
    """Overrides carrying the CPU recipe's settings, its max_steps and its total codebook size."""
    if not recipe.is_file():
        raise FileNotFoundError(f"the CPU recipe {recipe} is missing; the benchmark copies its settings")
    cfg = OmegaConf.to_container(OmegaConf.load(recipe), resolve=False)
    overrides = []
    for section in SHARED_SECTIONS:
        node = cfg
        for key in section.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if node:
            overrides += _flatten(node, section)
    q = dict(cfg.get("quantizer", {}))
    codebook_size = int(q.pop("codebook_size", 1024))
    if quantizer == "softvq":
        overrides += _flatten(q, "quantizer") if q else []
    overrides += PLAIN_CODES.get(quantizer, [])
    return overrides, int(cfg["trainer"]["max_steps"]), codebook_size


def run_one(
    quantizer: str,
    tokens: int,
    steps: int,
    codebook_size: int,
    work: Path,
    val_samples: int,
    extra: list[str],
    fid: bool = True,
    lpips: bool = True,
) -> dict:
    overrides = [
        "model=image_1d", f"quantizer={quantizer}", *recipe_overrides(quantizer)[0],
        f"quantizer.codebook_size={codebook_size}", f"model.encoder.num_latent_tokens={tokens}",
        f"trainer.max_steps={steps}", "test=false", f"data.val_samples={val_samples}",
        "callbacks.progress_bar.refresh_rate=0", "logger=csv", *extra,
    ]
    started = time.time()
    result = train(compose_train_config(overrides, work / f"{quantizer}_{tokens}"))
    seconds = time.time() - started
    report = evaluate(result["checkpoint"], split="val", out=str(work / f"{quantizer}_{tokens}" / "eval"),
                      latent_stats=False, fid=fid, lpips=lpips)
    m = report["metrics"]
    return {
        "quantizer": quantizer, "tokens": tokens, "steps": steps, "train_s": round(seconds, 1),
        "psnr": m["psnr"], "ssim": m["ssim"],
        "lpips": m.get("lpips", float("nan")), "rfid": m.get("rfid", float("nan")),  # NaN: skipped
        "usage": m["codebook/usage"], "perplexity": m["codebook/perplexity"], "dead": m["codebook/dead"],
    }


def _or_dash(value: float, spec: str) -> str:
    """``value`` formatted, or "-" when it was not measured (NaN)."""
    return "-" if math.isnan(value) else format(value, spec)


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
            f"{r['ssim']:.3f} | {_or_dash(r['lpips'], '.3f')} | {_or_dash(r['rfid'], '.1f')} | {r['usage']:.3f} | "
            f"{r['perplexity']:.1f} | {r['dead']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantizers", nargs="+", default=["softvq", "vq", "ema_vq"])
    parser.add_argument("--tokens", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--steps", type=int, default=None, help="default: the CPU recipe's trainer.max_steps")
    parser.add_argument("--codebook-size", type=int, default=None, help="default: the CPU recipe's")
    parser.add_argument("--val-samples", type=int, default=128)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--no-fid", action="store_true", help="skip rFID (Inception v3)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (VGG16)")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every run (last wins)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    _, recipe_steps, recipe_codebook_size = recipe_overrides("softvq")
    args.steps = args.steps or recipe_steps
    args.codebook_size = args.codebook_size or recipe_codebook_size
    command = " ".join(["python benchmarks/softvq_tokens.py", *argv])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for tokens in args.tokens:
            for quantizer in args.quantizers:
                row = run_one(
                    quantizer, tokens, args.steps, args.codebook_size, work, args.val_samples, args.override,
                    fid=not args.no_fid, lpips=not args.no_lpips,
                )
                rows.append(row)
                print(f"[{len(rows)}/{len(args.tokens) * len(args.quantizers)}] {row}", flush=True)
                table = write_results(rows, command, args.out_dir)  # after every run: a cut-short grid keeps its rows
    print(table)
    return rows


def write_results(rows: list[dict], command: str, out_dir: Path) -> str:
    """(Re)write softvq_tokens.csv and softvq_tokens.md with ``rows``; returns the markdown table."""
    with open(out_dir / "softvq_tokens.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown(rows, command)
    (out_dir / "softvq_tokens.md").write_text(table)
    return table


if __name__ == "__main__":
    main()
