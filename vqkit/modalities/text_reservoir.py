"""Dead-code revival from a reservoir of high-distortion latents (GQ-VAE's codebook resampling).

Each training step offers the latents that sit farthest from their code (highest distortion
||z - e||^2) to a fixed-size reservoir (uniform reservoir sampling, Vitter's algorithm R, so the
reservoir is a uniform sample of all offered latents). Periodically, codes that no position chose
since the last revival are overwritten with reservoir latents. Under DDP the dead set comes from
all-reduced counts and the replacement rows are drawn across ranks and shared
(``vqkit.quantizers.distributed.sample_rows``), so every rank writes the same codes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer
from vqkit.quantizers.distributed import sample_rows


class DistortionReservoir(nn.Module):
    """A reservoir of latents in the quantizer's code space, and the revival that reads it.

    Args:
        quantizer: a vqkit ``VectorQuantizer`` (or subclass, e.g. EMA): its ``_to_code_space`` maps
            latents to the searched space and ``_set_codes`` overwrites codes and resets their statistics.
        size: latents the reservoir holds.
        per_step: the highest-distortion latents of each step that are offered.
    """

    def __init__(self, quantizer: Quantizer, size: int = 16384, per_step: int = 2048) -> None:
        super().__init__()
        for method in ("_to_code_space", "_set_codes"):
            if not hasattr(quantizer, method):
                raise TypeError(
                    f"reservoir revival needs a codebook quantizer with {method} (vq, ema_vq); "
                    f"got {type(quantizer).__name__}: set model.reservoir_size=0"
                )
        self.quantizer = [quantizer]  # a list: not registered twice as a submodule
        self.size = size
        self.per_step = per_step
        self.register_buffer("buffer", torch.zeros(size, getattr(quantizer, "code_dim", quantizer.dim)),
                             persistent=False)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def filled(self) -> int:
        return min(int(self.seen), self.size)

    @torch.no_grad()
    def offer(self, z: Tensor, indices: Tensor) -> None:
        """Offer the ``per_step`` latents of z (M, D) farthest from their codes ``indices`` (M,)."""
        if z.shape[0] == 0:
            return
        quantizer = self.quantizer[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z_code = quantizer._to_code_space(z.float())
            distortion = (z_code - quantizer.codebook[indices]).pow(2).sum(-1)
        if z_code.shape[0] > self.per_step:
            z_code = z_code[distortion.topk(self.per_step).indices]
        n, seen = z_code.shape[0], int(self.seen)
        free = max(self.size - seen, 0)
        head = min(free, n)
        if head:
            self.buffer[seen : seen + head] = z_code[:head]
        rest = z_code[head:]
        if rest.shape[0]:
            # algorithm R: item number i (0-based, overall) replaces slot r ~ U[0, i] when r < size
            numbers = torch.arange(seen + head, seen + n, device=z.device)
            slots = (torch.rand(rest.shape[0], device=z.device) * (numbers + 1)).long()
            keep = slots < self.size
            self.buffer[slots[keep]] = rest[keep]
        self.seen += n

    @torch.no_grad()
    def revive(self, dead: Tensor) -> int:
        """Overwrite the codes ``dead`` (ids, identical on every rank) with reservoir latents; returns how many."""
        if dead.numel() == 0 or self.filled == 0:
            return 0
        vectors = sample_rows(self.buffer[: self.filled], int(dead.numel()))
        self.quantizer[0]._set_codes(dead, vectors)
        return int(dead.numel())
