"""Split-level metrics of text models (``vqkit.models.TextTokenizer``), as sums reduced across processes.

Each metric reads the model's output for a batch (``ModelOutputMetric``): the hard token boundaries of
the gated quantizer, the byte logits and length logits of the segment decoder at the real positions and
their target windows. States are int64 counts with ``dist_reduce_fx="sum"``, so under DDP ``compute``
covers the whole split.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vqkit.metrics.base import ModelOutputMetric
from vqkit.modalities.text import predicted_lengths
from vqkit.models.base import ModelOutput
from vqkit.quantizers.gq import segment_lengths


def token_statistics(output: ModelOutput) -> dict[str, Tensor]:
    """Counts of one batch: real bytes, tokens, tokens decoded exactly from their code, bytes of tokens right.

    A token is decoded exactly when every byte slot of its segment is the argmax of its code's byte logits
    and the length head predicts its length; ``segment_bytes_correct`` counts the right bytes of tokens.
    """
    extras = output.extras
    valid, boundaries = extras["valid"], output.quantized.mask
    targets, byte_logits, length_logits = extras["targets"], output.reconstruction, extras["length_logits"]
    k = targets.shape[-1]
    lengths = segment_lengths(boundaries)[valid]  # (M,)
    ends = boundaries[valid]  # (M,)
    slots = torch.arange(k, device=targets.device)
    in_segment = slots >= (k - lengths.clamp_max(k))[:, None]  # (M, K): the slots of the true segment
    hit = byte_logits.argmax(-1) == targets  # (M, K)
    token_ok = (hit | ~in_segment).all(-1) & (predicted_lengths(length_logits) == lengths) & ends
    return {
        "bytes": valid.sum(),
        "tokens": ends.sum(),
        "tokens_correct": token_ok.sum(),
        "segment_bytes_correct": ((hit & in_segment).sum(-1) * ends).sum(),
    }


class _TokenCounts(ModelOutputMetric):
    """Accumulates ``token_statistics`` (int64 sums); subclasses say which ratio ``compute`` returns."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("bytes", "tokens", "tokens_correct", "segment_bytes_correct"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, output: ModelOutput, data: Tensor) -> None:
        for name, value in token_statistics(output).items():
            setattr(self, name, getattr(self, name) + value.long())


class BytesPerToken(_TokenCounts):
    """Real bytes / tokens over the split (higher = more compression)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self.bytes.float() / self.tokens.clamp_min(1).float()


class ExactTokens(_TokenCounts):
    """Share of tokens whose code alone decodes to their exact bytes and length (logged as ``rec_token_acc``)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self.tokens_correct.float() / self.tokens.clamp_min(1).float()


class SegmentByteAccuracy(_TokenCounts):
    """Share of real bytes that their token's code decodes right (logged as ``rec_byte_acc``)."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return self.segment_bytes_correct.float() / self.bytes.clamp_min(1).float()
