"""DataModules. Images: every batch is ``{"image": (B, 3, H, W) float in [0, 1]}`` (+ ``"label": (B,)`` if labelled);
text (vqkit.data.text): ``{"bytes": (B, L) int64}`` byte rows; audio (vqkit.data.audio):
``{"audio": (B, 1, L) float in [-1, 1]}`` mono waveforms."""

from vqkit.data.audio import AudioFolderDataModule, EmbeddedSpeechDataModule
from vqkit.data.image_folder import ImageFolderDataModule
from vqkit.data.photos import EmbeddedPhotosDataModule
from vqkit.data.text import ShakespeareDataModule, TextFilesDataModule, TinyStoriesDataModule

__all__ = [
    "AudioFolderDataModule",
    "EmbeddedSpeechDataModule",
    "EmbeddedPhotosDataModule",
    "ImageFolderDataModule",
    "ShakespeareDataModule",
    "TextFilesDataModule",
    "TinyStoriesDataModule",
]
