"""Export a training checkpoint as a tokenizer artifact: ``python -m vqkit.export ckpt_path=PATH out=DIR``.

The artifact is the run's model: its config subtree (``vqkit_config.model``) and its tensors (the
``model.*`` entries of the checkpoint's state dict), written by ``TokenizerModel.save_pretrained`` as
``config.json`` + ``model.safetensors``: no discriminator, loss or metric states, no optimizer, nothing
pickled. The model is rebuilt with the same checks as ``load_tokenizer`` (only ``torch.nn.Module``
classes of vqkit), from a config whose file arguments are replaced (``checkpoint_model``): the artifact is
self-contained, and export needs no file but the checkpoint. Text (GQ-VAE) models export a vocabulary
tokenizer (``vqkit.tokenizers.text``).

The checkpoint is read with ``torch.load(weights_only=True)``; checkpoints written by ``vqkit.train``
need nothing else. One that holds other Python objects is refused unless ``allow_pickle=true``, which
runs the full unpickler and therefore any code the file contains: use it only for files you trust.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from vqkit.config import CONF_DIR
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.models.artifact import resolve_target, self_contained_config
from vqkit.models.base import TokenizerModel
from vqkit.third_party_noise import silence_third_party_noise

log = logging.getLogger("vqkit.export")
silence_third_party_noise()

TEXT_OPTIONS = ("vocab_size", "vocab_prune", "vocab_strings", "vocab_rows", "vocab_text")


def model_config(checkpoint: dict[str, Any], source: Path) -> dict[str, Any]:
    """The model's config subtree stored in a ``vqkit.train`` checkpoint.

    Raises:
        ValueError: the checkpoint has no ``vqkit_config.model`` with a ``_target_``.
    """
    run_config = checkpoint.get("vqkit_config")
    model = run_config.get("model") if isinstance(run_config, dict) else None
    if not isinstance(model, dict) or "_target_" not in model:
        raise ValueError(
            f"{source} has no vqkit_config.model with the model's config: export needs a checkpoint written by "
            "vqkit.train, which stores its resolved config under 'vqkit_config'"
        )
    return model


def model_state(checkpoint: dict[str, Any], source: Path) -> dict[str, Any]:
    """The model's tensors: the checkpoint's ``model.*`` state-dict entries, without the prefix."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{source} has no state_dict")
    kept = {name[len("model."):]: t for name, t in state.items() if name.startswith("model.")}
    if not kept:
        raise ValueError(f"{source}: its state_dict has no model.* entries (not a vqkit.train checkpoint?)")
    return kept


def checkpoint_model(checkpoint: dict[str, Any], source: Path) -> TokenizerModel:
    """The model of a ``vqkit.train`` checkpoint, built and loaded without the files its config names.

    The config's file arguments (vqgan_lc's ``codebook_path``, vqbridge's ``init_codebook_path``) are replaced
    for the checkpoint's tensors (``self_contained_config``): the codebook is in the weights, so export works
    where the training files are not, and the artifact's config names no file.

    Raises:
        ValueError: no model config or weights in the checkpoint, or they do not fit.
    """
    state = model_state(checkpoint, source)
    config = self_contained_config(model_config(checkpoint, source), {k: tuple(v.shape) for k, v in state.items()},
                                   f"{source}: vqkit_config.model")
    model = TokenizerModel.from_config(config, f"{source}: vqkit_config.model")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the weights of {source} do not fit the model of its vqkit_config: {err}") from err
    return model


