"""Quantizer backends behind one contract (``base.py``); importing this package registers them."""

from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.bsq import BinarySphericalQuantizer
from vqkit.quantizers.ema_vq import EMAVectorQuantizer
from vqkit.quantizers.fsq import FiniteScalarQuantizer
from vqkit.quantizers.gq import GatedQuantizer, GatedQuantizerOutput
from vqkit.quantizers.grouped import GroupedQuantizer
from vqkit.quantizers.ibq import IBQuantizer
from vqkit.quantizers.lfq import LookupFreeQuantizer
from vqkit.quantizers.registry import build_quantizer, list_quantizers, register_quantizer
from vqkit.quantizers.residual import ResidualQuantizer
from vqkit.quantizers.simvq import SimVQQuantizer
from vqkit.quantizers.softvq import SoftVectorQuantizer
from vqkit.quantizers.vq import VectorQuantizer
from vqkit.quantizers.vqbridge import VQBridgeQuantizer
from vqkit.quantizers.vqgan_lc import VQGANLCQuantizer

__all__ = [
    "BinarySphericalQuantizer",
    "EMAVectorQuantizer",
    "FiniteScalarQuantizer",
    "GatedQuantizer",
    "GatedQuantizerOutput",
    "GroupedQuantizer",
    "IBQuantizer",
    "LookupFreeQuantizer",
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
