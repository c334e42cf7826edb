"""Evaluation metrics (torchmetrics: states are summed across processes)."""

from vqkit.metrics.base import ModelOutputMetric
from vqkit.metrics.codebook import CodebookUsage
from vqkit.metrics.latent_stats import LatentStatistics
from vqkit.metrics.text import BytesPerToken, ExactTokens, SegmentByteAccuracy

__all__ = [
    "BytesPerToken",
    "CodebookUsage",
    "ExactTokens",
    "LatentStatistics",
    "ModelOutputMetric",
    "SegmentByteAccuracy",
]
