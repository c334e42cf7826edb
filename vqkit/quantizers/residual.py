"""Residual quantization (SoundStream / EnCodec RVQ) over any registered backend.

Stage 1 quantizes the latents, stage 2 the error stage 1 left, and so on; the decoder
sees the sum of the stage outputs. Each stage is an independent quantizer of any
registered type (``vq``, ``ema_vq``, ``softvq``, ...) built with the same options.

Ids. A token gets one id per stage, so ``indices`` are ``(B, N, S)`` (stage axis last) and
the class sets ``num_stages = S`` (the contract's marker for multi-stage ids; single-stage
backends leave it ``None`` and return ``(B, N)``). ``codebook`` is ``(S, K, C)``: one
codebook of ``codebook_size`` codes per stage. Masked positions are ``-1`` in every stage.

Variable bitrate. ``decode`` accepts ids ``(..., s)`` for any ``1 <= s <= S`` and sums the
first ``s`` stages; ``encode(z, num_stages=s)`` / ``forward(z, num_stages=s)`` quantize
with the first ``s`` stages only. A model trained with quantizer dropout decodes well at
every ``s``.

Quantizer dropout (training only). With probability ``dropout_prob`` a training sample
keeps only its first ``n ~ U{dropout_min_stages, ..., S}`` stages in the sum the decoder
sees (drawn per sample, from the global torch RNG). Every stage still runs on every token:
the residual a stage quantizes does not depend on how many stages the decoder sees, so all
codebooks keep learning (their codebook/commit losses and EMA statistics cover all tokens),
and all parameters take part in every step, which keeps DDP free of unused parameters.

Gradients. Hard stages (straight-through backends) are combined as in EnCodec: the stage
outputs are summed without gradient and one straight-through estimator passes the
decoder's gradient to the latents unchanged. The commit loss of stage ``k`` acts on its
residual ``z - sum_{j<k} sg(q_j)``, so every stage's commitment shapes the encoder. Soft
stages (``softvq``) are differentiable: their mixes are summed with their gradients.
A limitation of the hard path: inner factorized codes (``stage_options.code_dim``) get no
decoder gradient for their output projection. Stages whose codes live in a fixed small space (``fsq``, ``lfq``,
``bsq``: one coordinate per level or bit) would project every residual in and out through Linear layers that
no gradient reaches; such stages are refused at another width, and ``code_dim`` (the width of their codes)
makes the residual project once instead: Linear D -> C before the first stage, the stages at width C, Linear
C -> D after the sum, as vector-quantize-pytorch's ResidualFSQ / ResidualLFQ do. The decoder's gradient
trains the output map, the straight-through estimator over the sum passes it on to the input map.

Residual arithmetic and the per-stage statistics run in fp32, also under autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.projection import CodeProjection
from vqkit.quantizers.registry import build_inner_quantizer, register_quantizer, self_contained_inner_options


@register_quantizer("residual")
class ResidualQuantizer(Quantizer):
    """``num_stages`` quantizers applied to successive residuals.

    Args:
        dim: width D of the latents (B, N, D).
        codebook_size: codes K per stage.
        num_stages: number of stages S (EnCodec 24 kHz: 32 at 24 kbps, 8 at 6 kbps).
        stage_quantizer: registry name of the backend of every stage (``vq``, ``ema_vq``, ``softvq``, ...).
        stage_options: extra keyword arguments of that backend (e.g. ``{"decay": 0.99, "kmeans_init": true}``).
        dropout_prob: probability that a training sample keeps only a random number of stages (0 = off).
        dropout_min_stages: the fewest stages a dropped-out sample keeps.
        code_dim: width C of the stages' codes, projected once from and back to D (None: C = D). Needed by
            ``fsq`` / ``lfq`` / ``bsq`` stages when D is not their code width (len(levels), log2 K).

    Example::

        >>> rvq = build_quantizer("residual", dim=64, codebook_size=1024, num_stages=8, stage_quantizer="ema_vq")
        >>> out = rvq(z)                      # z (B, N, 64)
        >>> out.indices.shape                 # (B, N, 8)
        >>> rvq.decode(out.indices[..., :2])  # (B, N, 64) from the first 2 stages: a quarter of the bitrate
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_stages: int = 4,
        stage_quantizer: str = "vq",
        stage_options: dict[str, Any] | None = None,
        dropout_prob: float = 0.0,
        dropout_min_stages: int = 1,
        code_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if not 0.0 <= dropout_prob <= 1.0:
            raise ValueError(f"dropout_prob must be in [0, 1], got {dropout_prob}")
        if not 1 <= dropout_min_stages <= num_stages:
            raise ValueError(f"dropout_min_stages must be in [1, num_stages={num_stages}], got {dropout_min_stages}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_stages = num_stages
        self.stage_quantizer = stage_quantizer
        if code_dim is not None and code_dim < 1:
            raise ValueError(f"residual: code_dim must be positive (or null for dim), got {code_dim}")
        self.code_dim = code_dim or dim
        self.projection = CodeProjection(dim, self.code_dim)
        self.stages = nn.ModuleList(
            build_inner_quantizer(stage_quantizer, self.code_dim, codebook_size, stage_options,
                                  "stage_quantizer / stage_options")
            for _ in range(num_stages)
        )
        inner = getattr(self.stages[0], "projection", None)
        if isinstance(inner, CodeProjection) and inner.active and not self.stages[0].soft:
            width = inner.project_in.out_features
            raise ValueError(
                f"residual: {stage_quantizer} stages have {width}-dim codes but get {self.code_dim}-dim residuals, so "
                f"each stage would map them in and out through Linear layers that no gradient reaches; set "
                f"quantizer.code_dim={width} (the residual then projects once: before the first stage, after the sum)"
            )
        self.soft = bool(self.stages[0].soft)
        self.dropout_prob = dropout_prob
        self.dropout_min_stages = dropout_min_stages

    @classmethod
    def self_contained_arguments(cls, config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
        """The stages' own (``stage_options``), e.g. a vqgan_lc stage's codebook_path (all stages alike)."""
        return self_contained_inner_options(cls, config, "stage_quantizer", "stage_options", shapes, "stages.0.")

    @property
    def codebook(self) -> Tensor:
        """(S, K, C) the stages' codebooks, fp32 (C = ``code_dim``: before the residual's output projection)."""
        return torch.stack([stage.codebook.float() for stage in self.stages])

    def _check_stage_count(self, num_stages: int | None) -> int:
        n = self.num_stages if num_stages is None else int(num_stages)
        if not 1 <= n <= self.num_stages:
            raise ValueError(f"num_stages must be in [1, {self.num_stages}], got {num_stages}")
        return n

    def forward(self, z: Tensor, mask: Tensor | None = None, num_stages: int | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D) with the first ``num_stages`` stages (None: all).

        Returns:
            ``indices`` (B, N, s), ``z_q`` (B, N, D) the sum of the stages the decoder sees,
            ``loss`` the sum of the stage losses, ``losses`` summed per name, ``metrics`` per
            stage (``stage{k}/...``: the backend's batch metrics and the RMS of the residual
            entering the stage) plus ``residual_rms`` (the error left after the last stage).
        """
        self.check_input(z, mask)
        n_stages = self._check_stage_count(num_stages)
        b, n, _ = z.shape
        in_dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = self.projection.to_code(z)  # (B, N, C) fp32; z itself when C = D
            keep = self._kept_stages(b, n_stages, z.device)  # (B, s) bool: stages the decoder sees
            residual = z32
            hard_sum = torch.zeros_like(z32)
            soft_sum = torch.zeros_like(z32)
            ids, losses, metrics = [], {}, {}
            loss = z32.new_zeros(())
            valid = mask.unsqueeze(-1).float() if mask is not None else None
            count = mask.sum().clamp_min(1).float() * self.code_dim if mask is not None else float(z32.numel())
            for k, stage in enumerate(self.stages[:n_stages]):
                rms = residual.detach().pow(2) if valid is None else residual.detach().pow(2) * valid
                metrics[f"stage{k}/residual_rms"] = (rms.sum() / count).sqrt()
                out = stage(residual, mask)
                q_k = out.z_q.float()
                ids.append(out.indices)
                loss = loss + out.loss.float()
                for name, value in out.losses.items():
                    losses[name] = losses.get(name, 0.0) + value.float()
                metrics.update({f"stage{k}/{name}": value.detach() for name, value in out.metrics.items()})
                weight = keep[:, k].to(q_k.dtype).view(b, 1, 1)
                if self.soft:
                    soft_sum = soft_sum + weight * q_k
                else:
                    hard_sum = hard_sum + weight * q_k.detach()
                residual = residual - q_k.detach()
            rms = residual.detach().pow(2) if valid is None else residual.detach().pow(2) * valid
            metrics["residual_rms"] = (rms.sum() / count).sqrt()
            metrics["active_stages"] = keep.float().sum(1).mean()
            # Hard stages: one straight-through estimator over the sum (identity gradient to z).
            z_q = self.projection.from_code(soft_sum if self.soft else z32 + (hard_sum - z32).detach())
            if mask is not None:
                z_q = z_q * valid
        indices = torch.stack(ids, dim=-1)  # (B, N, s)
        return QuantizerOutput(
            z_q=z_q.to(in_dtype), indices=indices, loss=loss, losses=losses, mask=mask, metrics=metrics
        )

    def _kept_stages(self, batch: int, n_stages: int, device: torch.device) -> Tensor:
        """(B, s) bool: which of the first ``s`` stages each sample's decoder input sums (dropout in training)."""
        keep = torch.ones(batch, n_stages, dtype=torch.bool, device=device)
        if not self.training or self.dropout_prob == 0.0:
            return keep
        low = min(self.dropout_min_stages, n_stages)
        drop = torch.rand(batch, device=device) < self.dropout_prob
        kept = torch.randint(low, n_stages + 1, (batch,), device=device)
        kept = torch.where(drop, kept, torch.full_like(kept, n_stages))
        return torch.arange(n_stages, device=device).unsqueeze(0) < kept.unsqueeze(1)

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None, num_stages: int | None = None) -> Tensor:
        """Ids (B, N, s) of the first ``num_stages`` stages (None: all), without touching any state."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(z, mask, num_stages).indices
        finally:
            self.train(was_training)

    def decode(self, indices: Tensor) -> Tensor:
        """Ids (..., s) with ``1 <= s <= S`` -> vectors (..., D), the sum of the first ``s`` stages' codes."""
        self.check_indices(indices)
        if indices.dim() == 0 or not 1 <= indices.shape[-1] <= self.num_stages:
            raise ValueError(
                f"residual ids carry the stage axis last: expected (..., s) with 1 <= s <= {self.num_stages}, "
                f"got shape {tuple(indices.shape)}"
            )
        out = None
        for k in range(indices.shape[-1]):
            vectors = self.stages[k].decode(indices[..., k]).float()
            out = vectors if out is None else out + vectors
        return self.projection.from_code(out)
