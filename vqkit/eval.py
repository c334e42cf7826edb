"""Evaluate a trained tokenizer: ``python -m vqkit.eval ckpt_path=PATH [split=test] [out=DIR] [data.KEY=VALUE]``.

Rebuilds the data, the model and its training module from the config the checkpoint stores (read
without unpickling code) and runs ``trainer.test`` (``split=val``: ``trainer.validate``) once over
the whole split: the module's own metrics (images: PSNR/SSIM, audio: SI-SNR/mel distance, text:
bytes per token, exact tokens), its loss terms and codebook usage / perplexity / dead codes, plus
for image models LPIPS and rFID (reconstructions against their own inputs). Writes
``eval_metrics.json`` / ``.csv``, ``latent_stats.json`` (per-channel mean/std of z_q, for latent
diffusion) and, for image models with ``save_reconstructions=N``, PNGs. Options: conf/eval.yaml.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from vqkit.config import CONF_DIR, register_resolvers
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.lit.run_config import module_from_config
from vqkit.metrics.latent_stats import LatentStatistics
from vqkit.third_party_noise import silence_third_party_noise

silence_third_party_noise()

OPTIONS = ("split", "out", "accelerator", "lpips", "fid", "save_reconstructions", "latent_stats", "max_batches",
           "allow_pickle")


def perceptual_metrics(lpips: bool, fid: bool) -> dict[str, Any]:
    """LPIPS and rFID metrics ``(reconstructions, images)`` in [0, 1] (lazy: they need the installed assets)."""
    metrics: dict[str, Any] = {}
    try:
        if lpips:
            from vqkit.metrics.perceptual import LPIPSMetric

            metrics["lpips"] = LPIPSMetric(option=None)  # no eval option sets its file
        if fid:
            from vqkit.metrics.fid import ReconstructionFID

            metrics["rfid"] = ReconstructionFID(option=None)
    except FileNotFoundError as err:  # an asset is not installed: the message says how; eval can also go without
        off = "lpips=false" if "lpips" not in metrics and lpips else "fid=false"
        raise FileNotFoundError(f"{err} To evaluate without it, pass {off}.") from err
    return metrics


class EvalRecorder(Callback):
    """Collects what the metrics do not: latent statistics and the first reconstructions of the split."""

    def __init__(self, token_dim: int, save_reconstructions: int) -> None:
        self.stats = LatentStatistics(token_dim)
        self.save_reconstructions = save_reconstructions
        self.pairs: list[torch.Tensor] = []

    def _record(self, pl_module: L.LightningModule, outputs: Any) -> None:
        out, data = outputs["output"], outputs["data"]
        self.stats.to(out.quantized.z_q.device).update(out.quantized.z_q, out.quantized.mask)
        missing = self.save_reconstructions - len(self.pairs)
        if missing > 0 and pl_module.model.modality == "image":
            x_hat = pl_module.model.denormalize(out.reconstruction)
            self.pairs.extend(torch.stack([data.float(), x_hat], 1).cpu()[:missing])

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(pl_module, outputs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._record(pl_module, outputs)


@torch.no_grad()
def evaluate(ckpt_path: str, overrides: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    """Run the evaluation (options as in conf/eval.yaml); returns the metrics and the paths written.

    Args:
        ckpt_path: a checkpoint written by ``vqkit.train``.
        overrides: values merged into the stored data config (e.g. ``{"root": "/data/imagenet"}``).
        **options: ``split``, ``out``, ``accelerator``, ``lpips``, ``fid``, ``save_reconstructions``,
            ``latent_stats``, ``max_batches``, ``allow_pickle``.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: unknown option or split, or a checkpoint without a stored vqkit config.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted(OPTIONS)} (see conf/eval.yaml)")
    opts = {**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval.yaml")), **options}
    split = opts["split"]
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    checkpoint = load_checkpoint(ckpt_path, allow_pickle=opts["allow_pickle"])
    if "vqkit_config" not in checkpoint:
        raise ValueError(f"{ckpt_path} has no stored vqkit config: it was not written by `python -m vqkit.train`")
    register_resolvers()
    cfg = OmegaConf.create(checkpoint["vqkit_config"])
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.create({"data": dict(overrides)}))
    out = Path(opts["out"] or Path(ckpt_path).resolve().parent.parent / f"eval_{split}")
    out.mkdir(parents=True, exist_ok=True)

    module = module_from_config(cfg)
    module.load_state_dict(checkpoint["state_dict"])
    if module.model.modality == "image":
        extra = perceptual_metrics(bool(opts["lpips"]), bool(opts["fid"]))
        if extra:
            getattr(module, f"{split}_metrics").add_metrics(extra)
    recorder = EvalRecorder(module.model.token_dim, int(opts["save_reconstructions"]))
    limit = int(opts["max_batches"]) if opts["max_batches"] is not None else None  # None: all, without a notice
    trainer = L.Trainer(
        accelerator=opts["accelerator"], devices=1, logger=False, enable_checkpointing=False,
        callbacks=[recorder, TQDMProgressBar(refresh_rate=5)], limit_test_batches=limit, limit_val_batches=limit,
        enable_model_summary=False,
    )
    datamodule = instantiate(cfg.data)
    run = trainer.test if split == "test" else trainer.validate
    run(module, datamodule=datamodule, verbose=False)

    prefix = f"{split}/"
    results = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith(prefix) and v.numel() == 1}
    stats = recorder.stats.compute()
    results["num_samples"] = int(recorder.stats.count_images)
    paths = {"metrics_json": str(out / "eval_metrics.json"), "metrics_csv": str(out / "eval_metrics.csv")}
    if opts["latent_stats"]:
        (out / "latent_stats.json").write_text(json.dumps(stats, indent=2))
        paths["latent_stats"] = str(out / "latent_stats.json")
    if recorder.pairs:
        folder = out / "reconstructions"
        folder.mkdir(exist_ok=True)
        for j, pair in enumerate(recorder.pairs):
            save_image(pair[1], folder / f"{j:05d}.png")
        save_image(make_grid(torch.stack(recorder.pairs).flatten(0, 1), nrow=2, padding=2), out / "pairs.png")
        paths["reconstructions"] = str(folder)
    report = {"checkpoint": str(ckpt_path), "split": split, "metrics": results, "paths": paths}
    (out / "eval_metrics.json").write_text(json.dumps(report, indent=2))
    with open(out / "eval_metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "value"])
        writer.writerows(sorted(results.items()))
    return report


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate as an eval config (conf/eval.yaml composed with overrides) says, and print one line."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise SystemExit("usage: python -m vqkit.eval ckpt_path=PATH [split=test] [out=DIR] [data.KEY=VALUE ...] "
                         "(options: conf/eval.yaml)")
    options = {k: cfg[k] for k in OPTIONS}
    report = evaluate(str(cfg.ckpt_path), OmegaConf.to_container(cfg.data), **options)
    summary = " ".join(f"{k}={v:.4g}" for k, v in report["metrics"].items())
    print(f"vqkit.eval: {summary} | results: {report['paths']['metrics_json']}", flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``data.KEY=VALUE`` arguments may add keys the stored data config has (Hydra: ``+data.KEY``)."""
    args = sys.argv[1:] if argv is None else argv
    args = [f"+{a}" if a.startswith("data.") else a for a in args]
    if argv is None:
        sys.argv = [sys.argv[0], *args]
        _hydra_main()
        return
    from vqkit.config import compose_config

    run(compose_config("eval", args))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
