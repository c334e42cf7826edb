"""Trained tokenizers as artifacts: ``load_tokenizer`` (the safe loader) and the text tokenizer.

    >>> tok = load_tokenizer("artifacts/photos-f4")   # an ImageTokenizer model (vqkit.models)
    >>> ids = tok.encode(images)   # (B, 3, H, W) in [0, 1] -> int64 (B, H/f, W/f), or (B, N) for 1-D models
    >>> recon = tok.decode(ids)    # -> (B, 3, H, W) in [0, 1]
"""

from vqkit.models import AudioTokenizer, ImageTokenizer, TokenizerModel, as_image_batch
from vqkit.tokenizers.artifact import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    TOKENIZER_CLASSES,
    WEIGHTS_NAME,
    UnsafeConfigError,
    load_tokenizer,
    register_tokenizer,
)
from vqkit.tokenizers.text import GQTokenizer

__all__ = [
    "AudioTokenizer",
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "GQTokenizer",
    "TOKENIZER_CLASSES",
    "WEIGHTS_NAME",
    "ImageTokenizer",
    "TokenizerModel",
    "UnsafeConfigError",
    "as_image_batch",
    "load_tokenizer",
    "register_tokenizer",
]
