"""FSQ: finite scalar quantization (Mentzer et al. 2023, arXiv 2309.15505).

Each of the C = len(levels) code coordinates is squashed into a bounded interval and rounded to one of
``levels[i]`` integers; the code of a token is that grid point, rescaled to [-1, 1]. The codebook is the
implicit product grid: K = prod(levels) codes, none learned, so there is no codebook loss and no
collapse. Latents of another width pass through a Linear in and out (``CodeProjection``).

Bound. For L levels, with half-width h = (L - 1)(1 - eps) / 2 and offset o = 0.5 for even L (0 for odd):

    bound(z) = tanh(z + tan(o / h)) * h - o

so that round(bound(z)) takes exactly L integer values (-L/2 .. L/2 - 1 for even L, -(L-1)/2 .. (L-1)/2
for odd). The shift tan(o / h) is the official code's (google-research FSQ colab, paper appendix A.1);
atanh(o / h) would put bound(0) at exactly 0 (vector-quantize-pytorch, with a (1 + eps) margin) and differs
from it by < 1e-5 for L >= 5, but with the (1 - eps) margin it is undefined for L = 2 (o / h > 1).
The code is round(bound(z)) / (L // 2), with a straight-through gradient.

Ids. Mixed radix, first coordinate least significant: id = sum_i digit_i * prod_{j<i} levels[j], with
digit_i = round(bound(z_i)) + L_i // 2 in [0, L_i). ``decode`` inverts it exactly (a bijection of
[0, K) onto the grid).

Precision. Bound, round and ids always run in fp32 (autocast disabled, projections too): rounding a
bf16 value moves it by up to half a level step near the grid's edges, and a bf16 id sum is exact only
up to 256, which is how FSQ lost about half of its codes under bf16 in vector-quantize-pytorch
(issue #114).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.projection import CodeProjection
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.tokens import scatter_rows, valid_rows

# The paper's recommended levels per target codebook size (its Table 1), plus the sizes named by their product.
# The powers of two are approximate targets: 2^8 -> 240 codes, 2^10 -> 1,000, 2^12 -> 4,375.
RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
    1_000: (8, 5, 5, 5),
    15_360: (8, 8, 8, 6, 5),
    64_000: (8, 8, 8, 5, 5, 5),
}


def resolve_levels(levels: Sequence[int] | None, codebook_size: int | None) -> tuple[int, ...]:
    """The levels an FSQ is built with, from ``levels`` and/or ``codebook_size``.

    Raises:
        ValueError: neither given, levels that are not integers >= 2, a ``codebook_size`` that disagrees
            with prod(levels), or a ``codebook_size`` alone that has no recommended levels (the message lists them).
    """
    if levels is None:
        if codebook_size is None:
            raise ValueError("fsq needs `levels` (e.g. [8, 8, 8, 5, 5, 5]) or a `codebook_size` that has "
                             "recommended levels (e.g. 64000)")
        if int(codebook_size) not in RECOMMENDED_LEVELS:
            table = ", ".join(f"{k}: {list(v)}" for k, v in RECOMMENDED_LEVELS.items())
            raise ValueError(
                f"fsq has no recommended levels for codebook_size={codebook_size}; pick one of {{{table}}} or set "
                "`levels` explicitly (the codebook then has prod(levels) codes) and leave codebook_size unset"
            )
        return RECOMMENDED_LEVELS[int(codebook_size)]
    levels = tuple(levels)
    if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 2 for v in levels):
        raise ValueError(f"fsq levels must be a non-empty list of integers >= 2, got {list(levels)}")
    size = math.prod(levels)
    if codebook_size is not None and int(codebook_size) != size:
        raise ValueError(
            f"fsq levels {list(levels)} give prod(levels) = {size} codes, but codebook_size={codebook_size}; "
            f"set codebook_size to {size} or to null (it follows from the levels)"
        )
    return levels


@register_quantizer("fsq")
class FiniteScalarQuantizer(Quantizer):
    """Finite scalar quantization with an implicit product-grid codebook of prod(levels) codes.

    Args:
        dim: width D of the latents (B, N, D).
        codebook_size: K; with ``levels`` it must equal prod(levels) (or be None); alone it picks the paper's
            recommended levels (``RECOMMENDED_LEVELS``). Wrappers (residual stages, gq) pass it.
        levels: number of levels per code coordinate, e.g. [8, 8, 8, 5, 5, 5] (64,000 codes).
        eps: the bound's margin (paper: 1e-3), so that tanh never reaches a level's rounding boundary.
        check_finite: raise on NaN/Inf latents.
        batch_metrics: compute the batch's ``perplexity`` / ``used_codes`` in every forward (a count over all K
            codes: about 1 ms per call at K = 2^18 on a CPU core, FSQ's only cost beyond the grid arithmetic);
            False leaves ``metrics`` empty (usage over a split is still measured from the ids by ``vqkit.eval``).

    Example::

        >>> q = build_quantizer("fsq", dim=32, levels=[8, 5, 5, 5])   # 1,000 codes, Linear 32 -> 4 -> 32
        >>> out = q(z)                 # z (B, N, 32): out.z_q (B, N, 32), out.indices (B, N) in [0, 1000)
        >>> q.decode(out.indices)      # (B, N, 32), equal to out.z_q in eval mode
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int | None = None,
        levels: Sequence[int] | None = None,
        eps: float = 1e-3,
        check_finite: bool = True,
        batch_metrics: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.levels = resolve_levels(levels, codebook_size)
        self.dim = dim
        self.code_dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        self.eps = eps
        self.check_finite = check_finite
        self.batch_metrics = batch_metrics
        self.projection = CodeProjection(dim, self.code_dim)
        # Constants of the grid, recomputed from `levels` (no state to checkpoint or keep equal across ranks).
        basis = [math.prod(self.levels[:i]) for i in range(self.code_dim)]
        levels_f = torch.tensor(self.levels, dtype=torch.float64)
        half = (levels_f - 1) * (1 - eps) / 2
        offset = (levels_f % 2 == 0).double() * 0.5
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        self.register_buffer("_half_levels", torch.tensor(self.levels, dtype=torch.long) // 2, persistent=False)
        # bound(z) = tanh(z + _shift) * _half - _offset, codes = round(bound) / _code_step (fp32 constants)
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.tan(offset / half).float(), persistent=False)
        self.register_buffer("_code_step", (levels_f // 2).float(), persistent=False)

    # --- the grid --------------------------------------------------------------------------------
    def bound(self, z: Tensor) -> Tensor:
        """(..., C) -> (..., C) in the open interval whose rounding gives each coordinate's L integers."""
        return torch.tanh(z + self._shift.to(z.dtype)) * self._half.to(z.dtype) - self._offset.to(z.dtype)

    def _round(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(..., C) -> the bounded values rounded with a straight-through gradient, and the integers (no graph)."""
        bounded = self.bound(z)
        integers = torch.round(bounded).detach()
        return bounded + (integers - bounded).detach(), integers

    def quantize(self, z: Tensor) -> Tensor:
        """(..., C) -> codes in [-1, 1] (..., C), rounded with a straight-through gradient, in z's dtype."""
        return self._round(z)[0] / self._code_step.to(z.dtype)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Grid codes (..., C) -> ids (...) int64 (mixed radix, first coordinate least significant)."""
        return self._integers_to_indices(torch.round(codes * self._code_step.to(codes.dtype)))

    def _integers_to_indices(self, integers: Tensor) -> Tensor:
        """Rounded bounded values (..., C), -L/2 .. L/2 - 1 (even L) or -(L-1)/2 .. (L-1)/2 -> ids (...) int64."""
        return ((integers.long() + self._half_levels) * self._basis).sum(-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Ids (...) -> grid codes (..., C) fp32 in [-1, 1] (no projection)."""
        digits = torch.div(indices.long().unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels
        half = self._levels // 2
        return (digits - half).float() / half.float()

    @property
    def codebook(self) -> Tensor:
        """(K, C) fp32 the implicit grid, row k the code of id k (built on each access, not stored)."""
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self._levels.device))

    # --- the contract ----------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D); ``mask`` (B, N) bool marks the real tokens.

        Returns:
            ``z_q`` (B, N, D) in z's dtype (zeros at masked positions), ``indices`` (B, N) int64 (-1 where
            masked), ``loss`` 0 with a graph (FSQ has no auxiliary loss), ``losses`` {}, ``metrics`` the
            batch usage of the ids ({} with ``batch_metrics=False``).
        """
        self.check_input(z, mask)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_code = self.projection.to_code(valid_rows(z, mask))  # (M, C) fp32
            total = z_code.sum()
            if self.check_finite:  # a NaN/Inf latent makes its row's projection, so this sum, non-finite
                self.check_finite_input(total, shape=z.shape)
            rounded, integers = self._round(z_code)  # (M, C)
            codes = rounded / self._code_step
            indices = self._integers_to_indices(integers)  # (M,)
            z_q_rows = self.projection.from_code(codes)  # (M, D)
            loss = total * 0.0  # no auxiliary loss; keeps the graph so every caller can backpropagate it
            metrics = (batch_usage_metrics(torch.bincount(indices, minlength=self.codebook_size).float())
                       if self.batch_metrics else {})
        z_q, ids = scatter_rows(z_q_rows.to(z.dtype), indices, z.shape, mask)
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses={}, mask=mask, metrics=metrics)

    def decode(self, indices: Tensor) -> Tensor:
        """Ids (...) -> vectors (..., D) fp32: the grid code of each id, projected out."""
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.projection.from_code(self.indices_to_codes(indices))
