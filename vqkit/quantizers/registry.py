"""Name -> quantizer class registry for the Python API (configs use ``_target_``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from vqkit.quantizers.base import Quantizer

_REGISTRY: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator that makes a backend buildable as ``build_quantizer(name, ...)``."""

    def wrap(cls: type[Quantizer]) -> type[Quantizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            warnings.warn(f"quantizer {name!r} re-registered: {_REGISTRY[name]} -> {cls}", stacklevel=2)
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def list_quantizers() -> list[str]:
    """Sorted names of every registered backend."""
    return sorted(_REGISTRY)


def quantizer_class(name: str) -> type[Quantizer]:
    """The class registered under ``name``; a KeyError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown quantizer {name!r}; known: {', '.join(list_quantizers())}") from None


def build_quantizer(name: str, **kwargs: Any) -> Quantizer:
    """Build a registered backend, e.g. ``build_quantizer("vq", dim=64, codebook_size=1024)``."""
    return quantizer_class(name)(**kwargs)
