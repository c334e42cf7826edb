"""Named loss terms (``LossTerm``): the entries of a training module's ``losses:`` mapping."""

from vqkit.losses.base import LossInputs, LossTerm
from vqkit.losses.reconstruction import L1, L2

__all__ = ["L1", "L2", "LossInputs", "LossTerm"]
