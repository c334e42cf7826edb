"""LFQ: lookup-free quantization (MAGVIT-v2, arXiv 2310.05737; Open-MAGVIT2's ``lookup_free_quantize.py``).

A token's d = log2(K) code coordinates are quantized independently to their sign: code q = sign(u) in
{-1, +1}^d, id = sum_i [u_i > 0] 2^i. No codebook is stored or searched (``codebook`` is the implicit
(K, d) table, built on access). Latents of another width pass through a Linear in and out.

Loss (weighted; the parts are logged unweighted):

    commit_weight * commit + entropy_weight * (per_sample_entropy - gamma * batch_entropy)

- ``commit`` = mean (u - sg(q))^2 pulls the code-space latents to their signs;
- ``per_sample_entropy`` (low: confident assignments) and ``batch_entropy`` (high: the batch spreads over
  all codes) are the entropies of the distance softmax over the K codes at temperature T
  (``binary_entropy``): the per-sample term exactly, the batch term exactly by default (``group_bits=None``,
  the value Open-MAGVIT2 computes with an M x K tensor, here without one) or with BSQ's grouped
  approximation. The batch is the local one, as in the official code; nothing is reduced across ranks,
  and the module holds no state, so all ranks stay identical.

Masked positions take no part in any term. Everything runs in fp32, also under autocast.
``BinarySphericalQuantizer`` (``bsq.py``) is this class on the unit sphere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.binary_entropy import MAX_EXACT_BITS, batch_entropy, bit_logits, per_sample_entropy
from vqkit.quantizers.projection import CodeProjection
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.tokens import scatter_rows, valid_rows


def code_bits(codebook_size: int, backend: str) -> int:
    """log2(codebook_size); a clear error when it is not a power of two >= 2."""
    size = int(codebook_size)
    if size < 2 or size & (size - 1):
        above = 1 << max(size - 1, 1).bit_length()
        raise ValueError(
            f"{backend} has K = 2^bits codes (one sign per bit), so codebook_size must be a power of 2; got "
            f"{codebook_size} (nearest: {above // 2 if above // 2 >= 2 else 2} or {above})"
        )
    bits = size.bit_length() - 1
    if bits > 62:
        raise ValueError(f"{backend} ids are int64: codebook_size must be at most 2^62, got 2^{bits}")
    return bits


@register_quantizer("lfq")
class LookupFreeQuantizer(Quantizer):
    """Sign quantization of log2(K) coordinates with MAGVIT-v2's entropy penalty.

    Args:
        dim: width D of the latents (B, N, D).
        codebook_size: K, a power of two (Open-MAGVIT2: 2^18); the code has d = log2 K coordinates.
        commit_weight: weight of ``commit`` (Open-MAGVIT2: 0.25).
        entropy_weight: weight of the entropy penalty (Open-MAGVIT2 and vector-quantize-pytorch: 0.1).
        gamma: weight of ``batch_entropy`` inside the penalty (Open-MAGVIT2's batch_maximization_weight: 1).
        temperature: T of the distance softmax (Open-MAGVIT2: 0.01, i.e. inverse temperature 100).
        group_bits: None: exact batch entropy; g: BSQ's grouped approximation over groups of g consecutive bits
            (the last group holds the remainder when g does not divide d; g >= d: one group, exact).
        check_finite: raise on NaN/Inf latents.

    Example::

        >>> q = build_quantizer("lfq", dim=32, codebook_size=2**18)   # Linear 32 -> 18 bits -> 32
        >>> out = q(z)           # z (B, N, 32): out.z_q (B, N, 32), out.indices (B, N) in [0, 2^18)
        >>> out.losses           # commit, entropy, per_sample_entropy, batch_entropy (unweighted)
    """

    spherical = False  # BSQ: l2-normalize the code-space latents, codes sign / sqrt(d)
    entropy_eps = 1e-5  # inside the log of the batch entropy (Open-MAGVIT2)

    def __init__(
        self,
        dim: int,
        codebook_size: int = 2**18,
        commit_weight: float = 0.25,
        entropy_weight: float = 0.1,
        gamma: float = 1.0,
        temperature: float = 0.01,
        group_bits: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        name = getattr(type(self), "registry_name", type(self).__name__)
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not temperature > 0:
            raise ValueError(f"{name} temperature must be > 0, got {temperature}")
        self.bits = code_bits(codebook_size, name)
        if group_bits is not None:
            if isinstance(group_bits, bool) or not isinstance(group_bits, int) or group_bits < 1:
                raise ValueError(f"{name} group_bits must be a positive integer or null (exact), got {group_bits}")
        if (group_bits is None or group_bits >= self.bits) and self.bits > MAX_EXACT_BITS:
            raise ValueError(
                f"{name}: an exact batch entropy over 2^{self.bits} codes is too large; set group_bits (BSQ's grouped "
                f"approximation, e.g. 9), or use codebook_size <= 2^{MAX_EXACT_BITS}"
            )
        self.dim = dim
        self.codebook_size = int(codebook_size)
        self.code_dim = self.bits
        self.commit_weight = commit_weight
        self.entropy_weight = entropy_weight
        self.gamma = gamma
        self.temperature = temperature
        self.group_bits = group_bits
        self.check_finite = check_finite
        self.code_scale = 1.0 / math.sqrt(self.bits) if self.spherical else 1.0
        self.projection = CodeProjection(dim, self.bits)
        self.register_buffer("_bit_weights", 2 ** torch.arange(self.bits, dtype=torch.long), persistent=False)

    # --- codes and ids ---------------------------------------------------------------------------
    def to_sphere(self, u: Tensor) -> Tensor:
        """The code-space latents the signs are taken of: (M, d) unchanged here, l2-normalized for BSQ."""
        return u

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Ids (...) -> codes (..., d) fp32 in {-s, +s} (s = 1, or 1 / sqrt(d) for BSQ)."""
        bits = (indices.long().unsqueeze(-1) & self._bit_weights) != 0
        return torch.where(bits, self.code_scale, -self.code_scale).float()

    @property
    def codebook(self) -> Tensor:
        """(K, d) fp32 the implicit codebook, row k the code of id k (built on each access, not stored)."""
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self._bit_weights.device))

    # --- the contract ----------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D); ``mask`` (B, N) bool marks the real tokens.

        Returns:
            ``z_q`` (B, N, D) in z's dtype (zeros where masked), ``indices`` (B, N) int64 (-1 where masked),
            ``loss`` the weighted sum above, ``losses`` its unweighted parts (``commit``, ``entropy`` =
            per_sample_entropy - gamma * batch_entropy, ``per_sample_entropy``, ``batch_entropy``, nats),
            ``metrics`` the batch usage of the ids.
        """
        self.check_input(z, mask)
        with torch.autocast(device_type=z.device.type, enabled=False):
            u = self.projection.to_code(valid_rows(z, mask))  # (M, d) fp32
            if self.check_finite:  # in code space: a NaN/Inf in a row makes its whole projection non-finite
                self.check_finite_input(u, shape=z.shape)
            u = self.to_sphere(u)
            positive = u > 0  # (M, d) the bits
            signs = torch.where(positive, 1.0, -1.0)
            # straight-through to the signs; BSQ scales both value and gradient by 1/sqrt(d) as bsq-vit does
            codes = (u + (signs - u).detach()) * self.code_scale  # (M, d)
            indices = (positive.long() * self._bit_weights).sum(-1)  # (M,)
            loss, losses = self._losses(u, codes.detach())
            z_q_rows = self.projection.from_code(codes)  # (M, D)
            metrics = batch_usage_metrics(torch.bincount(indices, minlength=self.codebook_size).float())
        z_q, ids = scatter_rows(z_q_rows.to(z.dtype), indices, z.shape, mask)
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses=losses, mask=mask, metrics=metrics)

    def _losses(self, u: Tensor, codes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted loss and unweighted parts for code-space latents ``u`` (M, d) and their codes (M, d)."""
        commit = (u - codes).pow(2).sum() / max(u.numel(), 1)
        logits = bit_logits(u, self.code_scale, self.temperature)  # (M, d)
        sample = per_sample_entropy(logits)
        spread = batch_entropy(logits, self.group_bits, self.entropy_eps)
        penalty = sample - self.gamma * spread
        loss = self.commit_weight * commit + self.entropy_weight * penalty
        parts = {"commit": commit, "entropy": penalty, "per_sample_entropy": sample, "batch_entropy": spread}
        return loss, {name: value.detach() for name, value in parts.items()}

    def decode(self, indices: Tensor) -> Tensor:
        """Ids (...) -> vectors (..., D) fp32: the sign code of each id, projected out."""
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.projection.from_code(self.indices_to_codes(indices))
