"""The artifact format: a folder with ``config.json`` (+ ``model.safetensors``), read without running code.

``config.json`` holds a header (``format``, ``format_version``, ``vqkit_version``, ``modality``) and the
config subtree of the model (``model``: ``_target_`` nodes and plain data). Nothing is ever unpickled,
and a config is checked before anything is built: every ``_target_`` (nested ones too) must be a
``torch.nn.Module`` subclass defined inside the ``vqkit`` package, and only plain JSON data may sit
around them. The builder here instantiates checked configs itself (no Hydra, no interpolation).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

FORMAT = "vqkit-tokenizer"
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_TARGET_PATTERN = re.compile(r"vqkit(\.[A-Za-z][A-Za-z0-9_]*)+")
_ALLOWED_SPECIAL_KEYS = ("_target_", "_args_")
_PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeConfigError(ValueError):
    """A tokenizer config asks for something other than plain data and vqkit modules."""


def vqkit_version() -> str:
    """The running vqkit's version, recorded in every artifact's config.json."""
    from vqkit import __version__

    return __version__


def read_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """``(folder, parsed config.json)`` of an artifact folder, with its header checked.

    Raises:
        FileNotFoundError: the folder or its config.json is missing.
        ValueError: not JSON, not a vqkit tokenizer config, or written by a newer vqkit.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {folder}")
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found; a tokenizer directory holds {CONFIG_NAME} and its weights")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    check_header(config, str(config_file))
    return folder, config


def check_header(config: Any, source: str) -> None:
    """Raise unless ``config`` is a vqkit tokenizer config this version reads."""
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
    if version < FORMAT_VERSION and config.get("modality") != "text":
        raise ValueError(
            f"{source}: format_version {version} artifacts (vqkit 0.1, encoder/decoder/quantizer at the top level) "
            f"are not read by this vqkit (format {FORMAT_VERSION}: one `model` node); export the checkpoint again "
            "with `python -m vqkit.export ckpt_path=... out=...`"
        )


def build_module(node: Any, where: str) -> nn.Module:
    """Instantiate a ``_target_`` config after checking all of it (see ``check_node``).

    Nested ``_target_`` nodes are built first and passed in; ``_args_`` are positional arguments.

    Raises:
        UnsafeConfigError: anything but plain data and vqkit ``nn.Module`` classes.
        ValueError: ``node`` is not a ``_target_`` object.
    """
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be an object with a _target_, got {node!r}")
    check_node(node, where)
    return _instantiate(node, where)


def _instantiate(node: Any, where: str) -> Any:
    if isinstance(node, list):
        return [_instantiate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    values = {k: _instantiate(v, f"{where}.{k}") for k, v in node.items() if k not in _ALLOWED_SPECIAL_KEYS}
    if "_target_" not in node:
        return values
    cls = resolve_target(node["_target_"], where)
    args = [_instantiate(v, f"{where}._args_[{i}]") for i, v in enumerate(node.get("_args_", []))]
    try:
        return cls(*args, **values)
    except TypeError as err:
        raise ValueError(f"{where}: {node['_target_']} cannot be built from this config: {err}") from err


def check_node(node: Any, where: str) -> None:
    """Refuse anything but plain JSON data and ``_target_`` nodes naming vqkit ``nn.Module`` classes."""
    if isinstance(node, dict):
        if "_target_" in node:
            resolve_target(node["_target_"], where)
        for key, value in node.items():
            if not isinstance(key, str):
                raise UnsafeConfigError(f"{where}: keys must be strings, got {key!r}")
            if key.startswith("_") and key.endswith("_") and key not in _ALLOWED_SPECIAL_KEYS:
                raise UnsafeConfigError(
                    f"{where}.{key} is not allowed in a tokenizer config (only {', '.join(_ALLOWED_SPECIAL_KEYS)})"
                )
            check_node(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_node(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node:
            raise UnsafeConfigError(f"{where} = {node!r}: interpolations are not allowed in a tokenizer config")
    elif not isinstance(node, _PLAIN_TYPES):
        raise UnsafeConfigError(f"{where} holds a {type(node).__name__}; only plain JSON data is allowed")


def resolve_target(target: Any, where: str) -> type[nn.Module]:
    """The class a ``_target_`` names, refused unless it is an ``nn.Module`` class of vqkit (nothing is called)."""
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
    return obj


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
