"""Trained tokenizers as artifacts: a directory with ``config.json`` and ``model.safetensors``.

``python -m vqkit.export`` writes them from a training checkpoint; ``load_tokenizer``
reads them back without the training configs and without unpickling anything:

    >>> tok = load_tokenizer("artifacts/photos-f4")
    >>> ids = tok.encode(images)   # (B, 3, H, W) in [0, 1] -> int64 (B, H/f, W/f), or (B, N) for 1-D models
    >>> recon = tok.decode(ids)    # -> (B, 3, H, W) in [0, 1]

``config.json`` names the encoder, decoder and quantizer by ``_target_`` configs. Since
such a file may come from anyone, every ``_target_`` (nested ones too) must be a
``torch.nn.Module`` subclass defined inside the ``vqkit`` package, and is checked
before anything is instantiated. The ``modality`` field picks the tokenizer class.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer

FORMAT = "vqkit-tokenizer"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PARTS = ("encoder", "decoder", "quantizer")

ImageInput = Tensor | Image.Image | str | os.PathLike

_TARGET_PATTERN = re.compile(r"vqkit(\.[A-Za-z][A-Za-z0-9_]*)+")
_ALLOWED_SPECIAL_KEYS = ("_target_", "_args_")
_PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeConfigError(ValueError):
    """A tokenizer config asks for something other than plain data and vqkit modules."""


class Tokenizer(nn.Module, ABC):
    """An encoder, a quantizer and a decoder plus the config that rebuilds them.

    Modalities subclass it with ``encode``/``decode`` in their own data format; the
    artifact format (``save``, ``load_tokenizer``) is shared. ``codebook_size``,
    ``token_dim`` and ``soft`` in the config are derived from the quantizer.

    Args:
        encoder: maps normalized data to ``(tokens (B, N, D), shape)``.
        decoder: maps ``(tokens (B, N, D), shape)`` back to normalized data.
        quantizer: any backend of the quantizer contract.
        config: the artifact config (``format``, ``modality``, the ``_target_`` subtrees, ...).

    Raises:
        ValueError: the config states a ``codebook_size``/``token_dim``/``soft`` the quantizer does not have.
    """

    modality: ClassVar[str]

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer, config: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.quantizer = quantizer
        derived = {
            "codebook_size": quantizer.codebook_size,
            "token_dim": quantizer.dim,
            "soft": bool(getattr(quantizer, "soft", False)),
        }
        stale = {key: config[key] for key in derived if key in config and config[key] != derived[key]}
        if stale:
            raise ValueError(f"config states {stale} but the quantizer has {derived}; the config was edited by hand?")
        rest = copy.deepcopy(config)
        head = {key: rest.pop(key) for key in ("format", "format_version", "vqkit_version", "modality") if key in rest}
        self._config = {**head, **derived, **rest}

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the artifact config, as ``save`` writes it to ``config.json``."""
        return copy.deepcopy(self._config)

    @property
    def codebook_size(self) -> int:
        """Number of codes K; ids lie in [0, K)."""
        return self.quantizer.codebook_size

    @property
    def token_dim(self) -> int:
        """Width D of the continuous tokens the decoder takes."""
        return self.quantizer.dim

    @property
    def soft(self) -> bool:
        """True when the decoder was trained on soft mixes of codes rather than hard codes."""
        return self._config["soft"]

    @property
    def device(self) -> torch.device:
        """Where the weights live; move them with ``.to(device)``."""
        return next(self.parameters()).device

    @abstractmethod
    def encode(self, data: Any) -> Tensor:
        """Data -> ids (hard quantizers) or continuous tokens (soft quantizers)."""

    @abstractmethod
    def decode(self, codes: Tensor) -> Tensor:
        """Ids or continuous tokens -> data."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the directory ``path`` (created if needed).

        Existing files of those names are replaced atomically; nothing is pickled.

        Returns:
            the directory.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for name, t in self.state_dict().items()
        }
        _write_atomically(path / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        _write_atomically(path / CONFIG_NAME, (json.dumps(self._config, indent=2, allow_nan=False) + "\n").encode())
        return path


class ImageTokenizer(Tokenizer):
    """Images <-> tokens, for 2-D (grid) and 1-D (sequence) image models.

    Images are float RGB in [0, 1]: a batch (B, 3, H, W), one image (3, H, W) (treated as
    a batch of one, outputs keep the batch dim), a PIL image or the path of an image file.
    Values outside [0, 1] raise a ValueError rather than being clamped, since they usually
    mean a wrong normalization (map [-1, 1] data with ``(x + 1) / 2``; clamp resampling
    overshoot with ``x.clamp(0, 1)``). H and W must be multiples of the encoder's
    ``downsample_factor`` (or ``patch_size``) f.

    Two token layouts, told apart by the decoder: one with a fixed ``image_size`` attribute
    is a 1-D model (``image_size`` is then also the only input size); otherwise the encoder
    returns the token grid (h, w) = (H/f, W/f) and any multiple of f works.

    Shapes (D = ``token_dim``):
        - ``encode(images)``: hard quantizers -> ids, int64 (B, h, w) for grid models and
          (B, N) for 1-D models; soft quantizers -> float tokens (B, h, w, D) or (B, N, D),
          the soft mixes the decoder was trained on.
        - ``encode_ids(images)``: the ids, for soft quantizers the argmax code of each token.
        - ``decode(codes)``: ids or tokens shaped as ``encode`` returns them -> images
          (B, 3, H, W) in the config's data range ([0, 1]). A grid model also decodes flat
          ids (B, h*w) or tokens (B, h*w, D), as an autoregressive model emits them, given
          ``grid=(h, w)``: ``decode(ids.flatten(1), grid=(h, w))``.

    Args:
        encoder: image encoder ``images (B, 3, H, W) -> (tokens (B, N, D), shape)``.
        decoder: image decoder ``(tokens (B, N, D), shape) -> images``.
        quantizer: any backend of the quantizer contract.
        config: the artifact config; ``config["data"]`` holds ``mean``, ``std``, ``range`` and ``key``.
    """

    modality = "image"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer, config: dict[str, Any]) -> None:
        super().__init__(encoder, decoder, quantizer, config)
        data = config.get("data")
        if not isinstance(data, dict) or not {"mean", "std", "range"} <= data.keys():
            raise ValueError(f"an image tokenizer config needs data: {{mean, std, range, key}}, got {data!r}")
        if not data["std"]:
            raise ValueError("data.std must not be 0")
        self.data_mean = data["mean"]
        self.data_std = data["std"]
        self.data_range = tuple(data["range"]) if data["range"] is not None else None
        self.downsample_factor = int(getattr(encoder, "downsample_factor", getattr(encoder, "patch_size", 1)))
        fixed = getattr(decoder, "image_size", None)
        self.image_size: tuple[int, int] | None = (int(fixed[0]), int(fixed[1])) if fixed is not None else None

    @torch.no_grad()
    def encode(self, images: ImageInput) -> Tensor:
        """Images -> ids (B, h, w) / (B, N) int64 for hard quantizers, tokens (..., D) for soft ones."""
        return self._encode(images, ids=not self.soft)

    @torch.no_grad()
    def encode_ids(self, images: ImageInput) -> Tensor:
        """Images -> ids (B, h, w) or (B, N) int64; for soft quantizers the argmax code of each token."""
        return self._encode(images, ids=True)

    @torch.no_grad()
    def decode(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Ids or tokens, shaped as ``encode`` returns them -> images (B, 3, H, W) in the data range.

        Args:
            codes: integer ids or float tokens, on any device.
            grid: (h, w) of flat codes, ids (B, h*w) or tokens (B, h*w, D); grid models only.

        Raises:
            ValueError: wrong shape, or ids outside [0, codebook_size) (from the quantizer).
        """
        if not isinstance(codes, Tensor):
            raise TypeError(f"decode expects a torch.Tensor of ids or tokens, got {type(codes).__name__}")
        per_token = (self.token_dim,) if codes.is_floating_point() else ()
        tail = ", D" * len(per_token)
        if self.image_size is not None:
            if grid is not None:
                raise ValueError("grid is for 2-D tokenizers; this 1-D tokenizer decodes (B, N) ids as they are")
            if codes.dim() != 2 + len(per_token) or tuple(codes.shape[2:]) != per_token:
                raise ValueError(
                    f"this 1-D tokenizer decodes ids (B, N) or tokens (B, N, {self.token_dim}), got {codes.dtype} "
                    f"{tuple(codes.shape)}"
                )
            shape = self.image_size
        else:
            if grid is not None:
                h, w = grid
                if codes.dim() != 2 + len(per_token) or codes.shape[1] != h * w:
                    raise ValueError(
                        f"grid={tuple(grid)} needs flat codes (B, {h * w}{tail}), got {tuple(codes.shape)}"
                    )
                codes = codes.reshape(codes.shape[0], h, w, *per_token)
            if codes.dim() != 3 + len(per_token) or tuple(codes.shape[3:]) != per_token:
                raise ValueError(
                    f"decode expects ids (B, h, w) or tokens (B, h, w, {self.token_dim}), got {codes.dtype} "
                    f"{tuple(codes.shape)}; pass flat codes (B, h*w{tail}) as decode(codes, grid=(h, w))"
                )
            shape = tuple(codes.shape[1:3])
        codes = codes.to(self.device).reshape(codes.shape[0], -1, *per_token)
        tokens = codes if per_token else self.quantizer.decode(codes)
        return self._denormalize(self.decoder(tokens, shape))

    def _encode(self, images: ImageInput, ids: bool) -> Tensor:
        x = as_image_batch(images)
        height, width = x.shape[-2:]
        f = self.downsample_factor
        if self.image_size is not None and (height, width) != self.image_size:
            raise ValueError(
                f"this tokenizer takes images of {self.image_size[0]}x{self.image_size[1]} only (a 1-D model with "
                f"positional embeddings learned for that size), got {height}x{width}; resize or crop them"
            )
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the tokenizer's downsampling factor {f}; "
                f"resize or crop to a multiple of {f}"
            )
        tokens, shape = self.encoder(self._normalize(x.to(self.device)))
        b, n, d = tokens.shape
        if self.image_size is None:
            token_shape = tuple(int(s) for s in shape)
            if len(token_shape) != 2 or n != token_shape[0] * token_shape[1]:
                raise ValueError(
                    f"{type(self.encoder).__name__} returned {n} tokens with shape {token_shape}: a grid model's "
                    "encoder must return (tokens, (h, w)), a 1-D model's decoder must have a fixed image_size"
                )
        else:
            token_shape = (n,)
        if ids:
            return self.quantizer.encode(tokens).reshape(b, *token_shape)
        return self.quantizer(tokens).z_q.reshape(b, *token_shape, d)

    def _normalize(self, x: Tensor) -> Tensor:
        return (x - self.data_mean) / self.data_std

    def _denormalize(self, x: Tensor) -> Tensor:
        x = x.float() * self.data_std + self.data_mean
        return x.clamp(*self.data_range) if self.data_range is not None else x