def export_tokenizer(ckpt_path: str | os.PathLike, out: str | os.PathLike, allow_pickle: bool = False,
                     **text_options: Any) -> Any:
    """Write the tokenizer artifact of a checkpoint into the folder ``out``.

    Args:
        ckpt_path: a checkpoint written by ``vqkit.train``.
        out: the artifact folder (created; its config.json and model.safetensors are replaced atomically).
        allow_pickle: see ``vqkit.lit.checkpoint_io.load_checkpoint``.
        **text_options: for text models, ``vocab_size``, ``strings``, ``prune``, ``vocab_rows``, ``vocab_text`` of
            ``vqkit.tokenizers.text.export_text_checkpoint``; refused for other models.

    Returns:
        the exported model (eval mode), or the ``GQTokenizer`` of a text model.

    Raises:
        ValueError: the checkpoint lacks the config or weights of the model, or they do not fit.
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path, allow_pickle)
    config = model_config(checkpoint, ckpt_path)
    from vqkit.tokenizers.text import LEGACY_MODULE_TARGETS

    if config["_target_"] in LEGACY_MODULE_TARGETS:  # a vqkit 0.1 text checkpoint: converted on export
        return export_text(checkpoint, ckpt_path, out, **text_options)
    cls = resolve_target(config["_target_"], f"{ckpt_path}: vqkit_config.model")
    if not issubclass(cls, TokenizerModel):
        raise ValueError(
            f"{ckpt_path}: vqkit_config.model builds {config['_target_']}, not a vqkit.models tokenizer model: a "
            "checkpoint of vqkit 0.1 (image/audio models were not yet one nn.Module); retrain it with this vqkit"
        )
    if cls.modality == "text":
        return export_text(checkpoint, ckpt_path, out, **text_options)
    if text_options:
        names = ", ".join(sorted(text_options))
        raise ValueError(f"{names} only apply to text (GQ-VAE) checkpoints; {ckpt_path} is not one")
    model = checkpoint_model(checkpoint, ckpt_path)
    training = {
        "checkpoint": ckpt_path.name,
        "step": checkpoint.get("global_step"),
        "epoch": checkpoint.get("epoch"),
        "lightning_version": checkpoint.get("pytorch-lightning_version"),
    }
    model.save_pretrained(out, info={"training": training})
    log.info("kept the %d model tensors of %s", len(model.state_dict()), ckpt_path)
    model.info = {"training": training}
    return model.eval()


def export_text(checkpoint: dict[str, Any], ckpt_path: Path, out: str | os.PathLike,
                vocab_text: list[str] | None = None, **options: Any) -> Any:
    """A text model's ``GQTokenizer`` artifact; the training text is read here when the vocabulary options need it.

    Args:
        vocab_text: files or folders of training text; None: the training split of the run's own data config.
        **options: ``vocab_size``, ``strings``, ``prune``, ``vocab_rows`` of ``export_text_checkpoint``.
    """
    from vqkit.tokenizers.text import export_text_checkpoint

    documents = None
    if options.get("vocab_size") is not None or options.get("strings", "decoded") != "decoded":
        from vqkit.data.text import training_documents
        from vqkit.modalities.text_bytes import read_documents

        data_config = (checkpoint.get("vqkit_config") or {}).get("data") or {}
        documents = read_documents(vocab_text) if vocab_text else training_documents(data_config)
    elif vocab_text:
        raise ValueError("vocab_text is read only with vocab_size or vocab_strings=empirical")
    return export_text_checkpoint(checkpoint, ckpt_path, out, documents=documents, **options)


def text_options(cfg: DictConfig) -> dict[str, Any]:
    """The text-export options of an export config that differ from their defaults, as export_tokenizer takes them."""
    options: dict[str, Any] = {}
    if cfg.vocab_size is not None:
        options["vocab_size"] = int(cfg.vocab_size)
    if cfg.vocab_prune != "usage":
        options["prune"] = str(cfg.vocab_prune)
    if cfg.vocab_strings != "decoded":
        options["strings"] = str(cfg.vocab_strings)
    if int(cfg.vocab_rows) != 100_000:
        options["vocab_rows"] = int(cfg.vocab_rows)
    if cfg.vocab_text is not None:
        paths = cfg.vocab_text if OmegaConf.is_list(cfg.vocab_text) else str(cfg.vocab_text).split(",")
        options["vocab_text"] = [str(p) for p in paths if str(p)]
    return options


def run(cfg: DictConfig) -> int:
    """Export as ``cfg`` (conf/export.yaml) says; returns the exit status (1 when the export fails, 2 for usage)."""
    missing = [key for key in ("ckpt_path", "out") if OmegaConf.is_missing(cfg, key) or not cfg[key]]
    if missing:
        return _usage(f"missing {' and '.join(missing)}")
    if not isinstance(cfg.allow_pickle, bool):  # bool("no") is True: only the literals true/false are accepted
        return _usage(f"allow_pickle must be true or false, got {cfg.allow_pickle!r}")
    try:
        options = text_options(cfg)
    except ValueError:
        return _usage(f"vocab_size and vocab_rows are integers, got {cfg.vocab_size!r} and {cfg.vocab_rows!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        artifact = export_tokenizer(cfg.ckpt_path, cfg.out, bool(cfg.allow_pickle), **options)
    except (OSError, ValueError, TypeError, pickle.UnpicklingError) as err:
        print(f"vqkit.export: error: {err}", file=sys.stderr)
        return 1
    if artifact.modality == "text":
        details = f"text tokenizer, vocabulary of {artifact.vocab_size} (256 bytes + learned pieces)"
        shortfall = artifact.config.get("vocabulary", {}).get("note")
        if shortfall:
            details += f" | warning: {shortfall}"
        step = artifact.config.get("training", {}).get("step")
    else:
        details = (f"{artifact.modality} tokenizer, {artifact.codebook_size} codes, {artifact.token_dim}-dim tokens, "
                   f"soft={artifact.soft}")
        step = artifact.info["training"]["step"]
    print(f"vqkit: exported {cfg.ckpt_path} (step {step}) -> {cfg.out} | {details}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Programmatic entry point: ``main(["ckpt_path=...", "out=..."])`` composes conf/export.yaml with the overrides."""
    if argv is None:
        _hydra_main()
        return 0
    from hydra.errors import HydraException

    from vqkit.config import compose_config

    try:
        cfg = compose_config("export", argv)
    except HydraException as err:  # an unknown option or a malformed override
        return _usage(str(err))
    return run(cfg)


def _usage(problem: str) -> int:
    print(f"vqkit.export: {problem}\nusage: python -m vqkit.export ckpt_path=PATH out=DIR [allow_pickle=false] "
          "[vocab_size=N ...] (see conf/export.yaml)", file=sys.stderr)
    return 2


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    status = run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    _hydra_main()
