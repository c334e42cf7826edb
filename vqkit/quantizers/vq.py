"""Straight-through vector quantization with a learned codebook (VQ-VAE / VQGAN): THE hard nearest-code forward.

Options cover the variants the reference codebases use: l2-normalised (cosine)
codes, low-dimensional factorised codes (ViT-VQGAN: project in, search, project
out), k-means initialisation from the first batches, dead-code revival (``revival.py``:
batch latents or a distortion reservoir), GQ-VAE's pass-through warm-up (the first training
steps return z unquantized while a reservoir fills, then every code is drawn from it) and the
swapped loss weighting of taming's legacy quantizer, VQGAN-LC and GQ-VAE.

Every hard backend is this class: ``ema_vq`` changes how the codes are stored and updated,
``vqgan_lc`` and ``vqbridge`` how the codebook is produced (``generate_codebook``); the input
checks, the fp32 search, the gradient estimator (``estimators.py``: straight-through or the rotation
trick), the losses, the counts and the training-step updates are the ones here.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.distributed import all_reduce_sum
from vqkit.quantizers.estimators import check_estimator, estimate
from vqkit.quantizers.grouped import GroupedQuantizer
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.revival import CodeRevival, resolve_strategy
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
        dead_code_threshold: ``revival="batch"``: codes whose running usage (tokens per step,
            EMA) falls below this are dead; must be 0 for the other strategies.
        usage_decay: decay of the running usage estimate ``code_usage``.
        revive_every: look for dead codes every this many training steps; None: 1 for
            ``batch``, 250 for ``reservoir``.
        revival: dead-code revival strategy (``vqkit.quantizers.revival``): ``none``; ``batch``
            (dead codes become random latents of the current batch); ``reservoir`` (codes unused
            since the last revival become samples of a reservoir of high-distortion latents).
            None: ``batch`` when ``dead_code_threshold > 0``, else ``none``.
        reservoir_size: ``reservoir``: latents the reservoir holds.
        reservoir_per_step: ``reservoir``: the highest-distortion latents of each step offered to it.
        reservoir_reset: ``reservoir``: empty the reservoir after every revival (GQ-VAE's code), so
            revived codes are drawn from the latents offered since the previous revival only.
        passthrough_steps: GQ-VAE's warm-up: the first this many training steps return the latents
            unquantized (``z_q`` = z, the codebook losses 0) and offer every latent to the reservoir;
            the last of them overwrites every code with reservoir latents, and revivals then follow
            every ``revive_every`` steps after it. Counted by the ``steps`` buffer (checkpointed, the
            same on every rank). Needs ``revival="reservoir"`` and no ``kmeans_init``; 0: off.
        code_chunk: codes per tile of the nearest-code search.
        row_chunk: latents per tile of the nearest-code search.
        check_finite: raise on NaN/Inf latents (one reduction per step).
        estimator: how the decoder's gradient reaches the latents through the hard step
            (``vqkit.quantizers.estimators``): ``ste`` (straight-through, the identity) or ``rotation``
            (the rotation trick of Fifty et al. 2024: a detached rotation and rescale that map z onto its code).
            The forward value is the same for both.
        num_groups: G > 1 splits every latent into G groups of ``dim / G`` channels, each quantized on its own
            (``vqkit.quantizers.grouped``): the constructor then returns a ``GroupedQuantizer`` of G quantizers of
            this class (every other option applies to each group), with ids (B, N, G). 1: this quantizer.
        shared_codebook: with ``num_groups > 1``: one codebook for every group (True) or one per group (False).
    """

    # False for codebooks produced by a network (vqgan_lc, vqbridge): their codes are not rows that
    # k-means or revival could overwrite, and the bookkeeping buffers below stay out of checkpoints.
    writable_codebook: bool = True

    def __new__(cls, *args, num_groups: int = 1, shared_codebook: bool = True, **kwargs):
        """``num_groups > 1``: a ``GroupedQuantizer`` of quantizers of this class (so configs need no other target)."""
        if num_groups == 1:
            return super().__new__(cls)
        if not cls.writable_codebook:
            raise TypeError(
                f"num_groups applies to the quantizers with a codebook of their own (vq, ema_vq); {cls.__name__} "
                "generates its codebook from parameters: remove num_groups"
            )
        return GroupedQuantizer(cls, *args, num_groups=num_groups, shared_codebook=shared_codebook, **kwargs)

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
        revive_every: int | None = None,
        revival: str | None = None,
        reservoir_size: int = 16384,
        reservoir_per_step: int = 2048,
        reservoir_reset: bool = False,
        passthrough_steps: int = 0,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
        estimator: str = "ste",
        num_groups: int = 1,
        shared_codebook: bool = True,
    ) -> None:
        super().__init__()
        if num_groups != 1:  # __new__ built a GroupedQuantizer instead; only a direct __init__ call gets here
            raise ValueError(f"num_groups={num_groups}: build the quantizer with VectorQuantizer(..., num_groups=...)")
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
        self.usage_decay = usage_decay
        self.code_chunk = code_chunk
        self.row_chunk = row_chunk
        self.check_finite = check_finite
        self.estimator = check_estimator(estimator)
        if not self.writable_codebook and (kmeans_init or self.code_dim != dim or normalize):
            raise TypeError(
                f"{type(self).__name__} generates its codebook from parameters: kmeans_init, code_dim and "
                "normalize do not apply to it"
            )
        strategy = resolve_strategy(revival, dead_code_threshold)
        if passthrough_steps < 0:
            raise ValueError(f"passthrough_steps must be >= 0, got {passthrough_steps}")
        if passthrough_steps and strategy != "reservoir":
            raise ValueError(
                f"passthrough_steps={passthrough_steps} fills a reservoir to draw every code from at its end; it needs "
                f"revival='reservoir', got {strategy!r}"
            )
        if passthrough_steps and kmeans_init:
            raise ValueError(
                "passthrough_steps overwrites every code with reservoir latents at its end, so kmeans_init would be "
                "thrown away; set kmeans_init=false (or passthrough_steps=0)"
            )
        self.passthrough_steps = int(passthrough_steps)

        factorized = self.code_dim != dim
        self.project_in = nn.Linear(dim, self.code_dim) if factorized else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, dim) if factorized else nn.Identity()
        self._init_codebook_storage()
        keep = self.writable_codebook  # generated codebooks: bookkeeping only, not checkpointed
        self.register_buffer("initialized", torch.tensor(not kmeans_init), persistent=keep)
        # Codes start alive at the threshold, so an untrained code is revived only once it goes unused.
        self.register_buffer("code_usage", torch.full((codebook_size,), float(dead_code_threshold)), persistent=keep)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long), persistent=keep)
        self._kmeans_pending: list[Tensor] = []
        self.revival = self._build_revival(strategy, dead_code_threshold, revive_every, reservoir_size,
                                           reservoir_per_step, reservoir_reset)

    # --- codebook storage and production: the hooks subclasses override -----------------
    def _init_codebook_storage(self) -> None:
        """Create the trainable codes (EMA: buffers; generated codebooks: their generator)."""
        self.embedding = nn.Parameter(self._random_codes())

    def _random_codes(self) -> Tensor:
        """(K, C) N(0, 1/C) starting codes."""
        return torch.randn(self.codebook_size, self.code_dim) / self.code_dim**0.5

    def _raw_codebook(self) -> Tensor:
        return self.embedding

    def generate_codebook(self) -> Tensor:
        """(K, C) fp32 codebook from the current parameters, differentiable.

        Here the (optionally l2-normalised) embedding; subclasses that compute the codebook with a
        network (vqgan_lc, vqbridge) override this hook and nothing else of the forward.
        """
        codes = self._raw_codebook().float()
        return F.normalize(codes, dim=-1) if self.normalize else codes

    @property
    def codebook(self) -> Tensor:
        """(K, C) fp32 codebook the search runs against."""
        return self.generate_codebook()

    @torch.no_grad()
    def replace_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Overwrite the codes ``rows`` (R,) with ``vectors`` (R, C) and reset their statistics.

        Used by k-means initialisation and dead-code revival; the new codes restart with a running
        usage of ``dead_code_threshold``. Every rank must write the same rows and vectors.
        """
        self.embedding.data[rows] = vectors.to(self.embedding.dtype)
        self.code_usage[rows] = self.revival.dead_code_threshold

    @torch.no_grad()
    def _update_codebook(self, z_code: Tensor, indices: Tensor, counts: Tensor) -> None:
        """Per-step codebook update outside autograd; the learned codebook has none."""

    def _weighted_losses(self, z_code: Tensor, codes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        codebook = mean_squared_error(codes, z_code.detach())
        commit = mean_squared_error(z_code, codes.detach())
        w_codebook, w_commit = self.codebook_weight, self.commit_weight
        if self.swap_loss_weights:
            w_codebook, w_commit = w_commit, w_codebook
        return w_codebook * codebook + w_commit * commit, {"codebook": codebook.detach(), "commit": commit.detach()}

    # --- dead-code revival ------------------------------------------------------------------
    def _build_revival(self, strategy: str, dead_code_threshold: float, revive_every: int | None,
                       reservoir_size: int, reservoir_per_step: int, reservoir_reset: bool) -> CodeRevival:
        if strategy != "none" and not self.writable_codebook:
            raise TypeError(
                f"{type(self).__name__} generates its codebook from parameters, so a dead code cannot be revived by "
                f"overwriting its row (revival={strategy!r}); use revival=none (every code moves with the shared "
                "generator, which keeps usage high) or bake() it into a plain vq quantizer first"
            )
        policy = CodeRevival(strategy, self.codebook_size, self.code_dim, dead_code_threshold, revive_every,
                             reservoir_size, reservoir_per_step, reservoir_reset, self.passthrough_steps)
        return policy.to(self.steps.device)

    def configure_revival(
        self,
        revival: str | None,
        dead_code_threshold: float = 0.0,
        revive_every: int | None = None,
        reservoir_size: int = 16384,
        reservoir_per_step: int = 2048,
        reservoir_reset: bool = False,
    ) -> CodeRevival:
        """Replace the dead-code revival policy (same options and defaults as the constructor).

        The policy's state (reservoir, counts since the last revival) starts afresh. Before the first
        training step this equals building the quantizer with these options (the running usage
        ``code_usage`` restarts at the new threshold); afterwards ``code_usage`` is kept.

        Returns:
            the new policy (also ``self.revival``).

        Raises:
            ValueError: inconsistent options (see ``revival.resolve_strategy``), or a strategy other than
                ``reservoir`` under a pass-through warm-up.
            TypeError: revival asked of a generated codebook.
        """
        strategy = resolve_strategy(revival, dead_code_threshold)
        if self.passthrough_steps and strategy != "reservoir":
            raise ValueError(f"passthrough_steps={self.passthrough_steps} needs revival='reservoir', got {strategy!r}")
        self.revival = self._build_revival(strategy, dead_code_threshold, revive_every, reservoir_size,
                                           reservoir_per_step, reservoir_reset)
        if int(self.steps) == 0:
            self.code_usage.fill_(float(dead_code_threshold))
        return self.revival

    @property
    def dead_code_threshold(self) -> float:
        """The usage threshold of ``batch`` revival (0 for the other strategies)."""
        return self.revival.dead_code_threshold

    @property
    def revive_every(self) -> int:
        return self.revival.revive_every

    # --- public API ---------------------------------------------------------------------
    def to_code_space(self, z: Tensor) -> Tensor:
        """Latents (..., D) -> the searched space (..., C): ``project_in``, then l2-normalised with ``normalize``."""
        if isinstance(self.project_in, nn.Linear):
            z = self.project_in(z.to(self.project_in.weight.dtype)).float()
        return F.normalize(z, dim=-1) if self.normalize else z

    def from_code_space(self, codes: Tensor) -> Tensor:
        """Codes (..., C) -> latent space (..., D) (``project_out`` for factorised codes)."""
        if isinstance(self.project_out, nn.Linear):
            return self.project_out(codes.to(self.project_out.weight.dtype)).float()
        return codes

    def decode(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return self.from_code_space(F.embedding(indices.long(), self.codebook))

    @property
    def in_passthrough(self) -> bool:
        """Whether the next training step is one of the ``passthrough_steps`` warm-up steps."""
        return self.passthrough_steps > 0 and int(self.steps) < self.passthrough_steps

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self.check_input(z, mask)
        if self.check_finite:
            self.check_finite_input(z)
        in_dtype = z.dtype
        passthrough = self.training and self.in_passthrough
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_flat = z.float()[mask] if mask is not None else z.float().reshape(-1, self.dim)  # (M, D)
            z_code = self.to_code_space(z_flat)  # (M, C)
            if self.training and self.kmeans_init and not bool(self.initialized):
                self._collect_for_kmeans(z_code)
            codebook = self.codebook  # (K, C)
            indices, _ = nearest_code(z_code.detach(), codebook.detach(), self.code_chunk, self.row_chunk)
            codes = F.embedding(indices, codebook)  # (M, C), gradients reach the codebook (or its generator)
            loss, losses = self._weighted_losses(z_code, codes)
            counts = torch.bincount(indices, minlength=self.codebook_size).float()  # (K,)
            metrics = batch_usage_metrics(counts)
            if passthrough:
                # warm-up: the caller sees the continuous latents; the codes (and their losses) are only logged.
                # The loss keeps its graph at weight 0, so every parameter still gets a (zero) gradient (DDP).
                z_q_flat = self.from_code_space(z_code)
                loss = loss * 0.0
                self._passthrough_step_updates(z_code.detach())
            else:
                z_q_flat = self.from_code_space(estimate(self.estimator, z_code, codes))  # value: codes
                if self.training:
                    self._training_step_updates(z_code.detach(), indices, counts)

        z_q, ids = self._scatter(z_q_flat.to(in_dtype), indices, z, mask)
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses=losses, mask=mask, metrics=metrics)

    # --- internals ------------------------------------------------------------------------
    @torch.no_grad()
    def _training_step_updates(self, z_code: Tensor, indices: Tensor, counts: Tensor) -> None:
        # Host-side decisions only where an option asks for them, so that with k-means, revival and pass-through
        # off a training step is one graph (torch.compile(fullgraph=True)).
        global_counts = all_reduce_sum(counts.clone())
        if indices.numel() == 0 and int(global_counts.sum()) == 0:  # every position of every rank was masked out
            return
        self._update_codebook(z_code, indices, global_counts)
        self.code_usage.lerp_(global_counts.to(self.code_usage.dtype), 1.0 - self.usage_decay)
        self.steps += 1
        if self.revival.strategy != "none":
            self.revival.step(self, z_code, indices, global_counts, int(self.steps))

    @torch.no_grad()
    def _passthrough_step_updates(self, z_code: Tensor) -> None:
        """A warm-up step: every latent goes to the reservoir; the last step draws every code from it."""
        if int(all_reduce_sum(torch.tensor([z_code.shape[0]], device=z_code.device))) == 0:
            return  # every position of every rank was masked out: not a step (as in _training_step_updates)
        self.revival.fill(z_code)
        self.steps += 1
        if int(self.steps) == self.passthrough_steps:
            self.revival.revive_all(self)

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
        self.replace_codes(torch.arange(self.codebook_size, device=data.device), centroids)
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


# ``inspect.signature(VectorQuantizer)`` reads ``__new__`` first: point it at the constructor's real options.
VectorQuantizer.__new__.__signature__ = inspect.signature(VectorQuantizer.__init__)


def mean_squared_error(a: Tensor, b: Tensor) -> Tensor:
    """MSE that is 0 (not NaN) when every position is masked out, keeping the graph."""
    return (a - b).pow(2).sum() / max(a.numel(), 1)
