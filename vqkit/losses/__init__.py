"""Named loss terms (``LossTerm``): the entries of a training module's ``losses:`` mapping."""

from vqkit.losses.base import LossInputs, LossTerm
from vqkit.losses.reconstruction import L1, L2
from vqkit.losses.segment import Compression, LengthHead, SegmentReconstruction

__all__ = ["Compression", "L1", "L2", "LengthHead", "LossInputs", "LossTerm", "SegmentReconstruction"]
