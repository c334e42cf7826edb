"""From tokens to generation at CPU scale: tokenizer -> pre-tokenized photos -> AR prior -> gFID and throughput.

Each cell trains one tokenizer on the embedded photos (``make train``'s data and steps), with only the model and
its token count changed, then runs the toolkit's own commands, each as a subprocess:

1. ``python -m vqkit.train <cell overrides>``, ``vqkit.export``, and ``vqkit.eval fid=true`` (rFID, PSNR on the
   128 held-out test crops);
2. ``python -m vqkit.tokenize`` of the training split (the 1,600 first-epoch crops) and of the test split;
3. ``python -m vqkit.train_prior`` with the same prior (``--prior-*``) for the same steps, validated on the test
   tokens after every epoch; then ``--samples`` unconditional samples decoded by the tokenizer, their gFID against
   the 128 real test crops, and the prior's sampling throughput (items/s, batch 64, KV cache).

Cells: ``conv_vq_144`` (make train's conv f4 tokenizer: 12 x 12 ids of 1,024 codes at 48 px), ``1d_vq_64`` and
``1d_vq_32`` (the 1-D tokenizer, ``model=image_1d``, with 64 / 32 latent tokens, 1,024 codes), each with
``prior=ar``; ``1d_softvq_32`` (the same 1-D tokenizer with SoftVQ: 32 continuous tokens) with ``prior=flow``
(the same transformer size, flow matching, 50 Euler steps per sample).

"Steps to a fixed loss" (``prior=ar`` cells): the first validation (once per prior epoch) at which a cell's
``val/bits_per_token`` reaches the highest final value over those cells, so every one reaches it; a flow loss is
not in bits, so the flow cell is compared by gFID at equal steps. Finished steps are kept (their
outputs exist) and skipped on a re-run. Writes ``generation.csv`` / ``.md`` and ``generation_<cell>.png``
(sample grids) to ``--out-dir``.

    python benchmarks/generation.py                    # every cell (about 15-25 min each on 2 cores)
    python benchmarks/generation.py --cells conv_vq_144
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_files import fmt, write_csv  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
# cell -> (tokenizer overrides, prior)
CELLS: dict[str, tuple[list[str], str]] = {
    "conv_vq_144": ([], "ar"),
    "1d_vq_64": (["model=image_1d", "model.encoder.num_latent_tokens=64"], "ar"),
    "1d_vq_32": (["model=image_1d", "model.encoder.num_latent_tokens=32"], "ar"),
    "1d_softvq_32": (["model=image_1d", "model.encoder.num_latent_tokens=32", "quantizer=softvq"], "flow"),
}
COLUMNS = [
    "cell", "prior", "tokens", "codes", "psnr", "rfid", "prior_params", "prior_steps", "prior_val_loss",
    "prior_val_bits_per_token", "steps_to_fixed_loss", "gfid", "samples", "gfid_real", "prior_items_per_s",
    "decode_items_per_s", "tokenizer_seconds", "prior_seconds",
]


def run(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """Run a vqkit command, its output to ``log``; a failure stops the benchmark naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise RuntimeError(f"`python -m {' '.join(cmd)}` failed ({proc.returncode}); see {log}")


def steps_at_loss(csv_path: Path, target: float) -> int | None:
    """The first step whose validation ``val/bits_per_token`` is <= target, from the prior run's metrics.csv."""
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get("val/bits_per_token")
            if value and float(value) <= target + 1e-9:
                return int(row["step"])
    return None


