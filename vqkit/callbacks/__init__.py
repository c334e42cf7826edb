"""Lightning callbacks: sample pictures and run bookkeeping."""

from vqkit.callbacks.codebook_usage_plot import CodebookUsagePlot
from vqkit.callbacks.reconstruction_grid import ReconstructionGrid

__all__ = ["CodebookUsagePlot", "ReconstructionGrid"]
