"""Generative priors over a tokenizer's tokens: ``ARPrior`` (ids), ``FlowPrior`` (soft tokens)."""

from vqkit.prior.ar import ARPrior
from vqkit.prior.artifact import load_prior, save_prior
from vqkit.prior.flow import FlowPrior

__all__ = ["ARPrior", "FlowPrior", "load_prior", "save_prior"]
