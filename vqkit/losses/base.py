"""A named, weighted loss term: what every entry of a training module's ``losses:`` mapping is.

Each term computes one scalar from a ``LossInputs`` (the model's inputs, the data in its natural
range and the model's output). The module multiplies it by ``weight_at(step)``: ``weight`` after a
linear warm-up from 0 over ``warmup_steps``. A weight of 0 means the term is computed and logged but
not optimized. A term may also return ``(value, parts)``, where ``parts`` are extra unweighted values
to log under ``<name>/<part>``. A term that holds a frozen pretrained network rebuilt from its own weights
file (LPIPS's VGG16, REPA's feature encoder) names it in ``frozen_networks``: its tensors are kept out of
state dicts and checkpoints, and loading keeps the weights the network was built with.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn

from vqkit.models.base import ModelOutput


@dataclass
class LossInputs:
    """What a loss term sees.

    Attributes:
        inputs: the model's input (normalized images/waveforms; byte ids for text).
        data: the same data in its natural range (images in [0, 1], waveforms in [-1, 1]; byte ids for text).
        output: the model's output for ``inputs``.
    """

    inputs: Tensor
    data: Tensor
    output: ModelOutput


class LossTerm(nn.Module):
    """Base of every loss term.

    Args:
        weight: the term's weight once warmed up; 0 = computed and logged only.
        warmup_steps: the weight ramps linearly from 0 over these many training steps (0: none).
    """

    frozen_networks: tuple[str, ...] = ()  # submodules left out of state dicts (see the module docstring)

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0) -> None:
        super().__init__()
        if self.frozen_networks:
            self.register_state_dict_post_hook(_drop_frozen_state)
            self.register_load_state_dict_pre_hook(_fill_frozen_state)
        if weight < 0 or warmup_steps < 0:
            raise ValueError(
                f"{type(self).__name__}: weight and warmup_steps must be >= 0, got {weight}, {warmup_steps}"
            )
        self.weight = float(weight)
        self.warmup_steps = int(warmup_steps)

    def weight_at(self, step: int | None) -> float:
        """The weight at training step ``step``; None (validation/test): the full weight."""
        if step is None or self.warmup_steps == 0:
            return self.weight
        return self.weight * min(step / self.warmup_steps, 1.0)

    @abstractmethod
    def forward(self, batch: LossInputs) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The unweighted scalar (and optionally unweighted parts to log)."""

    def extra_repr(self) -> str:
        return f"weight={self.weight}, warmup_steps={self.warmup_steps}"


def _drop_frozen_state(module: LossTerm, state_dict: dict, prefix: str, local_metadata: object) -> None:
    frozen = tuple(f"{prefix}{name}." for name in module.frozen_networks)
    for key in [k for k in state_dict if k.startswith(frozen)]:
        del state_dict[key]


def _fill_frozen_state(module: LossTerm, state_dict: dict, prefix: str, *args: object) -> None:
    for name in module.frozen_networks:
        for key, value in getattr(module, name).state_dict(prefix=f"{prefix}{name}.").items():
            state_dict.setdefault(key, value)
