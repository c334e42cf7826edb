"""Neural tokenizers: an encoder, a quantizer and a decoder, stored as ``config.json`` + ``model.safetensors``."""

from __future__ import annotations

import copy
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer
from vqkit.tokenizers.artifact import CONFIG_NAME, WEIGHTS_NAME, build_module, tokenizer_class, write_atomically

PARTS = ("encoder", "decoder", "quantizer")


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

    modality: str

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
        write_atomically(path / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        write_atomically(path / CONFIG_NAME, (json.dumps(self._config, indent=2, allow_nan=False) + "\n").encode())
        return path

    @classmethod
    def from_artifact(cls, path: Path, config: dict[str, Any], device: str | torch.device = "cpu") -> Tokenizer:
        """Build the model from ``config`` and load ``path/model.safetensors`` into it (strict), in eval mode."""
        weights_file = path / WEIGHTS_NAME
        if not weights_file.is_file():
            raise FileNotFoundError(
                f"{weights_file} not found; a tokenizer directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        tokenizer = tokenizer_from_config(config, source=str(path / CONFIG_NAME))
        try:
            state = load_file(weights_file)
        except SafetensorError as err:
            raise ValueError(
                f"{weights_file} is not a readable safetensors file (truncated or corrupt?): {err}"
            ) from err
        try:
            tokenizer.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights_file} does not fit the model of {path / CONFIG_NAME}: {err}") from err
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
    cls = tokenizer_class(config, source)
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise ValueError(f"{source}: modality {config['modality']!r} is not an encoder/quantizer/decoder tokenizer")
    parts = {name: build_module(config.get(name), f"{source}: {name}") for name in PARTS}
    if not isinstance(parts["quantizer"], Quantizer):
        raise ValueError(
            f"{source}: quantizer must be a vqkit.quantizers.Quantizer, got {type(parts['quantizer']).__name__}"
        )
    return cls(**parts, config=config)
