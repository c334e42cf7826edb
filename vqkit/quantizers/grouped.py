"""Grouped (multi-head) vector quantization: the latent split into G groups, each quantized on its own.

A token (D channels) is cut into G consecutive groups of D/G channels; every group is searched against its own
codebook (``shared_codebook=False``) or all against one codebook (``shared_codebook=True``, the default of
lucidrains' ``VectorQuantize(heads=G)``; ``separate_codebook_per_head=True`` is the other case). A token thus
gets G ids, and the quantizer uses the contract's multi-stage form: ``num_stages = G``, ids (B, N, G) (group axis
last), codebook (G, K, C), ``decode`` takes ids (..., G). The models and the usage metrics read such ids as they
read residual ones (usage per group is ``stage{g}/...``); unlike residual ids, all G are needed to decode.

It is built by the hard backends themselves: ``VectorQuantizer(dim, K, num_groups=G)`` (also ``ema_vq``, and
``quantizer=vq quantizer.num_groups=4`` on the command line) returns a ``GroupedQuantizer`` whose groups are
plain quantizers of that class with ``dim = D/G`` and every other option (``code_dim`` is per group). Each group
quantizer keeps all of its machinery (k-means init, dead-code revival, EMA, the DDP reductions, the estimator);
with a shared codebook the one quantizer sees the (B, N*G, D/G) group vectors, so k-means, revival and usage
are over the vectors of every group.

Losses: the mean over groups of the group quantizers' losses (with a shared codebook, the one quantizer's loss
over all group vectors): both equal, per element, the ungrouped losses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics


class GroupedQuantizer(Quantizer):
    """G groups of D/G channels, each quantized by a quantizer of class ``backend``.

    Args:
        backend: the single-stage quantizer class of every group (``VectorQuantizer``, ``EMAVectorQuantizer``).
        dim: width D of the latents (B, N, D); must be a multiple of ``num_groups``.
        codebook_size: codes K of each codebook.
        num_groups: G >= 2.
        shared_codebook: True: one codebook (one quantizer) for every group; False: one per group.
        **options: the backend's other options, applied to every group (``code_dim`` is the width of a group's
            codes).

    Example::

        >>> q = VectorQuantizer(dim=32, codebook_size=1024, num_groups=4)   # a GroupedQuantizer
        >>> out = q(z)                        # z (B, N, 32)
        >>> out.indices.shape                 # (B, N, 4): one id per group of 8 channels
        >>> q.decode(out.indices).shape       # (B, N, 32)
    """

    def __init__(self, backend: type[Quantizer], dim: int, codebook_size: int, num_groups: int,
                 shared_codebook: bool = True, **options: Any) -> None:
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 2:
            raise ValueError(f"a grouped quantizer needs an integer num_groups >= 2, got {num_groups!r}")
        if dim % num_groups:
            divisors = [g for g in range(2, dim + 1) if dim % g == 0][:6]
            raise ValueError(
                f"dim={dim} cannot be split into num_groups={num_groups} equal groups of channels; pick num_groups "
                f"dividing the latent width (e.g. {', '.join(map(str, divisors))}) or change the encoder's latent_dim"
            )
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_stages = num_groups
        self.num_groups = num_groups
        self.shared_codebook = bool(shared_codebook)
        self.group_dim = dim // num_groups
        count = 1 if self.shared_codebook else num_groups
        self.groups = nn.ModuleList(backend(self.group_dim, codebook_size, **options) for _ in range(count))
        self.code_dim = getattr(self.groups[0], "code_dim", self.group_dim)
        self.soft = bool(self.groups[0].soft)

    @property
    def codebook(self) -> Tensor:
        """(G, K, C) every group's codebook, fp32 (the one codebook repeated when it is shared)."""
        if self.shared_codebook:
            cb = self.groups[0].codebook.float()
            return cb.unsqueeze(0).expand(self.num_groups, *cb.shape)
        return torch.stack([group.codebook.float() for group in self.groups])

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D); ids (B, N, G), ``stage{g}/...`` the usage metrics of group g."""
        self.check_input(z, mask)
        b, n, _ = z.shape
        g, d = self.num_groups, self.group_dim
        if self.shared_codebook:
            group_mask = None if mask is None else mask.repeat_interleave(g, dim=1)  # (B, N*G)
            out = self.groups[0](z.reshape(b, n * g, d), group_mask)
            z_q = out.z_q.reshape(b, n, self.dim)
            ids = out.indices.reshape(b, n, g)
            loss, losses, metrics = out.loss, dict(out.losses), dict(out.metrics)
        else:
            outs = [group(z[..., k * d:(k + 1) * d], mask) for k, group in enumerate(self.groups)]
            z_q = torch.cat([out.z_q for out in outs], dim=-1)
            ids = torch.stack([out.indices for out in outs], dim=-1)
            loss = torch.stack([out.loss.float() for out in outs]).mean()
            losses = {key: torch.stack([out.losses[key].float() for out in outs]).mean() for key in outs[0].losses}
            metrics = {f"stage{k}/{key}": value for k, out in enumerate(outs) for key, value in out.metrics.items()}
        if self.shared_codebook:  # per-group usage (the separate groups' own metrics already are)
            valid = ids if mask is None else ids[mask]  # (..., G)
            for k in range(g):
                counts = torch.bincount(valid[..., k].reshape(-1), minlength=self.codebook_size).float()
                metrics.update({f"stage{k}/{key}": value for key, value in batch_usage_metrics(counts).items()})
        return QuantizerOutput(z_q=z_q, indices=ids, loss=loss, losses=losses, mask=mask, metrics=metrics)

    def decode(self, indices: Tensor) -> Tensor:
        """Ids (..., G) -> vectors (..., D): every group's code, concatenated."""
        self.check_indices(indices)
        if indices.dim() == 0 or indices.shape[-1] != self.num_groups:
            raise ValueError(
                f"grouped ids carry one id per group on the last axis: expected (..., {self.num_groups}), got shape "
                f"{tuple(indices.shape)} (all {self.num_groups} groups are needed to decode a token)"
            )
        if self.shared_codebook:
            return self.groups[0].decode(indices).reshape(*indices.shape[:-1], self.dim)
        return torch.cat([group.decode(indices[..., k]) for k, group in enumerate(self.groups)], dim=-1)
