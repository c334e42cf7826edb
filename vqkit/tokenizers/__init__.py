"""Trained tokenizers as artifacts; importing this package registers every modality.

    >>> tok = load_tokenizer("artifacts/photos-f4")
    >>> ids = tok.encode(images)   # (B, 3, H, W) in [0, 1] -> int64 (B, H/f, W/f), or (B, N) for 1-D models
    >>> recon = tok.decode(ids)    # -> (B, 3, H, W) in [0, 1]
"""

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
from vqkit.tokenizers.audio import AudioTokenizer
from vqkit.tokenizers.base import PARTS, Tokenizer, tokenizer_from_config
from vqkit.tokenizers.image import ImageTokenizer, as_image_batch
from vqkit.tokenizers.text import GQTokenizer

__all__ = [
    "AudioTokenizer",
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "GQTokenizer",
    "PARTS",
    "TOKENIZER_CLASSES",
    "WEIGHTS_NAME",
    "ImageTokenizer",
    "Tokenizer",
    "UnsafeConfigError",
    "as_image_batch",
    "load_tokenizer",
    "register_tokenizer",
    "tokenizer_from_config",
]
