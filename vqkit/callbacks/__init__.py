"""Lightning callbacks: sample pictures and run bookkeeping."""

from vqkit.callbacks.audio_samples import AudioSamples
from vqkit.callbacks.codebook_usage_plot import CodebookUsagePlot
from vqkit.callbacks.model_summary import ParameterSummary
from vqkit.callbacks.rank_consistency import RankConsistencyCheck
from vqkit.callbacks.reconstruction_grid import ReconstructionGrid
from vqkit.callbacks.reproducible_epochs import ReproducibleEpochs

__all__ = [
    "AudioSamples", "CodebookUsagePlot", "ParameterSummary", "RankConsistencyCheck", "ReconstructionGrid",
    "ReproducibleEpochs",
]
