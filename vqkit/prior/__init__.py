"""Generative priors over a tokenizer's tokens: ``ARPrior`` (discrete ids); trained by ``vqkit.train_prior``."""

from vqkit.prior.ar import ARPrior
from vqkit.prior.artifact import load_prior, save_prior

__all__ = ["ARPrior", "load_prior", "save_prior"]
