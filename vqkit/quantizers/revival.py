"""Dead-code revival: one policy, two strategies, shared by every hard nearest-code backend.

A code that no latent picks gets no codebook gradient (and no EMA mass), so it stays dead. The
policy decides, every ``revive_every`` training steps, which codes are dead and what to write into
them; the quantizer does the writing (``replace_codes``, which also resets the statistics of the
rewritten rows). Strategies:

``batch`` (VQ-VAE / SoundStream practice). A code is dead when its running usage (tokens per step,
    an EMA the quantizer keeps in ``code_usage``) is below ``dead_code_threshold``; dead codes are
    overwritten with random latents of the current batch.
``reservoir`` (GQ-VAE's codebook resampling). Each step the ``reservoir_per_step`` latents that sit
    farthest from their code (highest ||z - e||^2) are offered to a fixed-size reservoir (Vitter's
    algorithm R, so the reservoir is a uniform sample of every latent offered so far). A code is dead
    when no position picked it since the last revival; dead codes are overwritten with reservoir
    latents. With ``reservoir_reset`` (GQ-VAE's code) the reservoir is emptied after every revival,
    so the next one draws only latents offered since this one; without it the reservoir samples the
    whole run, and late revivals can land on latents of an encoder that has moved on.
    A quantizer can also run a pass-through warm-up (``VectorQuantizer(passthrough_steps=N)``):
    ``fill`` offers every latent of those steps (no codes to rank them against yet), ``revive_all``
    then overwrites every code, and the revival schedule counts ``revive_every`` from step N.

Under torch.distributed the dead set is computed from all-reduced counts (identical on every rank)
and the replacement rows are drawn from the union of the ranks' batches or reservoirs and shared
(``distributed.sample_rows``), so every rank writes the same codes. Each rank keeps its own
reservoir of its own latents.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from vqkit.quantizers.distributed import all_reduce_sum, sample_rows

REVIVAL_STRATEGIES = ("none", "batch", "reservoir")
DEFAULT_REVIVE_EVERY = {"none": 1, "batch": 1, "reservoir": 250}


class RevivableQuantizer(Protocol):
    """What the policy needs from a quantizer (``VectorQuantizer`` and subclasses provide it)."""

    codebook_size: int
    code_usage: Tensor  # (K,) running tokens per step, identical on every rank

    @property
    def codebook(self) -> Tensor:
        """(K, C) the codes in the searched space."""

    def replace_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Overwrite the codes ``rows`` (R,) with ``vectors`` (R, C) and reset their statistics."""


def resolve_strategy(revival: str | None, dead_code_threshold: float) -> str:
    """The strategy a ``revival`` option stands for, checked against ``dead_code_threshold``.

    ``None`` keeps the behaviour of configs written before the option existed: ``batch`` when
    ``dead_code_threshold > 0``, else ``none``.

    Raises:
        ValueError: an unknown strategy, or a threshold that the strategy would ignore or needs.
    """
    if revival is None:
        return "batch" if dead_code_threshold > 0 else "none"
    if revival not in REVIVAL_STRATEGIES:
        raise ValueError(f"revival must be one of {REVIVAL_STRATEGIES} (or null), got {revival!r}")
    if dead_code_threshold < 0:
        raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
    if revival == "batch" and dead_code_threshold <= 0:
        raise ValueError(
            "revival='batch' replaces codes whose running usage (tokens per step) falls below dead_code_threshold, "
            f"but dead_code_threshold={dead_code_threshold}; set it > 0 (e.g. 1.0)"
        )
    if revival != "batch" and dead_code_threshold > 0:
        raise ValueError(
            f"dead_code_threshold={dead_code_threshold} only applies to revival='batch', got revival={revival!r}; "
            "set dead_code_threshold=0 or revival=batch"
            + (" (reservoir revival replaces the codes unused since the last revival)" if revival == "reservoir"
               else "")
        )
    return revival


