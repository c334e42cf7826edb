"""IBQ: Index Backpropagation Quantization, a hard code whose gradient reaches every code through a softmax.

Shi et al., "Taming Scalable Visual Tokenizer for Autoregressive Image Generation" (arXiv 2412.13297),
official code TencentARC/SEED-Voken (``src/IBQ/modules/vqvae/quantize.py``, ``IndexPropagationQuantize``).
The logits of a latent are its dot products with the codes, l = z E^T; the token is the code of the
largest logit and the decoder sees ``z_q = (one_hot - sg(p) + p) E`` with p = softmax(l): the value is
the hard code, the gradient flows through p into every code (and into z through the logits), so no code
is left without a gradient however large K is (the paper: 96% usage at K = 16,384, 84% at 262,144).

Losses as the official code and configs (``imagenet_ibqgan_*.yaml``): ``double_quant`` = ||z_q - z||^2 with
z_q the straight-through code above (moves z and, through p, every code) at 1.0; ``commit`` =
||z - sg(e)||^2 at 1.0; ``codebook`` = ||sg(z) - e||^2 at beta = 0.25; the MAGVIT-v2 entropy loss on
softmax(l / 0.01), ``sample_entropy`` - ``avg_entropy`` (weights 1 and 1), at 0.05. The mean distribution
of the entropy term is the rank's batch, as in the official code.

Every N x K quantity (logits, softmax, their gradients) is computed in tiles (``tiled_softmax``), so
K = 262,144 never holds an N x K matrix in the forward or the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK
from vqkit.quantizers.tiled_softmax import softmax_entropies, softmax_straight_through
from vqkit.quantizers.vq import VectorQuantizer, mean_squared_error


@register_quantizer("ibq")
class IBQuantizer(Quantizer):
    """Dot-product argmax quantizer with a softmax straight-through over all codes.

    Args:
        dim: width D of the latents (B, N, D) and of the codes.
        codebook_size: number of codes K.
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2 (moves the encoder; official 1.0).
        codebook_weight: weight of ``codebook`` = ||sg(z) - e||^2 (moves the selected code; official beta 0.25).
        double_quant_weight: weight of ``double_quant`` = ||z_q - z||^2 through the softmax straight-through
            (official 1.0).
        entropy_weight: weight of the entropy loss ``sample_weight * sample_entropy - batch_weight *
            avg_entropy`` (official configs 0.05); 0: not computed (saves four passes over the codes).
        sample_entropy_weight: weight of the mean per-token entropy inside the entropy loss (official 1.0).
        batch_entropy_weight: weight of the entropy of the batch's mean distribution (official 1.0).
        entropy_temperature: divides the logits of the entropy loss (official 0.01).
        init_std: the codes start N(0, init_std^2) (official: ``nn.Embedding``'s N(0, 1)).
        code_chunk: codes per tile of the logits.
        row_chunk: latents per tile of the logits.
        check_finite: raise on NaN/Inf latents (one reduction per step).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        commit_weight: float = 1.0,
        codebook_weight: float = 0.25,
        double_quant_weight: float = 1.0,
        entropy_weight: float = 0.05,
        sample_entropy_weight: float = 1.0,
        batch_entropy_weight: float = 1.0,
        entropy_temperature: float = 0.01,
        init_std: float = 1.0,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0 or codebook_size <= 0:
            raise ValueError(f"dim and codebook_size must be positive, got {dim} and {codebook_size}")
        if entropy_temperature <= 0:
            raise ValueError(f"ibq: entropy_temperature must be positive, got {entropy_temperature} (official 0.01)")
        if code_chunk <= 0 or row_chunk <= 0:
            raise ValueError(f"ibq: code_chunk and row_chunk must be positive, got {code_chunk} and {row_chunk}")
        weights = {"commit_weight": commit_weight, "codebook_weight": codebook_weight,
                   "double_quant_weight": double_quant_weight, "entropy_weight": entropy_weight}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"ibq: loss weights must be >= 0 (0 switches a term off), got {negative}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.commit_weight = commit_weight
        self.codebook_weight = codebook_weight
        self.double_quant_weight = double_quant_weight
        self.entropy_weight = entropy_weight
        self.sample_entropy_weight = sample_entropy_weight
        self.batch_entropy_weight = batch_entropy_weight
        self.entropy_temperature = entropy_temperature
        self.code_chunk = code_chunk
        self.row_chunk = row_chunk
        self.check_finite = check_finite
        self.embedding = nn.Parameter(torch.randn(codebook_size, dim) * init_std)  # (K, D)

    @property
    def codebook(self) -> Tensor:
        """(K, D) fp32 codes (a cast of the parameter, so gradients reach it in any dtype)."""
        return self.embedding.float()

    def decode(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return F.embedding(indices.long(), self.codebook)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self.check_input(z, mask)
        if self.check_finite:
            self.check_finite_input(z)
        in_dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = z.float()[mask] if mask is not None else z.float().reshape(-1, self.dim)  # (M, D)
            codebook = self.codebook  # (K, D)
            z_q_flat, indices = softmax_straight_through(z_flat, codebook, self.code_chunk, self.row_chunk)
            hard = F.embedding(indices, codebook)  # (M, D), the plain code: gradients to the selected rows only
            losses = {
                "double_quant": mean_squared_error(z_q_flat, z_flat),
                "commit": mean_squared_error(z_flat, hard.detach()),
                "codebook": mean_squared_error(hard, z_flat.detach()),
            }
            loss = (self.double_quant_weight * losses["double_quant"] + self.commit_weight * losses["commit"]
                    + self.codebook_weight * losses["codebook"])
            if self.entropy_weight > 0:
                entropy, parts = self._entropy_loss(z_flat, codebook)
                loss = loss + self.entropy_weight * entropy
                losses.update(parts)
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
            metrics = batch_usage_metrics(counts)
        z_q, ids = VectorQuantizer._scatter(z_q_flat.to(in_dtype), indices, z, mask)
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses={k: v.detach() for k, v in losses.items()},
                               mask=mask, metrics=metrics)

    def _entropy_loss(self, z_flat: Tensor, codebook: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``sample_weight * H(p_n) - batch_weight * H(mean p)`` over the tokens (0, with its graph, for none)."""
        if z_flat.shape[0] == 0:
            zero = codebook.sum() * 0.0
            return zero, {"sample_entropy": zero, "avg_entropy": zero, "entropy": zero}
        sample, avg = softmax_entropies(z_flat, codebook, self.entropy_temperature, 1e-5, self.code_chunk,
                                        self.row_chunk)
        entropy = self.sample_entropy_weight * sample - self.batch_entropy_weight * avg
        return entropy, {"sample_entropy": sample, "avg_entropy": avg, "entropy": entropy}

    def extra_repr(self) -> str:
        return f"K={self.codebook_size}, D={self.dim}, entropy_weight={self.entropy_weight}"
