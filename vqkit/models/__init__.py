"""The tokenizer model: one ``nn.Module`` per tokenizer, shared by training, evaluation and the artifact.

    >>> model = vqkit.models.load_model("artifacts/photos-f4")      # or ImageTokenizer.from_pretrained(...)
    >>> ids = model.encode(images)        # (B, 3, H, W) in [0, 1] -> int64 (B, H/f, W/f), (B, N) for 1-D models
    >>> recon = model.decode(ids)         # -> (B, 3, H, W) in [0, 1]
    >>> model.save_pretrained("my-tokenizer")   # config.json + model.safetensors
"""

from vqkit.models.artifact import CONFIG_NAME, FORMAT, FORMAT_VERSION, WEIGHTS_NAME, UnsafeConfigError, build_module
from vqkit.models.audio import AudioTokenizer
from vqkit.models.base import ModelOutput, Normalization, TokenizerModel, load_model
from vqkit.models.image import ImageTokenizer, as_image_batch
from vqkit.models.text import TextTokenizer

__all__ = [
    "AudioTokenizer",
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "ImageTokenizer",
    "ModelOutput",
    "Normalization",
    "TextTokenizer",
    "TokenizerModel",
    "UnsafeConfigError",
    "WEIGHTS_NAME",
    "as_image_batch",
    "build_module",
    "load_model",
]
