"""Train a tokenizer from Hydra configs: ``python -m vqkit.train quantizer=ema_vq data=imagenet data.root=...``.

compose -> run the ``prepare`` steps -> instantiate data, model (the tokenizer), module (its training),
callbacks, loggers, trainer -> fit -> test -> one summary line saying where the checkpoint, config,
metrics and samples are.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vqkit.callbacks.audio_samples import AudioSamples
from vqkit.callbacks.reconstruction_grid import ReconstructionGrid
from vqkit.callbacks.reproducible_epochs import ReproducibleEpochs
from vqkit.config import CONF_DIR, register_resolvers
from vqkit.lit.checkpoint_io import check_checkpoint_file
from vqkit.lit.run_config import module_from_config, resolved_config
from vqkit.third_party_noise import silence_third_party_noise

register_resolvers()
silence_third_party_noise()

log = logging.getLogger("vqkit.train")


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a name -> config mapping; ``name: null`` disables one."""
    if not cfg:
        return []
    return [instantiate(node) for node in cfg.values() if node is not None and "_target_" in node]


def save_final_checkpoint(trainer: L.Trainer) -> str | None:
    """Write ``last.ckpt`` at the step training stopped (the callback saves only at epoch ends)."""
    callback = trainer.checkpoint_callback
    if callback is None or trainer.fast_dev_run or not getattr(callback, "dirpath", None):
        return None
    path = str(Path(callback.dirpath) / "last.ckpt")
    trainer.save_checkpoint(path, weights_only=False)  # the full training state (optimizers, loops): resumable
    return path


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` starts from: ``ckpt_path``, else ``<resume>/checkpoints/last.ckpt``.

    Raises:
        FileNotFoundError: the run folder or the checkpoint does not exist, with what to do instead.
        ValueError: the file cannot be a checkpoint (empty, truncated, an image...); Lightning reads it later
            through ``AtomicCheckpointIO``, i.e. ``vqkit.lit.checkpoint_io.load_checkpoint``.
    """
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(
                f"resume={resume}: not a vqkit run folder (no config.yaml in it); give the folder a run printed "
                "in its summary line, e.g. resume=outputs/train/<timestamp>"
            )
        if ckpt_path is None:
            last = run_dir / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise FileNotFoundError(
                    f"resume={resume}: {last} does not exist (the run stopped before its first checkpoint); "
                    "start the run again without resume="
                )
            ckpt_path = str(last)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    if ckpt_path is not None:
        check_checkpoint_file(ckpt_path)  # an empty, cut-short or foreign file fails here, before data and model
    return ckpt_path


def _latest_samples(callbacks: list[Any]) -> str | None:
    """The newest picture a sample callback wrote (reconstruction grid, spectrograms), if any."""
    for callback in callbacks:
        if isinstance(callback, ReconstructionGrid) and callback.latest:
            return str(callback.dirpath / "recon_latest.png")
        if isinstance(callback, AudioSamples) and callback.latest:
            return str(callback.dirpath / "spec_latest.png")
    return None


def _is_ddp_without_unused_detection(strategy: Any) -> bool:
    """True for a DDP strategy (a ``DDPStrategy`` config or the string ``"ddp"``) that does not find unused
    parameters."""
    if isinstance(strategy, str):
        return strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", "")).endswith(".DDPStrategy") and not strategy.get("find_unused_parameters")
    return False


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns the final metrics and the paths of its outputs."""
    started = time.time()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    ckpt_path = resume_checkpoint(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(cfg)
    config_path = output_dir / "config.yaml"
    if cfg.get("resume") is not None:
        previous = OmegaConf.to_container(OmegaConf.load(config_path))
        keys = (set(previous) | set(resolved)) - {"resume", "ckpt_path"}
        changed = sorted(k for k in keys if previous.get(k) != resolved.get(k))
        if changed:
            log.warning("resume: the config differs from the run's config.yaml in %s; the new one is used", changed)
        config_path = output_dir / "config.resumed.yaml"
    config_path.write_text(OmegaConf.to_yaml(resolved))

    for step in cfg.get("prepare") or []:
        instantiate(step)
    datamodule = instantiate(cfg.data)
    module = module_from_config(cfg, resolved)
    callbacks = instantiate_collection(cfg.get("callbacks"))
    if cfg.get("seed") is not None:
        callbacks.append(ReproducibleEpochs(cfg.seed))
    loggers = instantiate_collection(cfg.get("logger"))
    trainer_overrides: dict[str, Any] = {}
    if not module.automatic_optimization and cfg.trainer.get("gradient_clip_val") is not None:
        # Lightning refuses automatic clipping with manual optimization; such modules clip by themselves.
        log.info("manual optimization: trainer.gradient_clip_val ignored, the model clips its own gradients")
        trainer_overrides["gradient_clip_val"] = None
    strategy = cfg.trainer.get("strategy")
    if not module.automatic_optimization and _is_ddp_without_unused_detection(strategy):
        # A GAN step runs two backward passes, each through part of the parameters (generator, discriminator):
        # DDP must be told that some parameters get no gradient in a pass, or it stops at the second one.
        log.info("manual optimization under DDP: find_unused_parameters=True (generator and discriminator steps)")
        trainer_overrides["strategy"] = (instantiate(strategy, find_unused_parameters=True)
                                         if isinstance(strategy, DictConfig) else "ddp_find_unused_parameters_true")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_overrides)

    # vqkit checkpoints hold tensors and plain data only: resuming never runs the full unpickler.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    checkpoint = save_final_checkpoint(trainer)
    if cfg.get("test") and not trainer.fast_dev_run:
        trainer.test(module, datamodule=datamodule)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    samples = _latest_samples(callbacks)
    result = {
        "output_dir": str(output_dir),
        "checkpoint": checkpoint or None,
        "config": str(config_path),
        "metrics_file": str(output_dir / "metrics.json"),
        "samples": samples,
        "metrics": metrics,
        "seconds": round(time.time() - started, 1),
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        print(summary_line(result), flush=True)
    return result


HEADLINE = (
    "test/psnr", "test/ssim", "test/si_snr", "test/mel_distance", "test/bytes_per_token", "test/codebook/usage",
    "val/psnr",
)


def summary_line(result: dict[str, Any]) -> str:
    """One line: where everything is, and the headline metrics."""
    m = result["metrics"]
    headline = " ".join(
        f"{k}={m[k]:.4g}" for k in HEADLINE if k in m
    )
    return (
        f"vqkit: finished in {result['seconds']:.0f}s | {headline} | checkpoint: {result['checkpoint']} | "
        f"config: {result['config']} | metrics: {result['metrics_file']} | samples: {result['samples']}"
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
