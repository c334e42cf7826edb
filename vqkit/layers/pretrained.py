"""Pretrained timm networks built offline: an architecture name plus a local weights file, never a hub download.

``build_timm_model(name, weights_path, option=...)`` creates ``timm.create_model(name, pretrained=False,
**kwargs)`` and loads the tensors of ``weights_path`` into it. The file is read without unpickling code
(``.safetensors``, or a ``.pt/.pth`` state dict read with ``weights_only=True``). When the architecture's
timm module has a ``checkpoint_filter_fn`` (ViTs, DINOv2, ...), it is applied first: it renames keys of the
original releases and resamples position / patch embeddings to the sizes asked for in ``kwargs`` (e.g. a
DINOv2 checkpoint at patch 14 / 518 px loaded at ``img_size=256, patch_size=16``), as timm does for hub
weights. Loading is strict; every failure names the file, the option that set it and what to change.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file
from torch import Tensor, nn

from vqkit.files import torch_load


def read_state_dict(path: str | Path, option: str = "weights_path") -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file or a plain state-dict ``.pt/.pth`` (loaded with weights_only=True).

    A checkpoint that nests its tensors under ``state_dict`` or ``model`` is unwrapped.

    Args:
        path: the local file.
        option: the config option that gave the path, named in error messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a flat mapping of names to tensors (or would need unpickling code).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (set by {option}); vqkit never downloads weights: put the "
            f"file there or set {option}=/path/to/weights.safetensors (or a .pth state dict)"
        )
    if path.suffix == ".safetensors":
        return load_file(str(path))
    hint = f"; set {option} to a .safetensors file or a plain state dict saved with torch.save"
    try:
        state = torch_load(path, f"weights file ({option})", hint)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{err}; it cannot be read without unpickling code: save the tensors as safetensors or as "
                         "a plain state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} ({option}) does not hold a flat dict of tensors (a state dict)")
    return state


def timm_filter(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` passed through the ``checkpoint_filter_fn`` of ``model``'s timm module, when it has one."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    return fn(state, model)


def load_checked(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, option: str) -> None:
    """``model.load_state_dict(state)`` strictly, with the first missing / unexpected / mis-shaped keys named."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = [f"{what} ({len(keys)}): {keys[:4]}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise ValueError(
            f"the weights in {path} ({option}) do not fit {type(model).__name__}: " + "; ".join(parts)
            + ". Check that the model name next to it names the architecture the file was saved from"
        )
    model.load_state_dict(dict(state))


def build_timm_model(
    model_name: str, weights_path: str | Path | None, option: str = "weights_path",
    drop_prefixes: tuple[str, ...] = (), **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(model_name, pretrained=False, **kwargs)`` with the tensors of a local file.

    Args:
        model_name: a timm architecture name (``timm.list_models()``); a pretrained tag (``.lvd142m``) is
            accepted and only selects timm's default configuration.
        weights_path: the local weights file; None raises with the fix.
        option: the config option of ``weights_path``, named in error messages.
        drop_prefixes: keys starting with these are ignored (e.g. a classifier ``head.`` when
            ``num_classes=0``).
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``img_size``, ``patch_size``, ...).
    """
    if weights_path is None:
        raise ValueError(
            f"{model_name!r} needs its pretrained weights: set {option}=/path/to/weights (a local .safetensors "
            "or .pth state dict; nothing is downloaded)"
        )
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    state = timm_filter(model, read_state_dict(weights_path, option))
    own = set(model.state_dict())
    state = {k: v for k, v in state.items() if not (k.startswith(drop_prefixes) and k not in own)}
    load_checked(model, state, weights_path, option)
    return model
