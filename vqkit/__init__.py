"""vqkit: vector-quantization tokenizers for text, images and audio."""

from vqkit.quantizers import QuantizerOutput, build_quantizer, list_quantizers

__version__ = "0.1.0"

__all__ = ["QuantizerOutput", "__version__", "build_quantizer", "list_quantizers"]
