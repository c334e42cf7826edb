"""Shared machinery of quantizers whose codebook is the output of a trainable network.

VQGAN-LC (a projector over frozen features) and VQBridge (a network over a trainable raw
codebook) both recompute the whole (K, D) codebook from parameters every training forward,
search it exactly (tiled, fp32), and train it through the codebook loss on the selected codes.
In eval mode the generated codebook is cached until a parameter or buffer changes.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK, nearest_code
from vqkit.quantizers.vq import VectorQuantizer, mean_squared_error


def fp32_call(module: nn.Module, *args: Tensor) -> Tensor:
    """Run ``module`` with fp32 copies of its parameters and buffers, autocast off.

    Gradients flow back to the original (possibly bf16) parameters through the casts, so the
    generated codebook is fp32 whatever dtype the module was cast to.
    """
    state = {name: t.float() if t.is_floating_point() else t for name, t in module.named_parameters()}
    state.update({name: t.float() if t.is_floating_point() else t for name, t in module.named_buffers()})
    with torch.autocast(device_type=args[0].device.type, enabled=False):
        return functional_call(module, state, tuple(a.float() for a in args)).float()


class GeneratedCodebookQuantizer(Quantizer):
    """Straight-through hard VQ against a codebook produced by ``generate_codebook()``.

    Args:
        dim: width D of the latents (B, N, D) and of the generated codes.
        codebook_size: number of codes K.
        codebook_weight: weight of ``codebook`` = ||sg(z) - e||^2 (trains the generator).
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2 (moves the encoder).
        swap_loss_weights: apply ``codebook_weight`` to ``commit`` and vice versa (VQGAN-LC / taming legacy).
        code_chunk: codes per tile of the nearest-code search.
        row_chunk: latents per tile of the nearest-code search.
        check_finite: raise on NaN/Inf latents.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.25,
        swap_loss_weights: bool = False,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0 or codebook_size <= 0:
            raise ValueError(f"dim and codebook_size must be positive, got {dim} and {codebook_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_weight = codebook_weight
        self.commit_weight = commit_weight
        self.swap_loss_weights = swap_loss_weights
        self.code_chunk = code_chunk
        self.row_chunk = row_chunk
        self.check_finite = check_finite
        self._cache: tuple[tuple, Tensor] | None = None

    @abstractmethod
    def generate_codebook(self) -> Tensor:
        """(K, D) fp32 codebook computed from the current parameters, differentiable."""

    # --- codebook with an eval-mode cache ------------------------------------------------
    def _state_key(self) -> tuple:
        tensors = [*self.parameters(), *self.buffers()]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    @property
    def codebook(self) -> Tensor:
        """(K, D) fp32 generated codebook; recomputed every call in training, cached in eval."""
        if self.training:
            self._cache = None
            return self.generate_codebook()
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.generate_codebook().detach())
        return self._cache[1]

    def train(self, mode: bool = True) -> GeneratedCodebookQuantizer:
        self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def bake(self) -> VectorQuantizer:
        """A plain ``vq`` quantizer (eval mode) holding the generated codebook, for inference and export.

        Its ``encode``/``decode`` equal this quantizer's in eval mode; it carries the same loss weights,
        so it can also be fine-tuned as an ordinary codebook.
        """
        codes = self.generate_codebook().detach()
        plain = VectorQuantizer(
            self.dim,
            self.codebook_size,
            codebook_weight=self.codebook_weight,
            commit_weight=self.commit_weight,
            swap_loss_weights=self.swap_loss_weights,
            code_chunk=self.code_chunk,
            row_chunk=self.row_chunk,
            check_finite=self.check_finite,
        ).to(codes.device)
        plain.embedding.data.copy_(codes)
        return plain.eval()

    # --- contract --------------------------------------------------------------------------
    def decode(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with torch.no_grad():
            return F.embedding(indices.long(), self.codebook)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self.check_input(z, mask)
        if self.check_finite:
            self.check_finite_input(z)
        in_dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = z.float()[mask] if mask is not None else z.float().reshape(-1, self.dim)  # (M, D)
            codebook = self.generate_codebook() if self.training else self.codebook  # (K, D)
            if self.check_finite and self.training and not torch.isfinite(codebook).all():
                raise FloatingPointError(
                    f"{type(self).__name__}: the generated codebook holds NaN/Inf; lower the learning rate."
                )
            indices, _ = nearest_code(z_flat.detach(), codebook.detach(), self.code_chunk, self.row_chunk)
            codes = F.embedding(indices, codebook)  # (M, D): gradients reach the generator
            codebook_loss = mean_squared_error(codes, z_flat.detach())
            commit_loss = mean_squared_error(z_flat, codes.detach())
            w_codebook, w_commit = self.codebook_weight, self.commit_weight
            if self.swap_loss_weights:
                w_codebook, w_commit = w_commit, w_codebook
            loss = w_codebook * codebook_loss + w_commit * commit_loss
            z_q_flat = z_flat + (codes - z_flat).detach()  # straight-through
            counts = torch.bincount(indices, minlength=self.codebook_size).float()

        b, n, d = z.shape
        if mask is None:
            z_q, ids = z_q_flat.to(in_dtype).reshape(b, n, d), indices.reshape(b, n)
        else:
            z_q = z_q_flat.to(in_dtype).new_zeros(b, n, d).masked_scatter(mask.unsqueeze(-1), z_q_flat.to(in_dtype))
            ids = torch.full((b, n), -1, dtype=torch.long, device=z.device)
            ids[mask] = indices
        return QuantizerOutput(
            z_q=z_q,
            indices=ids,
            loss=loss,
            losses={"codebook": codebook_loss.detach(), "commit": commit_loss.detach()},
            mask=mask,
            metrics=batch_usage_metrics(counts),
        )
