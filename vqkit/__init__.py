"""vqkit: vector-quantization tokenizers for text, images and audio."""

from vqkit.models import AudioTokenizer, ImageTokenizer, TokenizerModel
from vqkit.quantizers import QuantizerOutput, build_quantizer, list_quantizers
from vqkit.tokenizers import load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "AudioTokenizer",
    "ImageTokenizer",
    "QuantizerOutput",
    "TokenizerModel",
    "__version__",
    "build_quantizer",
    "list_quantizers",
    "load_tokenizer",
]
