"""Evaluate a trained tokenizer: ``python -m vqkit.eval ckpt_path=PATH [split=test] [out=DIR] ...``.

Rebuilds the data and model from the config stored in the checkpoint (read without
unpickling code), runs the split once and writes ``eval_metrics.json`` / ``.csv``:
PSNR, SSIM, LPIPS, rFID (reconstructions against their own inputs), and codebook
usage / perplexity / dead codes over the whole split. Options:

    split=test|val              which split of the stored data config (default test)
    out=DIR                     where results go (default: <checkpoint run folder>/eval_<split>)
    device=cpu|cuda             default: cuda when available
    lpips=true fid=true         perceptual metrics (their weights come from `python -m vqkit.assets install`)
    save_reconstructions=N      write the first N reconstructions as PNG files (default 0)
    latent_stats=true           also write latent_stats.json: per-channel mean/std of z_q over the split
    max_batches=N               stop early (smoke tests)
    data.KEY=VALUE              override the stored data config (e.g. data.root=/data/imagenet)
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics import MetricCollection
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from vqkit.export import load_checkpoint
from vqkit.metrics.codebook import CodebookUsage
from vqkit.metrics.latent_stats import LatentStatistics

USAGE = "usage: python -m vqkit.eval ckpt_path=PATH [split=test] [out=DIR] [lpips=true] [fid=true] [data.KEY=VALUE ...]"
DEFAULTS = {"split": "test", "out": None, "device": None, "lpips": True, "fid": True,
            "save_reconstructions": 0, "latent_stats": True, "max_batches": None, "allow_pickle": False}


def perceptual_metrics(lpips: bool, fid: bool) -> dict[str, Any]:
    """LPIPS and rFID metrics on images in [0, 1] (imported lazily: they need the installed assets)."""
    metrics: dict[str, Any] = {}
    if lpips:
        from vqkit.metrics.perceptual import LPIPSMetric

        metrics["lpips"] = LPIPSMetric()
    if fid:
        from vqkit.metrics.fid import InceptionFID

        metrics["rfid"] = InceptionFID()
    return metrics


@torch.no_grad()
def evaluate(ckpt_path: str, overrides: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Run the evaluation; returns the metrics and the paths written."""
    opts = {**DEFAULTS, **options}
    if opts["split"] not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {opts['split']!r}")
    checkpoint = load_checkpoint(ckpt_path, allow_pickle=bool(opts["allow_pickle"]))
    if "vqkit_config" not in checkpoint:
        raise ValueError(f"{ckpt_path} has no stored vqkit config: it was not written by `python -m vqkit.train`")
    cfg = OmegaConf.create(checkpoint["vqkit_config"])
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create({"data": overrides}))
    device = torch.device(opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(opts["out"] or Path(ckpt_path).resolve().parent.parent / f"eval_{opts['split']}")
    out.mkdir(parents=True, exist_ok=True)

    model = instantiate(cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval().to(device)
    datamodule = instantiate(cfg.data)
    datamodule.setup("test" if opts["split"] == "test" else "validate")
    loader = datamodule.test_dataloader() if opts["split"] == "test" else datamodule.val_dataloader()

    image_metrics = MetricCollection({k: m.clone() for k, m in model.test_metrics.items(keep_base=True)}).to(device)
    extra = {k: m.to(device) for k, m in perceptual_metrics(bool(opts["lpips"]), bool(opts["fid"])).items()}
    usage = CodebookUsage(model.quantizer.codebook_size).to(device)
    stats = LatentStatistics(model.quantizer.dim).to(device)
    saved: list[torch.Tensor] = []
    n_save = int(opts["save_reconstructions"])
    for i, batch in enumerate(tqdm(loader, desc=f"eval {opts['split']}", unit="batch")):
        if opts["max_batches"] is not None and i >= int(opts["max_batches"]):
            break
        x = model._data(batch).to(device).float()
        x_hat_norm, q = model(model.normalize(x))
        x_hat = model.denormalize(x_hat_norm)
        image_metrics.update(x_hat, x)
        for name, metric in extra.items():
            if name == "rfid":
                metric.update(x, real=True)
                metric.update(x_hat, real=False)
            else:
                metric.update(x_hat, x)
        usage.update(q.indices)
        stats.update(q.z_q, q.mask)
        if len(saved) < n_save:
            saved.extend(torch.stack([x, x_hat], 1).cpu()[: n_save - len(saved)])

    results = {k: float(v) for k, v in image_metrics.compute().items()}
    results.update({k: float(m.compute()) for k, m in extra.items()})
    results.update({f"codebook/{k}": float(v) for k, v in usage.compute().items()})
    results["num_images"] = int(stats.count_images)
    paths = {"metrics_json": str(out / "eval_metrics.json"), "metrics_csv": str(out / "eval_metrics.csv")}
    if opts["latent_stats"]:
        (out / "latent_stats.json").write_text(json.dumps(stats.compute(), indent=2))
        paths["latent_stats"] = str(out / "latent_stats.json")
    if saved:
        folder = out / "reconstructions"
        folder.mkdir(exist_ok=True)
        for j, pair in enumerate(saved):
            save_image(pair[1], folder / f"{j:05d}.png")
        save_image(make_grid(torch.stack(saved).flatten(0, 1), nrow=2, padding=2), out / "pairs.png")
        paths["reconstructions"] = str(folder)
    report = {"checkpoint": str(ckpt_path), "split": opts["split"], "metrics": results, "paths": paths}
    (out / "eval_metrics.json").write_text(json.dumps(report, indent=2))
    with open(out / "eval_metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        writer.writerows(sorted(results.items()))
    return report


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``key=value`` arguments -> (ckpt_path, options, data overrides)."""
    cli = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    if "ckpt_path" not in cli:
        raise SystemExit(USAGE)
    ckpt_path = str(cli.pop("ckpt_path"))
    overrides = cli.pop("data", None) or {}
    unknown = sorted(set(cli) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}; known: {sorted(DEFAULTS)}\n{USAGE}")
    return ckpt_path, cli, overrides


def main(argv: list[str] | None = None) -> None:
    ckpt_path, options, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    report = evaluate(ckpt_path, overrides, **options)
    summary = " ".join(f"{k}={v:.4g}" for k, v in report["metrics"].items())
    print(f"vqkit.eval: {summary} | results: {report['paths']['metrics_json']}", flush=True)


if __name__ == "__main__":
    main()
