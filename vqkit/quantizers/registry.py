"""Name -> quantizer class registry for the Python API (configs use ``_target_``)."""

from __future__ import annotations

import inspect
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


WRAPPERS = ("residual", "gq")  # backends that hold other backends


def build_inner_quantizer(name: str, dim: int, codebook_size: int, options: dict[str, Any] | None,
                          owner: str) -> Quantizer:
    """A single-stage backend built inside a wrapper (a residual stage, the gated quantizer's codebook).

    Args:
        name: registry name of the backend.
        dim, codebook_size: the wrapper's; ``options`` must not set them.
        options: the backend's other keyword arguments.
        owner: the wrapper's option names for messages, e.g. ``"stage_quantizer / stage_options"``.

    Raises:
        ValueError: a wrapper as inner backend, options that set dim/codebook_size, or a multi-stage backend.
    """
    backend, options_name = (part.strip() for part in owner.split("/"))
    if name in WRAPPERS:
        raise ValueError(f"{backend} cannot be {name!r}; pick a single-stage backend such as 'vq' or 'ema_vq'")
    options = dict(options or {})
    clash = {"dim", "codebook_size"} & options.keys()
    if clash:
        raise ValueError(f"{options_name} must not set {sorted(clash)}; they come from the wrapping quantizer")
    quantizer = build_quantizer(name, dim=dim, codebook_size=codebook_size, **options)
    if quantizer.num_stages is not None:
        raise ValueError(f"{backend} {name!r} is multi-stage; it must give one id per token")
    return quantizer


def self_contained_inner_options(wrapper: type, config: dict[str, Any], name_key: str, options_key: str,
                                 shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """A wrapper's ``self_contained_arguments``: its inner backend's, applied to the plain options it is built from.

    Args:
        wrapper: the wrapping class (for the defaults of its ``name_key`` / ``options_key`` arguments).
        config: the wrapper's config.
        name_key, options_key: e.g. ``"stage_quantizer", "stage_options"``.
        shapes: the wrapper's state-dict shapes; ``prefix`` (``"stages.0."``) picks one inner backend's.

    Returns:
        ``{options_key: options with the backend's replacements}``, or {} when the backend takes no files.
    """
    defaults = inspect.signature(wrapper).parameters
    inner = quantizer_class(config.get(name_key, defaults[name_key].default))
    hook = getattr(inner, "self_contained_arguments", None)
    if hook is None:
        return {}
    options = dict(config.get(options_key) or {})
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    return {options_key: {**options, **hook(options, own)}}
