"""Checkpoints: writing that never leaves a truncated file behind, reading that never runs pickled code."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then ``os.replace`` it.

    A run killed while saving keeps the previous complete checkpoint under the final
    name; only the temporary file is left incomplete. Local paths only (remote
    filesystems fall back to Lightning's own writer).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        path = Path(path)
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint on the CPU without running pickled code.

    Args:
        path: the ``.ckpt`` file.
        allow_pickle: fall back to the full unpickler (warns; runs any code in the file).

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file holds objects ``weights_only`` loading refuses (named in the message).
        TypeError: ``allow_pickle`` is not a bool.
        ValueError: not a readable checkpoint.
    """
    if not isinstance(allow_pickle, bool):  # a string from a CLI ("no", "false") is truthy
        raise TypeError(f"allow_pickle must be True or False, got {allow_pickle!r}")
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


def _unsafe_content(path: Path) -> str:
    """What in ``path`` weights_only loading refuses, found by scanning the pickle without running it."""
    if not zipfile.is_zipfile(path):
        return "it is not a zip-format torch.save checkpoint (a raw pickle or another kind of file)"
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    return f"it references the Python objects {', '.join(unsafe)}" if unsafe else "its pickle uses unsupported opcodes"
