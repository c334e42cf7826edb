"""The quantizer contract: one result type and one abstract base for every backend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What every quantizer returns from ``forward``.

    Attributes:
        z_q: (B, N, D) what the decoder sees (straight-through for hard VQ).
        indices: (B, N) int64 code ids; -1 where ``mask`` is False. Multi-stage quantizers
            (``num_stages`` set, e.g. residual) give one id per stage: (B, N, S).
        loss: scalar, already weighted, to add to the training loss.
        losses: unweighted parts for logging (``commit``, ``codebook``, ...).
        mask: (B, N) bool, the positions that are tokens; None means all.
        probs: (B, N, K) soft posterior, for soft quantizers when asked for.
        metrics: detached diagnostics.
    """

    z_q: Tensor
    indices: Tensor
    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    mask: Tensor | None = None
    probs: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


def batch_usage_metrics(counts: Tensor) -> dict[str, Tensor]:
    """Detached per-batch diagnostics from the code counts of one batch.

    The one place every backend takes its ``perplexity`` and ``used_codes`` metrics from.

    Args:
        counts: (K,) float tokens per code in this batch (e.g. ``torch.bincount(ids, minlength=K)``).

    Returns:
        ``perplexity``: exp of the entropy of the batch's code distribution (1 .. K; 1 for an empty batch),
        ``used_codes``: number of codes with a nonzero count.
    """
    counts = counts.detach()
    total = counts.sum().clamp_min(1.0)
    # H = -sum p log p with p = c / total, as log(total) - sum c log c / total: three passes over K, not six
    entropy = total.log() - (counts * counts.clamp_min(1e-30).log()).sum() / total
    return {"perplexity": entropy.exp(), "used_codes": torch.count_nonzero(counts).float()}


class Quantizer(nn.Module, ABC):
    """Abstract base: maps channels-last latents (B, N, D) to codes and back.

    Subclasses set ``dim`` (the latent width they accept) and ``codebook_size`` (per stage for
    multi-stage quantizers, which also set ``num_stages``). Soft
    quantizers (``soft = True``) hand the decoder a mix of codes: their ``encode``
    gives the posterior's argmax ids and ``decode`` the hard codes of those ids, so
    ``decode(encode(z))`` is the hard approximation of ``forward(z).z_q``.
    """

    dim: int
    codebook_size: int
    soft: bool = False
    # None: one id per token, indices (B, N) and codebook (K, C). An int S (multi-stage, e.g. residual):
    # S ids per token, indices (B, N, S), codebook (S, K, C), and decode takes ids (..., S).
    num_stages: int | None = None
    # True: ``mask`` of the output marks the positions that end a token (a subset of the input's), ids are -1
    # elsewhere: tokens of variable length (the gated quantizer). Such a quantizer also has ``max_token_len``,
    # ``hold_tokens(out)`` and ``expand(ids)``: the token vector at every position, for models that decode every
    # position (``TokenizerModel.decoder_tokens``).
    variable_tokens: bool = False

    @abstractmethod
    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D); ``mask`` (B, N) bool marks real tokens."""

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Code ids (B, N) for ``z`` (B, N, D), without touching any codebook state."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, mask).indices
        finally:
            self.train(was_training)

    @abstractmethod
    def decode(self, indices: Tensor) -> Tensor:
        """Vectors (..., D) for ids (...); for hard quantizers equals ``forward(z).z_q`` in eval mode."""

    @property
    @abstractmethod
    def codebook(self) -> Tensor:
        """(K, D_code) the codebook the search runs against, after any projector."""

    def check_finite_input(self, z: Tensor, shape: torch.Size | None = None) -> None:
        """Raise if ``z`` holds NaN/Inf (backends call it when their ``check_finite`` option is on).

        ``shape``: the latents' shape to name in the error when ``z`` is derived from them (e.g. their projection
        to a narrow code space, which is non-finite wherever they are and far cheaper to check).
        Under ``torch.compile`` the check is an asynchronous assertion inside the graph (a Python branch on a
        tensor's value would break it); eager runs raise the error below.
        """
        if torch.compiler.is_compiling():
            torch._assert_async(torch.isfinite(z).all(), "quantizer received NaN/Inf latents")
            return
        if not torch.isfinite(z).all():
            named = tuple(z.shape if shape is None else shape)
            raise FloatingPointError(
                f"{type(self).__name__} received NaN/Inf latents {named}: the encoder diverged "
                "or the input holds NaNs. Check the data, lower the learning rate or enable gradient clipping."
            )

    def check_input(self, z: Tensor, mask: Tensor | None) -> None:
        """Raise a clear error for inputs every backend rejects."""
        if not isinstance(z, Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(z).__name__}.")
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (batch, tokens, {self.dim}) "
                f"(channels last), got {tuple(z.shape)}. Flatten images with "
                "z.flatten(2).transpose(1, 2) or set the quantizer's dim to the encoder's latent_dim."
            )
        if not z.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects floating-point latents, got {z.dtype}.")
        if mask is not None and (mask.shape != z.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be a bool tensor of shape {tuple(z.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}."
            )

    def check_indices(self, indices: Tensor) -> None:
        """Raise a clear error for ids that cannot be decoded."""
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"decode expects integer code ids, got {indices.dtype}.")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"code ids must lie in [0, {self.codebook_size - 1}], got range "
                f"[{int(indices.min())}, {int(indices.max())}]; -1 marks masked positions and "
                "must be removed before decoding."
            )
