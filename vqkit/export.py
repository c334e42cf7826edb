"""Export a training checkpoint as a tokenizer artifact: ``python -m vqkit.export ckpt_path=PATH out=DIR``.

The artifact (see ``vqkit.tokenizers``) holds ``config.json`` and ``model.safetensors``
with the encoder, decoder and quantizer only: no discriminator, loss or metric states,
no optimizer, nothing pickled. The checkpoint is read with ``torch.load(weights_only=True)``;
checkpoints written by ``vqkit.train`` need no extra allowed globals. A checkpoint that
holds other Python objects is refused unless ``allow_pickle=true`` is passed, which runs
the full unpickler and therefore any code the file contains: use it only for files you trust.

The model is rebuilt from the config the checkpoint stores (``vqkit_config.model``), with
the same checks as ``load_tokenizer``: only the ``encoder``, ``decoder`` and ``quantizer``
subtrees are instantiated, and only if they name ``torch.nn.Module`` classes of vqkit.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from vqkit import __version__
from vqkit.lit.tokenizer_module import TokenizerModule

log = logging.getLogger("vqkit.export")

USAGE = (
    "usage: python -m vqkit.export ckpt_path=PATH out=DIR [allow_pickle=false] [modality=auto]\n"
    "  text (GQ-VAE) checkpoints also take: [vocab_size=N] [vocab_prune=usage|gates]\n"
    "  [vocab_strings=decoded|empirical] [vocab_rows=100000]\n"
    "  [vocab_text=PATH[,PATH...]] (default: the training split of the run's own data config)"
)
TEXT_OPTIONS = ("vocab_size", "vocab_prune", "vocab_strings", "vocab_rows", "vocab_text")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint on the CPU without running pickled code.

    Args:
        path: the ``.ckpt`` file.
        allow_pickle: fall back to the full unpickler (warns; runs any code in the file).

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file holds objects ``weights_only`` loading refuses (named in the message).
        ValueError: not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if allow_pickle:
        warnings.warn(
            f"allow_pickle=true: unpickling {path} can run arbitrary code; only do this for files you trust",
            UserWarning,
            stacklevel=2,
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise pickle.UnpicklingError(
            f"refusing to load {path}: {_unsafe_content(path)}. Checkpoints of vqkit.train hold only tensors "
            "and plain data; pass allow_pickle=true only if you trust this file (it can run arbitrary code)"
        ) from None
    except RuntimeError as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {err}") from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a Lightning checkpoint: it holds a {type(checkpoint).__name__}")
    return checkpoint


def artifact_config(checkpoint: dict[str, Any], source: Path, modality: str = "auto") -> dict[str, Any]:
    """The tokenizer config (without the fields derived from the quantizer) of a vqkit.train checkpoint.

    Args:
        checkpoint: the loaded checkpoint.
        source: its path; only the file name is recorded.
        modality: the tokenizer class the artifact loads as; ``"auto"``: the model's ``data_key``
            when it names a registered modality (``"audio"``), else ``"image"``.

    Raises:
        ValueError: the checkpoint has no ``vqkit_config`` with a model config.
    """
    from vqkit.tokenizers import FORMAT, FORMAT_VERSION, PARTS  # (image/audio path, being rewritten)

    run_config = checkpoint.get("vqkit_config")
    model = run_config.get("model") if isinstance(run_config, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(part), dict) for part in PARTS):
        raise ValueError(
            f"{source} has no vqkit_config.model with encoder, decoder and quantizer configs: export needs a "
            "checkpoint written by vqkit.train, which stores its resolved config under 'vqkit_config'"
        )
    defaults = {name: p.default for name, p in inspect.signature(TokenizerModule).parameters.items()}
    if modality == "auto":
        from vqkit.tokenizers import TOKENIZER_CLASSES

        key = model.get("data_key", defaults["data_key"])
        modality = key if key in TOKENIZER_CLASSES else "image"
    data_range = model.get("data_range", defaults["data_range"])
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vqkit_version": __version__,
        "modality": modality,
        **{part: model[part] for part in PARTS},
        "data": {
            "mean": model.get("data_mean", defaults["data_mean"]),
            "std": model.get("data_std", defaults["data_std"]),
            "range": list(data_range) if data_range is not None else None,
            "key": model.get("data_key", defaults["data_key"]),
        },
        "training": {
            "checkpoint": source.name,
            "step": checkpoint.get("global_step"),
            "epoch": checkpoint.get("epoch"),
            "lightning_version": checkpoint.get("pytorch-lightning_version"),
        },
    }


def is_text_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """Whether a vqkit.train checkpoint holds a GQ-VAE text model (``vqkit.models.TextTokenizer``)."""
    run_config = checkpoint.get("vqkit_config")
    model = run_config.get("model") if isinstance(run_config, dict) else None
    return isinstance(model, dict) and model.get("_target_") in (
        "vqkit.models.TextTokenizer", "vqkit.models.text.TextTokenizer",
        "vqkit.lit.GQModule", "vqkit.lit.gq_module.GQModule",  # vqkit 0.1 checkpoints (converted on export)
    )


def export_tokenizer(
    ckpt_path: str | os.PathLike, out: str | os.PathLike, allow_pickle: bool = False, modality: str = "auto",
    **text_options: Any,
) -> Any:
    """Write the tokenizer artifact of a checkpoint into the directory ``out``.

    Args:
        ckpt_path: a checkpoint written by ``vqkit.train``.
        out: the artifact directory (created; its config.json and model.safetensors are replaced).
        allow_pickle: see ``load_checkpoint``.
        modality: the tokenizer class the artifact loads as.
        **text_options: for text checkpoints, ``vocab_size``, ``strings``, ``prune``, ``vocab_rows``, ``vocab_text`` of
            ``vqkit.tokenizers.text.export_text_checkpoint``; refused for other checkpoints.

    Returns:
        the exported tokenizer, in eval mode.

    Raises:
        ValueError: the checkpoint lacks the config or weights of the model, or they do not match.
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = load_checkpoint(ckpt_path, allow_pickle)
    if is_text_checkpoint(checkpoint):  # GQ-VAE text tokenizers export a vocabulary (vqkit.tokenizers.text)
        from vqkit.tokenizers.text import export_text_checkpoint

        return export_text_checkpoint(checkpoint, ckpt_path, out, **text_options)
    if text_options:
        raise ValueError(
            f"{', '.join(sorted(text_options))} only apply to text (GQ-VAE) checkpoints; {ckpt_path} is not one"
        )
    from vqkit.tokenizers import PARTS, tokenizer_from_config  # (image/audio path, being rewritten)

    config = artifact_config(checkpoint, ckpt_path, modality)
    quantizer = config["quantizer"]
    if isinstance(quantizer, dict) and quantizer.get("init_codebook_path"):
        # the file only seeded the trained codes, which the weights hold: the artifact must not need it
        config["quantizer"] = {**quantizer, "init_codebook_path": None}
    tokenizer = tokenizer_from_config(config, source=f"{ckpt_path} (vqkit_config.model)")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{ckpt_path} has no state_dict")
    kept = {name: t for name, t in state.items() if name.split(".", 1)[0] in PARTS}
    try:
        tokenizer.load_state_dict(kept, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the weights of {ckpt_path} do not fit the model of its vqkit_config: {err}") from err
    dropped = sorted({name.split(".", 1)[0] for name in state} - set(PARTS))
    log.info(
        "kept %d tensors of %s; dropped %d (%s)",
        len(kept),
        "/".join(PARTS),
        len(state) - len(kept),
        ", ".join(dropped) or "none",
    )
    tokenizer.save(out)
    return tokenizer.eval()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 when the export fails, 2 for usage errors)."""
    args = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE)
        return 0
    options = {"allow_pickle": "false", "modality": "auto"}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("ckpt_path", "out", *options, *TEXT_OPTIONS):
            return _usage_error(
                f"expected key=value with key in ckpt_path, out, {', '.join((*options, *TEXT_OPTIONS))}; got {arg!r}"
            )
        options[key] = value
    missing = [key for key in ("ckpt_path", "out") if not options.get(key)]
    if missing:
        return _usage_error(f"missing {' and '.join(missing)}")
    allow_pickle = options["allow_pickle"].lower()
    if allow_pickle not in _TRUE + _FALSE:
        return _usage_error(f"allow_pickle must be true or false, got {options['allow_pickle']!r}")
    text_options: dict[str, Any] = {}
    try:
        for key in ("vocab_size", "vocab_rows"):
            if key in options:
                text_options[key] = int(options[key])
    except ValueError:
        return _usage_error(f"vocab_size and vocab_rows are integers, got {options.get('vocab_size')!r}, "
                            f"{options.get('vocab_rows')!r}")
    if "vocab_strings" in options:
        text_options["strings"] = options["vocab_strings"]
    if "vocab_prune" in options:
        text_options["prune"] = options["vocab_prune"]
    if "vocab_text" in options:
        text_options["vocab_text"] = [p for p in options["vocab_text"].split(",") if p]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        tokenizer = export_tokenizer(options["ckpt_path"], options["out"], allow_pickle in _TRUE, options["modality"],
                                     **text_options)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        print(f"vqkit.export: error: {err}", file=sys.stderr)
        return 1
    if tokenizer.modality == "text":
        details = f"text tokenizer, vocabulary of {tokenizer.vocab_size} (256 bytes + learned pieces)"
    else:
        details = (
            f"{tokenizer.modality} tokenizer, {tokenizer.codebook_size} codes, {tokenizer.token_dim}-dim tokens, "
            f"soft={tokenizer.soft}"
        )
    print(
        f"vqkit: exported {options['ckpt_path']} (step {tokenizer.config['training']['step']}) -> {options['out']} | "
        f"{details}",
        flush=True,
    )
    return 0


def _usage_error(message: str) -> int:
    print(f"vqkit.export: {message}\n{USAGE}", file=sys.stderr)
    return 2


def _unsafe_content(path: Path) -> str:
    """What in ``path`` weights_only loading refuses, found by scanning the pickle without running it."""
    if not zipfile.is_zipfile(path):
        return "it is not a zip-format torch.save checkpoint (a raw pickle or another kind of file)"
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return f"it references the Python objects {', '.join(unsafe)}" if unsafe else "its pickle uses unsupported opcodes"


if __name__ == "__main__":
    sys.exit(main())
