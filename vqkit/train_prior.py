"""Train a generative prior on pre-tokenized data: ``python -m vqkit.train_prior tokens=DIR [prior=ar]``.

compose -> data (``TokenDataModule`` over the token folder) -> the prior sized by the data (vocabulary, sequence
length, classes) -> fit -> ``<run>/prior`` (safetensors + JSON) -> draw ``sample.num`` items, decode them with the
token folder's tokenizer, write ``<run>/samples`` (PNGs + ``grid.png``, or WAVs) -> ``metrics.json`` with the
validation loss and the generation throughput (items/s of the prior alone and of decoding). Options:
conf/train_prior.yaml; ``resume=<run>`` continues a run from its ``last.ckpt``.
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

from vqkit.config import CONF_DIR, register_resolvers
from vqkit.data.token_shards import file_digest, read_manifest, split_dataset
from vqkit.files import write_atomically
from vqkit.lit.prior_module import PriorModule
from vqkit.lit.trainer_setup import ensure_checkpointing, instantiate_collection, save_final_checkpoint
from vqkit.models.artifact import CONFIG_NAME, WEIGHTS_NAME
from vqkit.prior.artifact import save_prior
from vqkit.prior.sampling import decode_items, draw, write_samples
from vqkit.third_party_noise import silence_third_party_noise
from vqkit.tokenizers.artifact import load_tokenizer

register_resolvers()
silence_third_party_noise()
log = logging.getLogger("vqkit.train_prior")

KINDS = {"vqkit.prior.ARPrior": "ar", "vqkit.prior.FlowPrior": "flow"}
INPUTS = {"ar": "ids", "flow": "tokens"}


def prior_options(cfg: DictConfig, datamodule: Any) -> tuple[str, dict[str, Any]]:
    """The prior's kind and constructor arguments: its config plus the sizes the token folder fixes."""
    options = OmegaConf.to_container(cfg.prior, resolve=True)
    target = options.pop("_target_")
    if target not in KINDS:
        raise ValueError(f"prior._target_={target!r} is not a vqkit prior ({sorted(KINDS)})")
    kind = KINDS[target]
    if datamodule.key != INPUTS[kind]:
        held = "continuous tokens of a soft quantizer" if datamodule.key == "tokens" else "discrete ids"
        fits = "prior=flow" if datamodule.key == "tokens" else "prior=ar"
        raise ValueError(f"{cfg.tokens} holds {held}; prior={kind} models {INPUTS[kind]}: use {fits}")
    options.update(seq_len=datamodule.seq_len, num_classes=datamodule.num_classes)
    if kind == "ar":
        options["vocab_size"] = datamodule.vocab_size
    else:
        options["token_dim"] = datamodule.token_dim
    return kind, options


def sample_tokenizer(cfg: DictConfig, manifest: dict[str, Any]) -> Any | None:
    """The artifact that decodes samples: ``tokenizer=`` or the manifest's; its files must match the digest."""
    path = Path(cfg.tokenizer or manifest["tokenizer"]["path"])
    if not (path / CONFIG_NAME).is_file():
        log.warning("no tokenizer at %s to decode the samples (pass tokenizer=DIR); writing ids only", path)
        return None
    digest = file_digest([path / CONFIG_NAME, path / WEIGHTS_NAME])
    if digest != manifest["tokenizer"]["digest"]:
        raise ValueError(f"the tokenizer at {path} is not the one that made {cfg.tokens} (digest {digest[:12]} vs "
                         f"{manifest['tokenizer']['digest'][:12]}); pass tokenizer=<that artifact>")
    return load_tokenizer(path)


def real_images(manifest: dict[str, Any], limit: int) -> torch.Tensor:
    """Up to ``limit`` images of the data and split a token folder was made from (its manifest says which)."""
    dataset = split_dataset(instantiate(manifest["data"]), manifest["split"])
    count = min(len(dataset), limit)
    return torch.stack([dataset[i]["image"] for i in range(count)])


def generation_fid(generated: torch.Tensor, real: torch.Tensor, batch_size: int = 32) -> float:
    """FID between generated and real images (B, 3, H, W) in [0, 1], with the offline FID Inception."""
    from vqkit.metrics.fid import InceptionFID

    fid = InceptionFID()
    for images, is_real in ((generated, False), (real, True)):
        for i in range(0, len(images), batch_size):
            fid.update(images[i:i + batch_size], real=is_real)
    return float(fid.compute())


