"""Evaluation metrics (torchmetrics: states are summed across processes)."""

from vqkit.metrics.codebook import CodebookUsage

__all__ = ["CodebookUsage"]
