"""BSQ: binary spherical quantization (Zhao et al. 2024, arXiv 2406.07548; zhaoyue-zephyrus/bsq-vit ``bsq.py``).

LFQ on the unit sphere: the code-space latents are l2-normalized, u = v / ||v||, and quantized to
q = sign(u) / sqrt(d), a point of the sphere too, so the quantization error is bounded. The straight-through
estimator is bsq-vit's, (u + sg(sign(u) - u)) / sqrt(d). The entropy terms are LFQ's with codes of scale
1 / sqrt(d) (per-bit logits 4 u_i / (sqrt(d) T)): the per-sample entropy in closed form per dimension
(bsq-vit's ``persample_entropy_compute='analytical'``), the batch entropy by default with bsq-vit's grouped
approximation (``group_bits=9``: the sum of the entropies of the two 9-bit groups' mean distributions at
K = 2^18; ``group_bits=null`` for the exact value). Everything else (ids, masking, fp32, losses) is
``LookupFreeQuantizer``'s.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vqkit.quantizers.lfq import LookupFreeQuantizer
from vqkit.quantizers.registry import register_quantizer


@register_quantizer("bsq")
class BinarySphericalQuantizer(LookupFreeQuantizer):
    """Sign quantization on the unit sphere of d = log2(K) dimensions, with bsq-vit's entropy penalty.

    Args:
        dim: width D of the latents (B, N, D).
        codebook_size: K, a power of two (bsq-vit: 2^18).
        commit_weight: weight of ``commit`` = mean (u - sg(q))^2 (bsq-vit's beta: 0).
        entropy_weight: weight of the entropy penalty (bsq-vit's codebook_weight: 0.1).
        gamma: weight of ``batch_entropy`` inside the penalty (bsq-vit: 1).
        temperature: T of the distance softmax (bsq-vit: inverse temperature 1).
        group_bits: bits per group of the batch-entropy approximation (bsq-vit's group_size: 9); null: exact.
        check_finite: raise on NaN/Inf latents.
    """

    spherical = True
    entropy_eps = 1e-8  # inside the log of the entropies (bsq-vit)

    def __init__(
        self,
        dim: int,
        codebook_size: int = 2**18,
        commit_weight: float = 0.0,
        entropy_weight: float = 0.1,
        gamma: float = 1.0,
        temperature: float = 1.0,
        group_bits: int | None = 9,
        check_finite: bool = True,
    ) -> None:
        super().__init__(dim, codebook_size, commit_weight, entropy_weight, gamma, temperature, group_bits,
                         check_finite)

    def to_sphere(self, u: Tensor) -> Tensor:
        """(M, d) -> (M, d) l2-normalized (a zero vector stays zero and gets the all-negative code)."""
        return F.normalize(u, dim=-1)