class CodeRevival(nn.Module):
    """The dead-code revival policy of a hard quantizer (see the module docstring).

    Holds only strategy state (the reservoir, the counts since the last revival); none of it is
    persistent, so checkpoints are the same whatever the strategy.

    Args:
        strategy: ``none``, ``batch`` or ``reservoir`` (``resolve_strategy`` turns the config option into one).
        codebook_size: number of codes K.
        code_dim: width C of the searched space (the reservoir holds latents mapped into it).
        dead_code_threshold: ``batch``: codes whose running usage falls below this are dead.
        revive_every: revive every this many training steps; None: 1 for ``batch``, 250 for ``reservoir``.
        reservoir_size: ``reservoir``: latents the reservoir holds.
        reservoir_per_step: ``reservoir``: the highest-distortion latents of each step that are offered.
        reservoir_reset: ``reservoir``: empty the reservoir after every revival (GQ-VAE's code); False:
            it keeps sampling every latent offered since the start.
        start_step: revivals happen at steps ``start_step + n * revive_every`` (n >= 1); the pass-through
            warm-up's length, 0 without one.
    """

    def __init__(
        self,
        strategy: str = "none",
        codebook_size: int = 1,
        code_dim: int = 1,
        dead_code_threshold: float = 0.0,
        revive_every: int | None = None,
        reservoir_size: int = 16384,
        reservoir_per_step: int = 2048,
        reservoir_reset: bool = False,
        start_step: int = 0,
    ) -> None:
        super().__init__()
        if strategy not in REVIVAL_STRATEGIES:
            raise ValueError(f"strategy must be one of {REVIVAL_STRATEGIES}, got {strategy!r}")
        revive_every = DEFAULT_REVIVE_EVERY[strategy] if revive_every is None else int(revive_every)
        if revive_every < 1:
            raise ValueError(f"revive_every must be >= 1 (use revival=none to turn revival off), got {revive_every}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.strategy = strategy
        self.dead_code_threshold = float(dead_code_threshold)
        self.revive_every = revive_every
        self.reservoir_size = reservoir_size
        self.reservoir_per_step = reservoir_per_step
        self.reservoir_reset = bool(reservoir_reset)
        self.start_step = int(start_step)
        self.num_revived = 0  # codes revived so far by this process (a diagnostic, not state)
        if strategy == "reservoir":
            if reservoir_size < 1 or reservoir_per_step < 1:
                raise ValueError(
                    f"reservoir_size and reservoir_per_step must be >= 1, got {reservoir_size} and {reservoir_per_step}"
                )
            self.register_buffer("reservoir", torch.zeros(reservoir_size, code_dim), persistent=False)  # (S, C)
            self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)
            self.register_buffer("counts_since_revival", torch.zeros(codebook_size), persistent=False)  # (K,)

    @property
    def enabled(self) -> bool:
        return self.strategy != "none"

    @property
    def filled(self) -> int:
        """Latents held by this rank's reservoir (0 without one)."""
        return min(int(self.seen), self.reservoir_size) if self.strategy == "reservoir" else 0

    def extra_repr(self) -> str:
        if self.strategy == "batch":
            return f"batch, threshold={self.dead_code_threshold}, every={self.revive_every}"
        if self.strategy == "reservoir":
            return (f"reservoir, size={self.reservoir_size}, per_step={self.reservoir_per_step}, "
                    f"every={self.revive_every}, reset={self.reservoir_reset}"
                    + (f", start={self.start_step}" if self.start_step else ""))
        return "none"

    @torch.no_grad()
    def step(self, quantizer: RevivableQuantizer, z_code: Tensor, indices: Tensor, counts: Tensor, step: int) -> int:
        """One training step, after the quantizer updated its codebook and usage statistics.

        Args:
            quantizer: the quantizer whose codes may be replaced.
            z_code: (M, C) this rank's latents in the searched space.
            indices: (M,) their code ids.
            counts: (K,) code counts of this step, already summed over ranks.
            step: the quantizer's training step counter, already incremented for this step.

        Returns:
            how many codes were revived (the same on every rank).
        """
        if self.strategy == "reservoir":
            self.counts_since_revival += counts.to(self.counts_since_revival.dtype)
            self.offer(z_code, quantizer.codebook, indices)
        if self.strategy == "none" or not self.due(step):
            return 0
        if self.strategy == "batch":
            n = self.revive_from_batch(quantizer, z_code)
        else:
            dead = (self.counts_since_revival == 0).nonzero().squeeze(1)
            n = self.revive_from_reservoir(quantizer, dead)
            self.after_reservoir_revival()
        self.num_revived += n
        return n

    def due(self, step: int) -> bool:
        """Whether training step ``step`` (1-based) is a revival step: ``start_step + n * revive_every``, n >= 1."""
        return step > self.start_step and (step - self.start_step) % self.revive_every == 0

    # --- batch ---------------------------------------------------------------------------------
    def dead_codes(self, quantizer: RevivableQuantizer) -> Tensor:
        """(R,) ids whose running usage is below ``dead_code_threshold`` (identical on every rank)."""
        return (quantizer.code_usage < self.dead_code_threshold).nonzero().squeeze(1)

    @torch.no_grad()
    def revive_from_batch(self, quantizer: RevivableQuantizer, z_code: Tensor) -> int:
        """Replace the codes below the usage threshold by latents ``z_code`` (M, C) of this batch; returns how many."""
        dead = self.dead_codes(quantizer)
        if dead.numel() == 0:
            return 0
        quantizer.replace_codes(dead, sample_rows(z_code.float(), dead.numel()))
        return int(dead.numel())

    # --- reservoir -----------------------------------------------------------------------------
    @torch.no_grad()
    def offer(self, z_code: Tensor, codebook: Tensor, indices: Tensor) -> None:
        """Offer the ``reservoir_per_step`` latents of ``z_code`` (M, C) farthest from their codes.

        Args:
            z_code: (M, C) latents in the searched space.
            codebook: (K, C) the codes they are compared with.
            indices: (M,) the code each latent picked.
        """
        if self.strategy != "reservoir":
            raise RuntimeError(f"offer() needs revival='reservoir', this policy is {self.strategy!r}")
        if z_code.shape[0] == 0:
            return
        with torch.autocast(device_type=z_code.device.type, enabled=False):
            z_code = z_code.float()
            distortion = (z_code - codebook[indices]).pow(2).sum(-1)  # (M,)
        if z_code.shape[0] > self.reservoir_per_step:
            z_code = z_code[distortion.topk(self.reservoir_per_step).indices]
        self._insert(z_code)

    @torch.no_grad()
    def fill(self, z_code: Tensor) -> None:
        """Offer every latent of ``z_code`` (M, C), unranked (the pass-through warm-up: the codes mean nothing yet)."""
        if self.strategy != "reservoir":
            raise RuntimeError(f"fill() needs revival='reservoir', this policy is {self.strategy!r}")
        if z_code.shape[0]:
            self._insert(z_code.float())

    def _insert(self, z_code: Tensor) -> None:
        """Algorithm R over the (M, C) fp32 latents ``z_code``, continuing the count ``seen``."""
        n, seen = z_code.shape[0], int(self.seen)
        head = min(max(self.reservoir_size - seen, 0), n)
        if head:
            self.reservoir[seen : seen + head] = z_code[:head]
        rest = z_code[head:]
        if rest.shape[0]:
            # algorithm R: item number i (0-based, over all offers) replaces slot r ~ U[0, i] when r < size
            numbers = torch.arange(seen + head, seen + n, device=z_code.device)
            slots = (torch.rand(rest.shape[0], device=z_code.device) * (numbers + 1)).long()
            keep = slots < self.reservoir_size
            self.reservoir[slots[keep]] = rest[keep]
        self.seen += n

    @torch.no_grad()
    def revive_from_reservoir(self, quantizer: RevivableQuantizer, dead: Tensor) -> int:
        """Overwrite the codes ``dead`` (R,) ids, identical on every rank, with reservoir latents; returns how many.

        Nothing happens while every rank's reservoir is empty.
        """
        if dead.numel() == 0:
            return 0
        held = all_reduce_sum(torch.tensor([self.filled], device=self.reservoir.device))
        if int(held) == 0:
            return 0
        quantizer.replace_codes(dead, sample_rows(self.reservoir[: self.filled], int(dead.numel())))
        return int(dead.numel())

    @torch.no_grad()
    def revive_all(self, quantizer: RevivableQuantizer) -> int:
        """Overwrite every code with reservoir latents (the end of the pass-through warm-up); returns how many."""
        if self.strategy != "reservoir":
            raise RuntimeError(f"revive_all() needs revival='reservoir', this policy is {self.strategy!r}")
        every = torch.arange(quantizer.codebook_size, device=self.reservoir.device)
        n = self.revive_from_reservoir(quantizer, every)
        self.after_reservoir_revival()
        self.num_revived += n
        return n

    @torch.no_grad()
    def after_reservoir_revival(self) -> None:
        """Restart the counts since the last revival and, with ``reservoir_reset``, empty the reservoir."""
        self.counts_since_revival.zero_()
        if self.reservoir_reset:
            self.seen.zero_()
