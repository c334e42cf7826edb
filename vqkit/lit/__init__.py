"""Lightning modules that train encoder -> quantizer -> decoder."""

from vqkit.lit.tokenizer_module import TokenizerModule

__all__ = ["TokenizerModule"]