def sample(cfg: DictConfig, prior: torch.nn.Module, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Draw, decode and write ``cfg.sample.num`` items; returns their paths and throughput."""
    s = cfg.sample
    classes = getattr(prior, "num_classes", 0)
    labels = torch.arange(s.num) % classes if classes else None
    prior.eval()
    options = ({"steps": s.flow_steps} if prior.input_key == "tokens"
               else {"temperature": s.temperature, "top_k": s.top_k})
    ids, seconds = draw(prior, s.num, labels, batch_size=s.batch_size, seed=s.seed, cfg_scale=s.cfg_scale, **options)
    folder = out / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    if prior.input_key == "ids":
        write_atomically(folder / "ids.json", json.dumps({"ids": ids.tolist(), "labels": None if labels is None
                                                          else labels.tolist()}).encode())
    result: dict[str, Any] = {"sample/prior_items_per_s": s.num / seconds, "sample/prior_seconds": seconds}
    tokenizer = sample_tokenizer(cfg, manifest)
    if tokenizer is not None:
        shape = manifest["item_shape"][1:] if manifest.get("views", 1) > 1 else manifest["item_shape"]
        data, decode_seconds = decode_items(tokenizer, ids, shape)
        result["sample/decode_items_per_s"] = s.num / decode_seconds
        result["samples"] = str(write_samples(data, tokenizer.modality, folder,
                                              getattr(tokenizer, "sample_rate", None)))
        if cfg.gfid.enabled and tokenizer.modality == "image":
            reference = read_manifest(cfg.val_tokens) if cfg.val_tokens else manifest
            real = real_images(reference, int(cfg.gfid.max_real))
            result["sample/gfid"] = generation_fid(data, real)
            result["sample/gfid_real_items"] = len(real)
            log.info("gFID %.2f: %d samples against %d real images of the %s split", result["sample/gfid"],
                     len(data), len(real), reference["split"])
    elif cfg.gfid.enabled:
        raise ValueError("gfid.enabled needs the tokenizer to decode the samples; pass tokenizer=DIR")
    return result


def train_prior(cfg: DictConfig) -> dict[str, Any]:
    """Run one prior training job (see the module docstring); returns the metrics and the paths written."""
    started = time.time()
    ckpt_path = None
    if cfg.get("resume"):
        ckpt_path = Path(cfg.resume) / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"resume={cfg.resume}: {ckpt_path} does not exist (not a prior run folder?)")
    for folder in (cfg.tokens, cfg.val_tokens):  # named errors before Hydra wraps them in its own
        if folder is not None:
            read_manifest(folder)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    kind, options = prior_options(cfg, datamodule)
    prior = instantiate({"_target_": OmegaConf.select(cfg, "prior._target_"), **options})
    if kind == "flow":
        prior.set_normalization(*datamodule.token_stats())
    module_cfg = OmegaConf.to_container(cfg.module, resolve=True)
    module = PriorModule(prior, optimizer=instantiate(module_cfg["optimizer"]),
                         scheduler=instantiate(module_cfg["scheduler"]) if module_cfg.get("scheduler") else None,
                         class_dropout=module_cfg.get("class_dropout", 0.1))
    config = OmegaConf.to_container(cfg, resolve=True)
    write_atomically(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)).encode())
    callbacks = instantiate_collection(cfg.get("callbacks"))
    ensure_checkpointing(callbacks, cfg, output_dir)
    loggers = instantiate_collection(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    checkpoint = save_final_checkpoint(trainer)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result: dict[str, Any] = {"output_dir": str(output_dir), "checkpoint": checkpoint, "prior": None}
    if trainer.is_global_zero:
        manifest = datamodule.manifest
        info = {"tokens": str(Path(cfg.tokens).resolve()), "tokenizer": manifest["tokenizer"],
                "item_shape": manifest["item_shape"], "views": manifest.get("views", 1), "step": trainer.global_step}
        result["prior"] = str(save_prior(prior, output_dir / "prior", kind, options, info))
        if cfg.sample.num > 0:
            metrics.update({k: v for k, v in sample(cfg, prior, manifest, output_dir).items() if k != "samples"})
            result["samples"] = str(output_dir / "samples")
        result.update(metrics=metrics, seconds=round(time.time() - started, 1),
                      metrics_file=str(output_dir / "metrics.json"))
        write_atomically(output_dir / "metrics.json", json.dumps(result, indent=2).encode())
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in ("val/loss", "val/bits_per_token",
                                                           "sample/prior_items_per_s") if k in metrics)
        print(f"vqkit.train_prior: finished in {result['seconds']:.0f}s | {shown} | prior: {result['prior']} | "
              f"samples: {result.get('samples')}", flush=True)
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train_prior")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        train_prior(cfg)
    except (OSError, ValueError) as err:
        print(f"vqkit.train_prior: error: {err}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """``python -m vqkit.train_prior`` / ``vqkit-train-prior``."""
    _hydra_main()


if __name__ == "__main__":
    main()
