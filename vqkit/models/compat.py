"""Which quantizers a model can use: the one rule behind every refusal of a model x quantizer pair.

A model decodes what its quantizer emits only when both agree on what a token is:

- the text models (``TextTokenizer``, ``model=text_*``) read variable-length tokens: only the gated
  quantizer (``quantizer=gq``) marks where each token ends, and its segment decoder needs that gate;
- the image and audio models (``ImageTokenizer``, ``AudioTokenizer``) decode a vector at every position of
  a fixed grid or frame rate: every registered quantizer works with them; with variable-length tokens
  (``gq``: id -1 at the positions inside a token) each position reads the token that covers it
  (``TokenizerModel.decoder_tokens``). ``check_pair`` raises an
``IncompatibleQuantizerError`` that names the pair and the quantizers that do work with the model;
``TokenizerModel.__init__`` runs it on the parts it is given, ``check_model_config`` on a model config
before anything is built (``vqkit.lit.run_config.module_from_config``: training and evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vqkit.models.artifact import UnsafeConfigError, resolve_target
from vqkit.quantizers.base import Quantizer
from vqkit.quantizers.gq import GatedQuantizer
from vqkit.quantizers.registry import list_quantizers, quantizer_class

_HINTS = {"text": " (choose its codebook with quantizer.inner=vq or ema_vq)"}  # after the working list


class IncompatibleQuantizerError(ValueError):
    """A model was given a quantizer whose tokens it cannot decode."""


def pair_problem(model_cls: type, quantizer_cls: type) -> str | None:
    """Why ``model_cls`` cannot use ``quantizer_cls`` (both classes), or None when the pair works."""
    modality = getattr(model_cls, "modality", None)
    if modality is None:  # the abstract TokenizerModel, or a model class of the user's own
        return None
    if modality == "text":
        if issubclass(quantizer_cls, GatedQuantizer):
            return None
        return ("a text model's segment decoder reads variable-length tokens, and only the gated quantizer marks "
                "their ends")
    return None


def compatible_quantizers(model_cls: type) -> list[str]:
    """Registry names (= ``conf/quantizer`` options) of the quantizers ``model_cls`` works with, sorted."""
    return [name for name in list_quantizers() if pair_problem(model_cls, quantizer_class(name)) is None]


def check_pair(model_cls: type, quantizer_cls: type) -> None:
    """Refuse a model class with a quantizer class it cannot decode.

    Raises:
        IncompatibleQuantizerError: naming the pair, the reason and the quantizers that work with the model.
    """
    problem = pair_problem(model_cls, quantizer_cls)
    if problem is None:
        return
    modality = model_cls.modality
    name = getattr(quantizer_cls, "registry_name", quantizer_cls.__name__)
    working = compatible_quantizers(model_cls)
    article = "an" if modality[0] in "aeiou" else "a"
    raise IncompatibleQuantizerError(
        f"{article} {modality} model ({model_cls.__name__}, model={modality}_*) cannot use quantizer={name} "
        f"({quantizer_cls.__name__}): {problem}. Quantizers that work with {modality} models: "
        f"{', '.join(f'quantizer={n}' for n in working)}{_HINTS.get(modality, '')}"
    )


def check_model_config(config: Mapping[str, Any]) -> None:
    """``check_pair`` on a model config (``_target_`` and ``quantizer._target_``) before anything is built.

    Targets that are not vqkit classes are left to the model's own check (``TokenizerModel.__init__``).

    Raises:
        IncompatibleQuantizerError: see ``check_pair``.
    """
    quantizer = config.get("quantizer")
    if not isinstance(quantizer, Mapping):
        return
    model_cls = _vqkit_class(config.get("_target_"))
    quantizer_cls = _vqkit_class(quantizer.get("_target_"))
    if model_cls is not None and quantizer_cls is not None and issubclass(quantizer_cls, Quantizer):
        check_pair(model_cls, quantizer_cls)


def _vqkit_class(target: Any) -> type | None:
    """The vqkit ``nn.Module`` class a ``_target_`` names (imported, nothing called); None for anything else."""
    try:
        return resolve_target(target, "_target_")
    except UnsafeConfigError:
        return None