TOKENIZER_CLASSES: dict[str, type[Tokenizer]] = {cls.modality: cls for cls in (ImageTokenizer,)}


def as_image_batch(images: ImageInput) -> Tensor:
    """A float batch (B, 3, H, W) in [0, 1] from a batch, one image (3, H, W), a PIL image or an image path.

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: not an image, or integer pixels (convert with ``x.float() / 255``).
        ValueError: wrong shape or channel count, NaN/Inf, or values outside [0, 1].
    """
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        with Image.open(path) as image:
            images = _pil_to_tensor(image)
    elif isinstance(images, Image.Image):
        images = _pil_to_tensor(images)
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a tensor, a PIL image or an image path, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"expected images (B, 3, H, W) or one image (3, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        hint = " (channels last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise ValueError(f"expected RGB images with 3 channels in dim 1, got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {images.dtype}; convert with images.float() / 255")
    if not torch.isfinite(images).all():
        raise ValueError("images hold NaN or Inf values")
    low, high = (float(v) for v in images.aminmax())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; map [-1, 1] data with "
            "(x + 1) / 2, clamp resampling overshoot with x.clamp(0, 1)"
        )
    return images.float()


def load_tokenizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Tokenizer:
    """Load a tokenizer artifact directory (``config.json`` + ``model.safetensors``) in eval mode.

    Nothing is unpickled, and only ``torch.nn.Module`` classes of the ``vqkit`` package are
    instantiated (every ``_target_`` is checked first); weights must match exactly.

    Args:
        path: the artifact directory, as written by ``python -m vqkit.export`` or ``Tokenizer.save``.
        device: where to put the weights.

    Returns:
        the tokenizer of the config's ``modality`` (``ImageTokenizer`` for ``"image"``).

    Raises:
        FileNotFoundError: the directory, its ``config.json`` or its ``model.safetensors`` is missing.
        UnsafeConfigError: the config names something other than a vqkit module or holds non-plain data.
        ValueError: unknown format, version or modality, unreadable files, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for file in (config_file, weights_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found; a tokenizer directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    tokenizer = tokenizer_from_config(config, source=str(config_file))
    try:
        state = load_file(weights_file)
    except SafetensorError as err:
        raise ValueError(f"{weights_file} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    try:
        tokenizer.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_file} does not fit the model of {config_file}: {err}") from err
    return tokenizer.to(device).eval()


def tokenizer_from_config(config: Any, source: str = "config") -> Tokenizer:
    """Check an artifact config and build its tokenizer with freshly initialised weights.

    Args:
        config: the parsed ``config.json``.
        source: where the config came from, for error messages.

    Raises:
        UnsafeConfigError: see ``load_tokenizer``.
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
    parts = {name: _build_module(config.get(name), f"{source}: {name}") for name in PARTS}
    if not isinstance(parts["quantizer"], Quantizer):
        raise ValueError(
            f"{source}: quantizer must be a vqkit.quantizers.Quantizer, got {type(parts['quantizer']).__name__}"
        )
    return TOKENIZER_CLASSES[modality](**parts, config=config)


def _build_module(node: Any, where: str) -> nn.Module:
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


def _pil_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float().div(255)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
