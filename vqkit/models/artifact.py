"""The artifact format: a folder with ``config.json`` (+ ``model.safetensors``), read without running code.

``config.json`` holds a header (``format``, ``format_version``, ``vqkit_version``, ``modality``) and the
config subtree of the model (``model``: ``_target_`` nodes and plain data). Nothing is ever unpickled,
and a config is checked before anything is built: every ``_target_`` (nested ones too) must be a
``torch.nn.Module`` subclass defined inside the ``vqkit`` package, and only plain JSON data may sit
around them. The builder here instantiates checked configs itself (no Hydra, no interpolation).

An artifact is self-contained: its weights hold every tensor (a vqgan_lc codebook too), so loading it
reads only its own folder, builds nothing and writes nothing. ``self_contained_config`` writes configs
without file arguments (each module class that takes one says what replaces it:
``self_contained_arguments``); ``check_self_contained`` refuses a model config that names a file, asks
for a build, or uses a module that reads files of its own, and ``artifact_build`` builds the model
within the size its weights can fill (``vqkit.models.allocation``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn

from vqkit.models.allocation import AllocationRefused, allocation_limit

FORMAT = "vqkit-tokenizer"
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_TARGET_PATTERN = re.compile(r"vqkit(\.[A-Za-z][A-Za-z0-9_]*)+")
_ALLOWED_SPECIAL_KEYS = ("_target_", "_args_")
_PLAIN_TYPES = (str, int, float, bool, type(None))
# Argument names that name a file or a folder: ``codebook_path``, ``init_codebook_path``, ``weights_path``, ...
FILE_ARGUMENT = re.compile(
    r"(?:^|_)(?:path|paths|file|files|filename|dir|directory|root|url|ckpt)$|^(?:weights|checkpoint)$"
)
BUILD_KEYS = ("build", "prepare")  # preparation steps (a codebook build): training configs only
# The packages a tokenizer model is made of; losses, metrics and training parts are not in an artifact.
ARTIFACT_PACKAGES = ("vqkit.models.", "vqkit.modalities.", "vqkit.quantizers.", "vqkit.layers.")
# Elements a model may create beyond those its weights hold (non-persistent buffers: position tables, ...).
SIZE_SLACK = 2**22
TENSOR_SLACK = 1000  # and tensors beyond 8 per tensor of the weights (temporaries of initialisation)
REEXPORT = "export the checkpoint again with `python -m vqkit.export ckpt_path=... out=...`"


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
    config_file = artifact_file(folder, CONFIG_NAME)
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
    except AllocationRefused as err:  # inside artifact_build: the innermost node that asked for it is named
        sizes = ", ".join(f"{k}={v}" for k, v in node.items() if type(v) is int) or "its arguments"
        raise UnsafeConfigError(
            f"{where}: {node['_target_']} with {sizes} is refused before allocating: {err} by the tensors in "
            f"{WEIGHTS_NAME}, so these sizes do not fit its weights (was {CONFIG_NAME} edited?); {REEXPORT}"
        ) from None


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


# --- self-contained artifacts ---------------------------------------------------------------------------------
def artifact_file(folder: Path, name: str) -> Path:
    """``folder / name``, refused when it is a link leading out of the folder.

    A Hugging Face cache snapshot (``.../snapshots/<revision>/``) links its files to ``../../blobs/``; links
    into that repository cache are allowed.

    Raises:
        UnsafeConfigError: the file is a symlink to a file outside the artifact.
    """
    path = Path(folder) / name
    if not path.is_symlink():
        return path
    root, real = Path(folder).resolve(), path.resolve()
    roots = [root, root.parent.parent] if root.parent.name == "snapshots" else [root]
    if not any(real.is_relative_to(r) for r in roots):
        raise UnsafeConfigError(
            f"{path} is a link to {real}, outside the artifact folder {root}; an artifact reads only its own "
            "files: copy the file into the folder instead of linking it"
        )
    return path


def weights_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of a safetensors file, read from its header (no tensor is loaded).

    Raises:
        ValueError: not a readable safetensors file.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


@contextmanager
def artifact_build(model_config: Any, where: str, weights_file: Path) -> Iterator[dict[str, tuple[int, ...]]]:
    """``with artifact_build(config, where, weights): model = build(config)``: the checks of a model built to load
    an artifact's weights into.

    Before: ``check_self_contained`` (no files, no builds, no file-reading modules). During: no tensor beyond
    what the weights (their header: nothing is loaded) can fill plus ``SIZE_SLACK`` elements, at most four
    times as many in all, and at most eight tensors per tensor of the weights plus ``TENSOR_SLACK``
    (``allocation_limit``). Yields the weights' shapes.

    Raises:
        UnsafeConfigError: the config names a file or asks for a build, or sizes the weights cannot fill.
        ValueError: the weights file is not readable.
    """
    shapes = weights_shapes(weights_file)
    check_self_contained(model_config, where, shapes)
    elements = sum(math.prod(shape) for shape in shapes.values())
    with allocation_limit(elements + SIZE_SLACK, 4 * elements + SIZE_SLACK, 8 * len(shapes) + TENSOR_SLACK):
        yield shapes


def check_self_contained(node: Any, where: str, shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a model config an artifact may not hold: one that names a file (any non-null argument named like
    ``*_path``, ``*_file``, ``*_dir``, ``*root``, ``weights``, as a keyword, a positional ``_args_`` entry or a
    key of plain options such as ``stage_options``), asks for a build (``build`` / ``prepare``), or uses a module
    that reads files when built or that is no part of a tokenizer (``ARTIFACT_PACKAGES``).

    Args:
        node: the model's config subtree.
        where: its name in messages (``".../config.json: model"``).
        shapes: the weights' tensor shapes; with them a refused file argument's message gives the exact edit.

    Raises:
        UnsafeConfigError: the first such entry, named with its value and the fix.
    """
    _check_self_contained(node, where, dict(shapes or {}), "")


