"""Quantizer backends behind one contract (``base.py``); importing this package registers them."""

from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.ema_vq import EMAVectorQuantizer
from vqkit.quantizers.gq import GatedQuantizer, GatedQuantizerOutput
from vqkit.quantizers.ibq import IBQuantizer
from vqkit.quantizers.registry import build_quantizer, list_quantizers, register_quantizer
from vqkit.quantizers.residual import ResidualQuantizer
from vqkit.quantizers.simvq import SimVQQuantizer
from vqkit.quantizers.softvq import SoftVectorQuantizer
from vqkit.quantizers.vq import VectorQuantizer
from vqkit.quantizers.vqbridge import VQBridgeQuantizer
from vqkit.quantizers.vqgan_lc import VQGANLCQuantizer

__all__ = [
    "EMAVectorQuantizer",
    "GatedQuantizer",
    "GatedQuantizerOutput",
    "IBQuantizer",
    "Quantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "SimVQQuantizer",
    "SoftVectorQuantizer",
    "VQBridgeQuantizer",
    "VQGANLCQuantizer",
    "VectorQuantizer",
    "build_quantizer",
    "list_quantizers",
    "register_quantizer",
]
