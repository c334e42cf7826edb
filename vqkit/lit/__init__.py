"""Lightning modules that train encoder -> quantizer -> decoder."""

from vqkit.lit.gq_module import GQModule
from vqkit.lit.tokenizer_module import TokenizerModule

__all__ = ["GQModule", "TokenizerModule"]