def _check_self_contained(node: Any, where: str, shapes: dict[str, tuple[int, ...]], prefix: str | None) -> None:
    if isinstance(node, list):
        for i, value in enumerate(node):
            _check_self_contained(value, f"{where}[{i}]", shapes, None)
        return
    if not isinstance(node, dict):
        return
    cls = _artifact_class(node, where) if "_target_" in node else None
    for key, value in node.items():
        if key in BUILD_KEYS:
            raise UnsafeConfigError(
                f"{where}.{key} asks for a build ({json.dumps(value)[:120]}); loading an artifact builds and writes "
                f"nothing, and its {WEIGHTS_NAME} already holds the tensors a build would make: delete `{key}` "
                f"from {CONFIG_NAME}, or {REEXPORT}"
            )
        if isinstance(key, str) and FILE_ARGUMENT.search(key) and value is not None:
            raise UnsafeConfigError(_names_a_file(f"{where}.{key}", value, where, cls, node, shapes, prefix))
        child = f"{prefix}{key}." if prefix is not None and cls is not None and _is_target(value) else None
        _check_self_contained(value, f"{where}.{key}", shapes, child)
    if cls is not None:
        names = _positional_names(cls)
        for i, value in enumerate(node.get("_args_", [])):
            name = names[i] if i < len(names) else ""
            if FILE_ARGUMENT.search(name) and value is not None:
                raise UnsafeConfigError(_names_a_file(f"{where}._args_[{i}] ({name})", value, where, cls, node,
                                                      shapes, prefix))


def _artifact_class(node: dict[str, Any], where: str) -> type[nn.Module]:
    target = node["_target_"]
    cls = resolve_target(target, where)
    if not cls.__module__.startswith(ARTIFACT_PACKAGES):
        raise UnsafeConfigError(
            f"{where}._target_ = {target!r} is not part of a tokenizer model: an artifact is built from modules of "
            f"{', '.join(p.rstrip('.') for p in ARTIFACT_PACKAGES)} only"
        )
    readers = [name for name in inspect.signature(cls).parameters if FILE_ARGUMENT.search(name)]
    if readers and not hasattr(cls, "self_contained_arguments"):
        raise UnsafeConfigError(
            f"{where}._target_ = {target!r} reads files when it is built (its {', '.join(readers)} argument); an "
            f"artifact holds all its tensors in {WEIGHTS_NAME} and reads nothing else, so it cannot be part of one"
        )
    return cls


def _names_a_file(entry: str, value: Any, where: str, cls: type | None, node: dict[str, Any],
                  shapes: dict[str, tuple[int, ...]], prefix: str | None) -> str:
    message = (f"{entry} = {value!r} names a file; loading an artifact reads only its own folder ({CONFIG_NAME}, "
               f"{WEIGHTS_NAME}), and its weights hold every tensor (a codebook file's too). Older vqkit exports "
               f"kept the training run's path: {REEXPORT}")
    hook = getattr(cls, "self_contained_arguments", None)
    if hook is not None and prefix is not None and shapes:
        try:
            fix = hook(node, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)})
        except KeyError:
            return message
        edits = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fix.items())
        message += f", or edit {CONFIG_NAME}: in {where.rsplit(': ', 1)[-1]} set {edits}"
    return message


def _positional_names(cls: type) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(cls).parameters.values() if p.kind in kinds]


def _is_target(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def self_contained_config(node: Any, shapes: Mapping[str, tuple[int, ...]], where: str = "model") -> Any:
    """A copy of a model config whose file arguments are replaced as their classes say, for the model's weights.

    Each module class that takes a file (``vqgan_lc``'s ``codebook_path``, ``vqbridge``'s ``init_codebook_path``)
    or holds modules built from plain options (``residual``, ``gq``) defines
    ``self_contained_arguments(config, shapes) -> {argument: value}``: the arguments that build the same
    tensor shapes without the file (``shapes``: its own state entries, prefix removed), e.g.
    ``{"codebook_path": None, "feature_dim": F}``. A config without such classes is returned unchanged.

    Args:
        node: the model's config subtree (``_target_`` nodes are matched to state-dict prefixes by their keys:
            ``model.quantizer`` -> ``quantizer.``).
        shapes: name -> shape of the model's state dict (a checkpoint's, a safetensors header's, a model's).
        where: the config's name in messages.

    Raises:
        ValueError: a class needs a tensor the shapes do not have.
    """
    return _self_contained(node, dict(shapes), where, "")


def _self_contained(node: Any, shapes: dict[str, tuple[int, ...]], where: str, prefix: str | None) -> Any:
    if isinstance(node, list):
        return [_self_contained(v, shapes, f"{where}[{i}]", None) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    cls = resolve_target(node["_target_"], where) if "_target_" in node else None
    out = {key: _self_contained(value, shapes, f"{where}.{key}",
                                f"{prefix}{key}." if prefix is not None and cls is not None and _is_target(value)
                                else None)
           for key, value in node.items()}
    hook = getattr(cls, "self_contained_arguments", None)
    if hook is None:
        return out
    if prefix is None:
        raise ValueError(f"{where}: cannot tell which weights belong to {node['_target_']} (it is not reached "
                         "through module attributes named as the config keys)")
    try:
        out.update(hook(out, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}))
    except KeyError as err:
        raise ValueError(f"{where}: {node['_target_']} needs the weight {prefix}{err.args[0]} to write a config "
                         "without its file, and the model has no such tensor") from None
    return out
