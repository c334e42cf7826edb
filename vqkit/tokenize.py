"""Pre-tokenize a dataset: ``python -m vqkit.tokenize tokenizer=ARTIFACT data=<data config> out=DIR [split=train]``.

Encodes every item of one split with a trained image or audio tokenizer (``python -m vqkit.export``) through
Lightning's predict loop and writes token shards plus ``manifest.json`` (format: ``vqkit.data.token_shards``):
ids for hard quantizers (with ``num_tokens`` for variable-length ones), continuous tokens for soft ones, labels
and file paths when the data has them. Options: conf/tokenize.yaml.

- Resumable: shards are written atomically as each completes; running the same command again skips the
  finished ones (a shard made by other settings stops the run instead of being mixed in).
- Distributed: ``trainer.devices=2 trainer.strategy=ddp`` (or torchrun / SLURM) deals shard s to rank
  s mod world_size; no sampler pads or repeats items, so there are no duplicates and no gaps.
- Read the result with ``vqkit.data.token_shards.load_tokens(out)`` or ``TokenShards(out)``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from vqkit.callbacks.token_shard_writer import TokenShardWriter
from vqkit.config import CONF_DIR
from vqkit.data.token_shards import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ShardedSplit,
    ShardPlan,
    file_digest,
    finished_shards,
    plan_digest,
    read_manifest,
    shard_name,
    split_dataset,
    write_manifest,
)
from vqkit.lit.tokenize_module import TokenizeModule
from vqkit.models.artifact import CONFIG_NAME, WEIGHTS_NAME
from vqkit.models.base import TokenizerModel
from vqkit.third_party_noise import silence_third_party_noise
from vqkit.tokenizers.artifact import load_tokenizer

log = logging.getLogger("vqkit.tokenize")
silence_third_party_noise()


def build_manifest(folder: Path, plan: ShardPlan, digest: str, settings: dict[str, Any], model: TokenizerModel,
                   module: TokenizeModule) -> dict[str, Any]:
    """What a reader needs without opening a shard: sizes, dtype, item shape, the tokenizer, every shard."""
    from safetensors import safe_open

    with safe_open(str(folder / shard_name(0)), framework="pt") as f:
        first = f.get_slice(module.key)
        dtype, item_shape = first.get_dtype(), list(first.get_shape()[1:])
        keys = sorted(f.keys())
    tokenizer = {
        "path": settings["tokenizer_path"], "digest": settings["tokenizer"], "modality": model.modality,
        "codebook_size": model.codebook_size, "token_dim": model.token_dim, "soft": model.soft,
        "variable_tokens": module.variable, "num_stages": getattr(model.quantizer, "num_stages", None),
    }
    if model.modality == "audio":
        tokenizer.update(sample_rate=model.sample_rate, frame_rate=model.frame_rate)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "plan": digest, "complete": True,
        "num_items": plan.num_items, "num_shards": plan.num_shards, "shard_size": plan.shard_size,
        "key": module.key, "dtype": dtype, "item_shape": item_shape, "views": module.views, "tensors": keys,
        "split": settings["split"], "augment": settings["augment"], "tokenizer": tokenizer, "data": settings["data"],
        "shards": [{"file": shard_name(s), "count": len(plan.items(s))} for s in range(plan.num_shards)],
    }


def tokenize(tokenizer: str, out: str, data: DictConfig | dict[str, Any], split: str = "train",
             shard_size: int = 1024, batch_size: int | None = None, augment: str = "none",
             token_dtype: str = "float32", progress: bool = True,
             trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Encode one split into token shards (see the module docstring); returns the manifest.

    Raises:
        FileNotFoundError: no artifact at ``tokenizer`` (or a data path of the data config).
        ValueError: a text artifact, a tokenizer and data of different modalities, bad options, or an ``out``
            folder holding shards of other settings.
    """
    model = load_tokenizer(tokenizer)
    if not isinstance(model, TokenizerModel):
        raise ValueError(f"{tokenizer} is a {model.modality} tokenizer; vqkit.tokenize encodes image and audio "
                         "data (text: GQTokenizer.encode_batch)")
    data_cfg = data if isinstance(data, DictConfig) else OmegaConf.create(data)
    datamodule = instantiate(data_cfg)
    modality = getattr(datamodule, "modality", model.modality)
    if modality != model.modality:
        raise ValueError(f"data={data_cfg.get('_target_')} holds {modality} data but {tokenizer} is a "
                         f"{model.modality} tokenizer; pick a data config of its modality")
    dataset = split_dataset(datamodule, split)
    plan = ShardPlan(len(dataset), int(shard_size))
    module = TokenizeModule(model, augment, token_dtype)
    folder = Path(out)
    artifact = Path(tokenizer)
    settings = {
        "tokenizer": file_digest([artifact / CONFIG_NAME, artifact / WEIGHTS_NAME]),
        "data": OmegaConf.to_container(data_cfg, resolve=True), "split": split, "shard_size": plan.shard_size,
        "num_items": plan.num_items, "augment": augment, "token_dtype": token_dtype,
    }
    digest = plan_digest(settings)
    settings["tokenizer_path"] = str(artifact.resolve())
    if (folder / MANIFEST).exists():
        manifest = read_manifest(folder)
        if manifest.get("plan") == digest and manifest.get("complete"):
            log.info("%s already holds the %d items of this split (%d shards): nothing to do", folder,
                     plan.num_items, plan.num_shards)
            return manifest
    finished_shards(folder, plan, digest)  # fail now, before any work, if the folder is another run's
    folder.mkdir(parents=True, exist_ok=True)

    size = int(batch_size or getattr(datamodule, "batch_size", 16))
    workers = getattr(datamodule, "num_workers", 0)
    writer = TokenShardWriter(folder, plan, digest, getattr(dataset, "item_path", None))
    callbacks: list[Any] = [writer]
    if progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    runner = L.Trainer(
        logger=False, enable_checkpointing=False, enable_model_summary=False, use_distributed_sampler=False,
        enable_progress_bar=progress, callbacks=callbacks, **dict(trainer or {}),
    )
    split_data = ShardedSplit(dataset, plan, folder, digest, size, workers)
    with warnings.catch_warnings():  # ShardBatches yields every item once (no drop_last to set): Lightning's
        warnings.filterwarnings("ignore", message="You are using a custom batch sampler")  # caution is moot
        runner.predict(module, datamodule=split_data, return_predictions=False)
    runner.strategy.barrier()
    manifest: dict[str, Any] = {}
    if runner.is_global_zero:
        missing = sorted(set(range(plan.num_shards)) - finished_shards(folder, plan, digest))
        if missing:
            raise RuntimeError(f"shards {missing[:10]} of {folder} were not written; run the same command again")
        manifest = build_manifest(folder, plan, digest, settings, model, module)
        write_manifest(folder, manifest)
        log.info("vqkit.tokenize: %d items of the %s split -> %s (%d shards, %s %s per item)", plan.num_items,
                 split, folder, plan.num_shards, manifest["dtype"], manifest["item_shape"])
    runner.strategy.barrier()
    return manifest or read_manifest(folder)


