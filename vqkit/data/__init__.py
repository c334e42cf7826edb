"""Image DataModules; every batch is ``{"image": (B, 3, H, W) float in [0, 1]}`` (+ ``"label": (B,)`` if labelled)."""

from vqkit.data.image_folder import ImageFolderDataModule
from vqkit.data.photos import EmbeddedPhotosDataModule

__all__ = ["EmbeddedPhotosDataModule", "ImageFolderDataModule"]
