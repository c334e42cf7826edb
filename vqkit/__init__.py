"""vqkit: vector-quantization tokenizers for text, images and audio."""

from vqkit.quantizers import QuantizerOutput, build_quantizer, list_quantizers
from vqkit.tokenizers import ImageTokenizer, Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "ImageTokenizer",
    "QuantizerOutput",
    "Tokenizer",
    "__version__",
    "build_quantizer",
    "list_quantizers",
    "load_tokenizer",
]
