"""Checkpoints: writing that never leaves a truncated file behind, reading that never runs pickled code."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vqkit.files import check_torch_file, torch_load


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

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """What Lightning reads for ``trainer.fit(ckpt_path=...)``: ``load_checkpoint`` below (CPU; the
        strategy moves the tensors). ``weights_only=False`` asks for the full unpickler."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return load_checkpoint(path, allow_pickle=weights_only is False)


NOT_A_CHECKPOINT_HINT = (
    "; give a checkpoint written by `python -m vqkit.train` (outputs/train/<run>/checkpoints/last.ckpt; "
    "resume=outputs/train/<run> picks it)"
)


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a Lightning checkpoint on the CPU without running pickled code: the one reader of checkpoints.

    ``vqkit.train`` (``ckpt_path=`` / ``resume=``, through ``AtomicCheckpointIO``), ``vqkit.eval``,
    ``vqkit.export`` and ``vqkit.tools.codebook --tokenizer`` all read checkpoints here. Errors name the file
    and say what it is instead; they never advise ``weights_only=False``.

    Args:
        path: the ``.ckpt`` file.
        allow_pickle: fall back to the full unpickler (warns; runs any code in the file).

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file holds objects ``weights_only`` loading refuses (named in the message).
        TypeError: ``allow_pickle`` is not a bool.
        ValueError: empty, truncated or corrupt, not a PyTorch file, or not a Lightning checkpoint.
    """
    if not isinstance(allow_pickle, bool):  # a string from a CLI ("no", "false") is truthy
        raise TypeError(f"allow_pickle must be True or False, got {allow_pickle!r}")
    path = Path(path)
    if allow_pickle:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        warnings.warn(
            f"allow_pickle=true: unpickling {path} can run arbitrary code; only do this for files you trust",
            UserWarning,
            stacklevel=2,
        )
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            checkpoint = torch_load(path, "PyTorch checkpoint", NOT_A_CHECKPOINT_HINT)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f"{err}. Checkpoints of vqkit.train hold only tensors and plain data; pass allow_pickle=true only "
                "if you trust this file (it can run arbitrary code)"
            ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        found = f"a dict with keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, dict) else (
            f"a {type(checkpoint).__name__}")
        raise ValueError(f"{path} is not a Lightning checkpoint (it holds {found}, no state_dict)"
                         f"{NOT_A_CHECKPOINT_HINT}")
    return checkpoint


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Fail fast, before a run builds anything, on a ``ckpt_path`` that cannot be a checkpoint (its first bytes).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, truncated, or another kind of file; the message names it and says what to give instead.
    """
    return check_torch_file(path, "PyTorch checkpoint", NOT_A_CHECKPOINT_HINT)
