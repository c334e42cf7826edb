"""Train a tokenizer from Hydra configs: ``python -m vqkit.train quantizer=ema_vq data=imagenet data.root=...``.

compose -> run the ``prepare`` steps -> instantiate data, model (the tokenizer), module (its training),
callbacks, loggers, trainer -> fit -> test -> one summary line saying where the checkpoint, config,
metrics and samples are.
"""

from __future__ import annotations

import json
import logging
import sys
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
from vqkit.callbacks.validate_at_last_step import ValidateAtLastStep
from vqkit.config import CONF_DIR, register_resolvers
from vqkit.files import write_atomically
from vqkit.lit.run_config import module_from_config, resolved_config
from vqkit.lit.trainer_setup import ensure_checkpointing, instantiate_collection, save_final_checkpoint
from vqkit.preflight import check_run_config, main_argv_check
from vqkit.resume import (
    changed_sections,
    command_overrides,
    read_checkpoint,
    record_overrides,
    refuse_model_changes,
    refuse_state_mismatch,
    resume_checkpoint,
    resumed_config,
)
from vqkit.third_party_noise import silence_third_party_noise

register_resolvers()
silence_third_party_noise()

log = logging.getLogger("vqkit.train")


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
    ckpt_path = resume_checkpoint(cfg)
    resuming = cfg.get("resume") is not None
    if resuming:
        overrides = command_overrides(cfg) or []
        cfg = resumed_config(cfg)  # the run's own overrides, then this command's
    check_run_config(cfg)  # mixed modalities, spellings that do nothing: refused before anything is built
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(cfg)
    config_path = output_dir / "config.yaml"
    if resuming:
        stored = read_checkpoint(ckpt_path)  # the checkpoint resumed: its config and tensors, memory-mapped
        refuse_model_changes(resolved, stored, cfg, overrides)
        config_path = output_dir / "config.resumed.yaml"  # written once the resume is known to fit
    else:
        write_atomically(config_path, OmegaConf.to_yaml(resolved).encode())
        record_overrides(cfg, output_dir)

    for step in cfg.get("prepare") or []:
        instantiate(step)
    datamodule = instantiate(cfg.data)
    module = module_from_config(cfg, resolved)
    if resuming:
        changed = changed_sections(OmegaConf.to_container(OmegaConf.load(output_dir / "config.yaml")), resolved)
        refuse_state_mismatch(module, stored, cfg, changed)
        del stored
        if changed:
            log.warning("resume: the config differs from the run's config.yaml in %s; the new one is used", changed)
        write_atomically(config_path, OmegaConf.to_yaml(resolved).encode())
    callbacks = instantiate_collection(cfg.get("callbacks"))
    ensure_checkpointing(callbacks, cfg, output_dir)
    callbacks.append(ValidateAtLastStep())  # validation metrics, samples and the checkpoint monitor for any max_steps
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
        write_atomically(output_dir / "metrics.json", json.dumps(result, indent=2).encode())
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
def _hydra_main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Exception:
        # Hydra prints the error to stderr only; the run folder's train.log keeps it beside the outputs.
        log.exception("vqkit.train failed")
        raise


def main() -> None:
    """``python -m vqkit.train`` / ``vqkit-train``: former option spellings are named before Hydra composes."""
    main_argv_check(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
