"""The GQ-VAE loss terms of text models (``vqkit.models.TextTokenizer`` with the gated quantizer).

    total = rec + gamma * mask + alpha * compression + the quantizer's own loss

``rec`` (``SegmentReconstruction``): cross-entropy of the decoder's byte slots, weighted by the soft segment
mask. ``mask`` (``LengthHead``, weight gamma): the length head's BCE against the soft mask (detached unless
``detach_target=False``, GQ-VAE's code), weighted by the gates. ``compression`` (``Compression``, weight
alpha): mean(g), towards fewer, longer tokens. All are normalized by the number of real (non-padding) bytes
of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vqkit.losses.base import LossInputs, LossTerm
from vqkit.modalities.text import length_probs


def _real_bytes(batch: LossInputs) -> Tensor:
    """Number of real (non-padding) byte positions of the batch, at least 1 (int64 scalar)."""
    return batch.output.extras["valid"].sum().clamp_min(1)


class SegmentReconstruction(LossTerm):
    """Byte cross-entropy of every slot of every real position, weighted by the soft segment mask.

    ``sum_{t, slot} m_{t, slot} * CE(byte_logits_{t, slot}, target_{t, slot}) / (real bytes * K)``.
    """

    def forward(self, batch: LossInputs) -> Tensor:
        out = batch.output
        byte_logits, targets, mask = out.reconstruction, out.extras["targets"], out.extras["segment_mask"]
        k = targets.shape[-1]
        ce = F.cross_entropy(byte_logits.float().flatten(0, 1), targets.clamp_max(255).flatten(), reduction="none")
        return (ce.view_as(mask) * mask).sum() / (_real_bytes(batch) * k)


class LengthHead(LossTerm):
    """The length head's BCE against the soft mask, averaged over slots, weighted by the (detached) gates.

    Trains the length head to say how many bytes a code stands for; its weight is the paper's gamma.

    Args:
        weight, warmup_steps: see ``LossTerm``.
        detach_target: stop the gradient at the soft mask: the term trains the length head only. False
            (GQ-VAE's code): the BCE also moves the gates (and, through them, the encoder) towards
            segmentations the length head predicts well. True is the default because it measured better on
            the CPU recipe (alpha 1.0): with False the gates settled on much shorter tokens (docs/fidelity.md).
    """

    def __init__(self, weight: float = 1.0, warmup_steps: int = 0, detach_target: bool = True) -> None:
        super().__init__(weight, warmup_steps)
        self.detach_target = bool(detach_target)

    def forward(self, batch: LossInputs) -> Tensor:
        out = batch.output
        mask = out.extras["segment_mask"]  # (M, K)
        if self.detach_target:
            mask = mask.detach()
        gates = out.extras["gates"].detach()[out.extras["valid"]]  # (M,)
        bce = F.binary_cross_entropy(length_probs(out.extras["length_logits"]), mask, reduction="none").mean(-1)
        return (bce * gates).sum() / _real_bytes(batch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, detach_target={self.detach_target}"


class Compression(LossTerm):
    """The gated quantizer's compression term mean(g) over real bytes (``losses["compression"]``); weight alpha.

    With ``segmentation=fixed`` the gates are constants and the term is 0 (nothing to train; the gates'
    mean is still logged as ``quantizer/compression``).
    """

    def forward(self, batch: LossInputs) -> Tensor:
        q = batch.output.quantized
        if "compression" not in q.losses:
            raise ValueError(f"the compression term needs the gated quantizer (quantizer=gq), got {type(q).__name__}")
        value = q.losses["compression"]
        return value if getattr(q, "learned_gates", True) else torch.zeros_like(value)
