"""``load_tokenizer``: the one safe loader of every vqkit artifact folder.

Image and audio artifacts are a ``TokenizerModel`` (``vqkit.models``: ``config.json`` with the model's
config subtree + ``model.safetensors``). Artifact classes that are not a model register here by
modality (``@register_tokenizer``): the text tokenizer, whose artifact is a vocabulary (plus,
optionally, the network). Nothing is ever unpickled, and every ``_target_`` in a config must name a
``torch.nn.Module`` class of vqkit (``vqkit.models.artifact``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch

from vqkit.files import write_atomically
from vqkit.models.artifact import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    UnsafeConfigError,
    build_module,
    read_config,
)
from vqkit.models.base import load_model

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "TOKENIZER_CLASSES",
    "UnsafeConfigError",
    "WEIGHTS_NAME",
    "build_module",
    "load_tokenizer",
    "register_tokenizer",
    "write_atomically",
]


class ArtifactClass(Protocol):
    """What a registered (non-model) tokenizer class provides."""

    modality: str

    @classmethod
    def from_artifact(cls, path: Path, config: dict[str, Any], device: str | torch.device) -> Any: ...


TOKENIZER_CLASSES: dict[str, ArtifactClass] = {}


def register_tokenizer(cls):
    """Class decorator: ``load_tokenizer`` reads artifacts whose ``modality`` is ``cls.modality`` with ``cls``."""
    modality = cls.modality
    if modality in TOKENIZER_CLASSES and TOKENIZER_CLASSES[modality] is not cls:
        raise ValueError(f"modality {modality!r} is already registered by {TOKENIZER_CLASSES[modality].__name__}")
    TOKENIZER_CLASSES[modality] = cls
    return cls


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Load a tokenizer artifact folder, as written by ``python -m vqkit.export`` or ``save_pretrained``.

    Nothing is unpickled; models are rebuilt only from ``torch.nn.Module`` classes of the ``vqkit``
    package (every ``_target_`` is checked first), and returned in eval mode.

    Args:
        path: the artifact folder.
        device: where to put the weights.

    Returns:
        an ``ImageTokenizer`` / ``AudioTokenizer`` model, or a ``GQTokenizer`` for text.

    Raises:
        FileNotFoundError: the folder or a file it needs is missing.
        UnsafeConfigError: the config names something other than a vqkit module or holds non-plain data.
        ValueError: unknown format or version, unreadable files, or weights that do not fit.
    """
    folder, config = read_config(path)
    modality = config.get("modality")
    if modality in TOKENIZER_CLASSES:
        return TOKENIZER_CLASSES[modality].from_artifact(folder, config, device)
    return load_model(folder, device)
