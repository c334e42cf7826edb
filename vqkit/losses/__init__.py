"""Training losses; each returns (weighted total, dict of unweighted terms for logging)."""

from vqkit.losses.reconstruction import ReconstructionLoss

__all__ = ["ReconstructionLoss"]
