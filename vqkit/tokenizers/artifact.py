"""The artifact format shared by every modality: a directory with ``config.json`` (+ weights).

``config.json`` starts with ``format``/``format_version``/``modality``; the ``modality`` picks the
tokenizer class from a registry filled by ``@register_tokenizer`` (``vqkit.tokenizers`` imports every
modality). Each class reads its own directory with ``from_artifact``; neural tokenizers keep their
weights in ``model.safetensors``. Nothing is ever unpickled, and configs that name modules are
checked before anything is built: every ``_target_`` (nested ones too) must be a ``torch.nn.Module``
subclass defined inside the ``vqkit`` package.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
from torch import nn

FORMAT = "vqkit-tokenizer"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_TARGET_PATTERN = re.compile(r"vqkit(\.[A-Za-z][A-Za-z0-9_]*)+")
_ALLOWED_SPECIAL_KEYS = ("_target_", "_args_")
_PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeConfigError(ValueError):
    """A tokenizer config asks for something other than plain data and vqkit modules."""


class ArtifactClass(Protocol):
    """What a registered tokenizer class provides."""

    modality: str

    @classmethod
    def from_artifact(cls, path: Path, config: dict[str, Any], device: str | torch.device) -> Any: ...


TOKENIZER_CLASSES: dict[str, ArtifactClass] = {}


def register_tokenizer(cls):
    """Class decorator: ``load_tokenizer`` builds artifacts whose ``modality`` is ``cls.modality`` with ``cls``."""
    modality = cls.modality
    if modality in TOKENIZER_CLASSES and TOKENIZER_CLASSES[modality] is not cls:
        raise ValueError(f"modality {modality!r} is already registered by {TOKENIZER_CLASSES[modality].__name__}")
    TOKENIZER_CLASSES[modality] = cls
    return cls


def tokenizer_class(config: Any, source: str = "config") -> ArtifactClass:
    """Check an artifact config's header (format, version, modality) and return the class that reads it.

    Raises:
        ValueError: not a vqkit tokenizer config, a newer format version, or an unknown modality.
    """
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{source}: not a vqkit tokenizer config (format {found!r}, expected {FORMAT!r})")
    version = config.get("format_version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{source}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{source}: format_version {version} was written by a newer vqkit (this one reads up to "
            f"{FORMAT_VERSION}); upgrade vqkit"
        )
    modality = config.get("modality")
    if modality not in TOKENIZER_CLASSES:
        raise ValueError(f"{source}: unknown modality {modality!r}; known: {', '.join(sorted(TOKENIZER_CLASSES))}")
    return TOKENIZER_CLASSES[modality]


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """Load a tokenizer artifact directory, as written by ``python -m vqkit.export`` or ``save``.

    Nothing is unpickled; neural tokenizers are rebuilt only from ``torch.nn.Module`` classes of
    the ``vqkit`` package (every ``_target_`` is checked first), and returned in eval mode.

    Args:
        path: the artifact directory.
        device: where to put the weights.

    Returns:
        the tokenizer of the config's ``modality`` (``ImageTokenizer`` for ``"image"``, ...).

    Raises:
        FileNotFoundError: the directory or a file it needs is missing.
        UnsafeConfigError: the config names something other than a vqkit module or holds non-plain data.
        ValueError: unknown format, version or modality, unreadable files, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; a tokenizer directory holds {CONFIG_NAME} and its weights")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    return tokenizer_class(config, source=str(config_file)).from_artifact(path, config, device)


def build_module(node: Any, where: str) -> nn.Module:
    """Instantiate a ``_target_`` config after checking all of it (see ``_check_node``)."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be an object with a _target_, got {node!r}")
    _check_node(node, where)
    from hydra.utils import instantiate  # here, not at the top: keeps hydra out of `import vqkit`

    return instantiate(node)


def _check_node(node: Any, where: str) -> None:
    """Refuse anything but plain JSON data and ``_target_`` nodes naming vqkit ``nn.Module`` classes."""
    if isinstance(node, dict):
        if "_target_" in node:
            _check_target(node["_target_"], where)
        for key, value in node.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: keys must be strings, got {key!r}")
            if key.startswith("_") and key.endswith("_") and key not in _ALLOWED_SPECIAL_KEYS:
                raise UnsafeConfigError(
                    f"{where}.{key} is not allowed in a tokenizer config (only {', '.join(_ALLOWED_SPECIAL_KEYS)})"
                )
            _check_node(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_node(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node:
            raise UnsafeConfigError(f"{where} = {node!r}: interpolations are not allowed in a tokenizer config")
    elif not isinstance(node, _PLAIN_TYPES):
        raise UnsafeConfigError(f"{where} holds a {type(node).__name__}; only plain JSON data is allowed")


def _check_target(target: Any, where: str) -> None:
    """Refuse a ``_target_`` unless it resolves to an ``nn.Module`` class defined in vqkit (nothing is called)."""
    refused = f"{where}._target_ = {target!r} is refused: only torch.nn.Module classes of vqkit may be named"
    if not isinstance(target, str) or not _TARGET_PATTERN.fullmatch(target):
        raise UnsafeConfigError(refused)
    parts = target.split(".")
    obj: Any = importlib.import_module(parts[0])
    for depth, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, ModuleType):
            try:
                obj = importlib.import_module(".".join(parts[:depth]))
            except ImportError as err:
                raise UnsafeConfigError(f"{refused} (it cannot be imported: {err})") from err
        else:
            raise UnsafeConfigError(f"{refused} ({part!r} is not an attribute of {obj!r})")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.startswith("vqkit.")):
        raise UnsafeConfigError(f"{refused} (it resolves to {obj!r})")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
