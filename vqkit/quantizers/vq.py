"""Straight-through vector quantization with a learned codebook (VQ-VAE / VQGAN).

Options cover the variants the reference codebases use: l2-normalised (cosine)
codes, low-dimensional factorised codes (ViT-VQGAN: project in, search, project
out), k-means initialisation from the first batches, dead-code revival and the
swapped loss weighting of taming's legacy quantizer, VQGAN-LC and GQ-VAE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.distributed import all_reduce_sum, sample_rows
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK, kmeans, nearest_code


@register_quantizer("vq")
class VectorQuantizer(Quantizer):
    """Nearest-code quantizer trained by the codebook and commitment losses.

    Args:
        dim: width D of the latents (B, N, D) it quantizes.
        codebook_size: number of codes K.
        code_dim: width of the codes; when smaller than ``dim`` the latents are
            projected in with a Linear, searched there, and projected back out.
        normalize: l2-normalise latents and codes before the search (cosine codes).
        codebook_weight: weight of ``codebook`` = ||sg(z) - e||^2 (moves codes).
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2 (moves the encoder).
        swap_loss_weights: apply ``codebook_weight`` to ``commit`` and vice versa, as
            taming's ``VectorQuantizer2(legacy=True)``, VQGAN-LC and GQ-VAE do.
        kmeans_init: initialise the codes by k-means over the first training batches.
        kmeans_batches: how many training batches to collect for k-means.
        kmeans_iters: Lloyd iterations.
        kmeans_max_samples: cap on the vectors k-means sees (random subsample).
        dead_code_threshold: codes whose running usage (tokens per step, EMA) falls
            below this are replaced by random latents of the current batch; 0 = off.
        usage_decay: decay of the running usage estimate.
        revive_every: check for dead codes every this many training steps.
        code_chunk: codes per tile of the nearest-code search.
        row_chunk: latents per tile of the nearest-code search.
        check_finite: raise on NaN/Inf latents (one reduction per step).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        code_dim: int | None = None,
        normalize: bool = False,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.25,
        swap_loss_weights: bool = False,
        kmeans_init: bool = False,
        kmeans_batches: int = 1,
        kmeans_iters: int = 10,
        kmeans_max_samples: int = 262_144,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        revive_every: int = 1,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0 or codebook_size <= 0:
            raise ValueError(f"dim and codebook_size must be positive, got {dim} and {codebook_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.code_dim = code_dim or dim
        self.normalize = normalize
        self.codebook_weight = codebook_weight
        self.commit_weight = commit_weight
        self.swap_loss_weights = swap_loss_weights
        self.kmeans_init = kmeans_init
        self.kmeans_batches = kmeans_batches
        self.kmeans_iters = kmeans_iters
        self.kmeans_max_samples = kmeans_max_samples
        self.dead_code_threshold = dead_code_threshold
        self.usage_decay = usage_decay
        self.revive_every = revive_every
        self.code_chunk = code_chunk
        self.row_chunk = row_chunk
        self.check_finite = check_finite

        factorized = self.code_dim != dim
        self.project_in = nn.Linear(dim, self.code_dim) if factorized else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim) if factorized else nn.Identity()
        self._init_codebook_storage(torch.randn(codebook_size, self.code_dim) / self.code_dim**0.5)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # Codes start alive at the threshold, so an untrained code is revived only once it goes unused.
        self.register_buffer("code_usage", torch.full((codebook_size,), float(dead_code_threshold)))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._kmeans_pending: list[Tensor] = []

    # --- codebook storage: overridden by the EMA backend -------------------------------
    def _init_codebook_storage(self, init: Tensor) -> None:
        self.embedding = nn.Parameter(init)

    def _raw_codebook(self) -> Tensor:
        return self.embedding

    @torch.no_grad()
    def _set_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Overwrite the codes at ``rows`` (and reset their statistics)."""
        self.embedding.data[rows] = vectors.to(self.embedding.dtype)
        self.code_usage[rows] = self.dead_code_threshold

    @torch.no_grad()
    def _update_codebook(self, z_code: Tensor, indices: Tensor, counts: Tensor) -> None:
        """Per-step codebook update outside autograd; the learned codebook has none."""

    def _usage(self) -> Tensor:
        """Running tokens-per-step estimate per code, identical on every rank."""
        return self.code_usage

    def _weighted_losses(self, z_code: Tensor, codes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        codebook = mean_squared_error(codes, z_code.detach())
        commit = mean_squared_error(z_code, codes.detach())
        w_codebook, w_commit = self.codebook_weight, self.commit_weight
        if self.swap_loss_weights:
            w_codebook, w_commit = w_commit, w_codebook
        return w_codebook * codebook + w_commit * commit, {"codebook": codebook.detach(), "commit": commit.detach()}

    # --- public API ---------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        codes = self._raw_codebook().float()
        return F.normalize(codes, dim=-1) if self.normalize else codes

    def _to_code_space(self, z: Tensor) -> Tensor:
        if isinstance(self.project_in, nn.Linear):
            z = self.project_in(z.to(self.project_in.weight.dtype)).float()
        return F.normalize(z, dim=-1) if self.normalize else z

    def _from_code_space(self, codes: Tensor) -> Tensor:
        if isinstance(self.project_out, nn.Linear):
            return self.project_out(codes.to(self.project_out.weight.dtype)).float()
        return codes

    def decode(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self._from_code_space(F.embedding(indices.long(), self.codebook))

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self.check_input(z, mask)
        if self.check_finite:
            self.check_finite_input(z)
        in_dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = z.float()[mask] if mask is not None else z.float().reshape(-1, self.dim)  # (M, D)
            z_code = self._to_code_space(z_flat)  # (M, C)
            if self.training and not bool(self.initialized):
                self._collect_for_kmeans(z_code)
            codebook = self.codebook  # (K, C)
            indices, _ = nearest_code(z_code.detach(), codebook.detach(), self.code_chunk, self.row_chunk)
            codes = F.embedding(indices, codebook)  # (M, C), gradients reach the codebook
            loss, losses = self._weighted_losses(z_code, codes)
            z_q_flat = self._from_code_space(z_code + (codes - z_code).detach())  # straight-through
            counts = torch.bincount(indices, minlength=self.codebook_size).float()
            metrics = _batch_usage_metrics(counts)
            if self.training:
                self._training_step_updates(z_code.detach(), indices, counts)

        z_q, ids = self._scatter(z_q_flat.to(in_dtype), indices, z, mask)
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses=losses, mask=mask, metrics=metrics)

    # --- internals ------------------------------------------------------------------------
    @torch.no_grad()
    def _training_step_updates(self, z_code: Tensor, indices: Tensor, counts: Tensor) -> None:
        global_counts = all_reduce_sum(counts.clone())
        if global_counts.sum() == 0:  # every position of every rank was masked out
            return
        self._update_codebook(z_code, indices, global_counts)
        self.code_usage.lerp_(global_counts.to(self.code_usage.dtype), 1.0 - self.usage_decay)
        self.steps += 1
        if self.dead_code_threshold > 0 and int(self.steps) % self.revive_every == 0:
            self.revive_dead_codes(z_code)

    @torch.no_grad()
    def revive_dead_codes(self, z_code: Tensor) -> int:
        """Replace codes whose usage is below the threshold by latents of this batch.

        The dead set is computed from all-reduced statistics and the replacements are
        drawn on rank 0 and broadcast, so every rank writes the same codes.

        Returns:
            how many codes were revived.
        """
        dead = (self._usage() < self.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        vectors = sample_rows(z_code.float(), dead.numel())
        self._set_codes(dead, vectors)
        return int(dead.numel())

    @torch.no_grad()
    def _collect_for_kmeans(self, z_code: Tensor) -> None:
        self._kmeans_pending.append(z_code.detach())
        if len(self._kmeans_pending) < self.kmeans_batches:
            return
        data = torch.cat(self._kmeans_pending)
        self._kmeans_pending = []
        if int(all_reduce_sum(torch.tensor([data.shape[0]], device=data.device))) == 0:
            return  # nothing to cluster on any rank yet: try again with the next batches
        if data.shape[0] > self.kmeans_max_samples:
            data = data[torch.randperm(data.shape[0], device=data.device)[: self.kmeans_max_samples]]
        centroids, _ = kmeans(data, self.codebook_size, self.kmeans_iters, self.normalize, self.code_chunk)
        self._set_codes(torch.arange(self.codebook_size, device=data.device), centroids)
        self.initialized.fill_(True)

    @staticmethod
    def _scatter(z_q_flat: Tensor, indices: Tensor, z: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, n, d = z.shape
        if mask is None:
            return z_q_flat.reshape(b, n, d), indices.reshape(b, n)
        z_q = z_q_flat.new_zeros(b, n, d).masked_scatter(mask.unsqueeze(-1), z_q_flat)
        ids = torch.full((b, n), -1, dtype=torch.long, device=z.device)
        ids[mask] = indices
        return z_q, ids


def mean_squared_error(a: Tensor, b: Tensor) -> Tensor:
    """MSE that is 0 (not NaN) when every position is masked out, keeping the graph."""
    return (a - b).pow(2).sum() / max(a.numel(), 1)


def _batch_usage_metrics(counts: Tensor) -> dict[str, Tensor]:
    """Detached per-batch diagnostics from code counts (K,)."""
    total = counts.sum().clamp_min(1.0)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"perplexity": entropy.exp().detach(), "used_codes": (counts > 0).sum().float()}