def run(cfg: DictConfig) -> int:
    """Tokenize as a tokenize config (conf/tokenize.yaml composed with overrides) says; 0 on success."""
    missing = [key for key in ("tokenizer", "out") if OmegaConf.is_missing(cfg, key)]
    if missing:
        print(f"vqkit.tokenize: {' and '.join(missing)} must be given\nusage: python -m vqkit.tokenize "
              "tokenizer=ARTIFACT out=DIR [data=photos] [split=train] [shard_size=1024] (see conf/tokenize.yaml)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = tokenize(
            str(cfg.tokenizer), str(cfg.out), cfg.data, split=cfg.split, shard_size=cfg.shard_size,
            batch_size=cfg.batch_size, augment=cfg.augment, token_dtype=cfg.token_dtype, progress=cfg.progress,
            trainer=OmegaConf.to_container(cfg.trainer, resolve=True),
        )
    except (OSError, ValueError, KeyError) as err:
        print(f"vqkit.tokenize: error: {err}", file=sys.stderr)
        return 1
    print(f"vqkit.tokenize: {manifest['num_items']} items -> {cfg.out} ({manifest['num_shards']} shards, "
          f"{manifest['key']} {manifest['dtype']} {manifest['item_shape']})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Programmatic entry point: ``main(["tokenizer=...", "out=..."])`` composes conf/tokenize.yaml."""
    if argv is None:
        _hydra_main()
        return 0
    from vqkit.config import compose_config

    return run(compose_config("tokenize", argv))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tokenize")
def _hydra_main(cfg: DictConfig) -> None:
    status = run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    _hydra_main()