def run_cell(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    folder = args.runs_dir / name
    tok_run, artifact = folder / "tokenizer", folder / "artifact"
    started = time.time()
    if not (tok_run / "metrics.json").exists():
        run(["vqkit.train", *CELLS[name][0], f"trainer.max_steps={args.steps}", "test=false", *args.override,
             f"hydra.run.dir={tok_run}"], folder / "train.log", env)
    if not (artifact / "config.json").exists():
        run(["vqkit.export", f"ckpt_path={tok_run / 'checkpoints' / 'last.ckpt'}", f"out={artifact}"],
            folder / "export.log", env)
    evaluation = folder / "eval" / "eval_metrics.json"
    if not evaluation.exists():
        run(["vqkit.eval", f"ckpt_path={tok_run / 'checkpoints' / 'last.ckpt'}", f"out={folder / 'eval'}",
             "fid=true", "lpips=false"], folder / "eval.log", env)
    tokenizer_seconds = time.time() - started
    data = [o for o in args.override if o.startswith("data.")]  # the tokenizer's data settings, also when tokenizing
    for split in ("train", "test"):
        if not (folder / f"tokens_{split}" / "manifest.json").exists():
            run(["vqkit.tokenize", f"tokenizer={artifact}", f"out={folder / f'tokens_{split}'}", f"split={split}",
                 "progress=false", *data], folder / f"tokenize_{split}.log", env)
    prior_run = folder / "prior"
    started = time.time()
    if not (prior_run / "metrics.json").exists():
        run(["vqkit.train_prior", f"prior={CELLS[name][1]}", f"tokens={folder / 'tokens_train'}",
             f"val_tokens={folder / 'tokens_test'}",
             f"trainer.max_steps={args.prior_steps}", f"prior.dim={args.prior_dim}", f"prior.depth={args.prior_depth}",
             f"prior.num_heads={args.prior_heads}", f"sample.num={args.samples}", "gfid.enabled=true",
             f"hydra.run.dir={prior_run}"], folder / "train_prior.log", env)
    prior_seconds = time.time() - started
    ev = json.loads(evaluation.read_text())["metrics"]
    pm = json.loads((prior_run / "metrics.json").read_text())["metrics"]
    manifest = json.loads((folder / "tokens_train" / "manifest.json").read_text())
    shape = manifest["item_shape"]
    from safetensors import safe_open

    with safe_open(str(prior_run / "prior" / "prior.safetensors"), framework="pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    grid = prior_run / "samples" / "grid.png"
    if grid.exists():
        shutil.copyfile(grid, args.out_dir / f"generation_{name}.png")
    kind = CELLS[name][1]
    return {
        "cell": name, "prior": kind, "tokens": math.prod(shape[:-1] if kind == "flow" else shape),
        "codes": manifest["tokenizer"]["codebook_size"], "psnr": ev.get("psnr"), "rfid": ev.get("rfid"),
        "prior_params": params, "prior_steps": args.prior_steps, "prior_val_loss": pm.get("val/loss"),
        "prior_val_bits_per_token": pm.get("val/bits_per_token"), "gfid": pm.get("sample/gfid"),
        "samples": args.samples, "gfid_real": pm.get("sample/gfid_real_items"),
        "prior_items_per_s": pm.get("sample/prior_items_per_s"),
        "decode_items_per_s": pm.get("sample/decode_items_per_s"),
        "tokenizer_seconds": round(tokenizer_seconds), "prior_seconds": round(prior_seconds),
        "metrics_csv": str(prior_run / "csv" / "metrics.csv"),
    }


def write_tables(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> None:
    discrete = [r for r in rows if r["prior"] == "ar"]  # flow losses are not in bits: no common loss to reach
    target = max((float(r["prior_val_bits_per_token"]) for r in discrete), default=float("nan"))
    for r in discrete:
        r["steps_to_fixed_loss"] = steps_at_loss(Path(r["metrics_csv"]), target)
    write_csv(args.out_dir / "generation.csv", rows, COLUMNS)
    lines = [
        f"Embedded photos at 48 px, tokenizers {args.steps} steps, AR prior dim {args.prior_dim} / depth "
        f"{args.prior_depth} for {args.prior_steps} steps (batch 32), {args.samples} unconditional samples, gFID "
        f"against the real test crops (gfid_real); steps to fixed loss: first validation at <= {target:.4g} "
        "bits/token. "
        f"{datetime.date.today()}, {os.cpu_count()} CPU cores. Command: `{command}`",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    (args.out_dir / "generation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS))
    p.add_argument("--steps", type=int, default=600, help="tokenizer training steps (make train's)")
    p.add_argument("--prior-steps", type=int, default=600)
    p.add_argument("--prior-dim", type=int, default=192)
    p.add_argument("--prior-depth", type=int, default=4)
    p.add_argument("--prior-heads", type=int, default=6)
    p.add_argument("--samples", type=int, default=128, help="samples drawn for gFID and the grid")
    p.add_argument("--threads", type=int, default=2, help="OMP/torch threads of every command")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of every tokenizer run")
    p.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("VQKIT_OUTPUTS", "outputs")) / "generation")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = [run_cell(name, args, env) for name in args.cells]
    write_tables(rows, args, "python benchmarks/generation.py " + " ".join(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
