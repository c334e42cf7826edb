"""The text tokenizer model (GQ-VAE, arXiv 2512.21913): byte encoder -> gated quantizer -> segment decoder.

Every byte position is encoded (``ByteEncoder``) and quantized by the gated quantizer (``quantizer=gq``,
``vqkit.quantizers.gq``), whose gate marks where tokens end. The segment decoder reads each quantized
latent alone and predicts the bytes of the segment that ends at its position (slot K-1-j holds byte t-j)
and the segment's length; training weights its slots by the quantizer's soft segment mask
(``vqkit.losses.segment``). The user-facing tokenizer is the exported vocabulary
(``vqkit.tokenizers.text.GQTokenizer``); this model is the network behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vqkit.modalities.text import predicted_lengths, window_targets
from vqkit.modalities.text_bytes import PAD_ID
from vqkit.models.base import ModelOutput, TokenizerModel
from vqkit.quantizers.base import Quantizer


class TextTokenizer(TokenizerModel):
    """Byte rows <-> variable-length tokens.

    Inputs are rows of byte ids (B, T): 0..255 for bytes, ``PAD_ID`` (256) after the end of each row
    (``vqkit.data.text``). The normalization is the identity (byte ids go in as they are).

    ``forward(byte_ids)`` returns a ``ModelOutput`` whose ``reconstruction`` is the byte logits
    (M, K, 256) at the M real (non-padding) positions in row-major order, ``quantized`` the gated
    quantizer's output (token positions in ``mask``, token codes in ``indices``) and ``extras``:

        length_logits: (M, K) the length head at the real positions.
        targets: (M, K) the bytes of the window ending at each real position (``PAD_ID`` before the row).
        segment_mask: (M, K) the soft segment mask at the real positions (0 where the target is padding).
        gates: (B, T) boundary probabilities; boundaries: (B, T) bool token positions; valid: (B, T) bool.

    Args:
        encoder: ``vqkit.modalities.text.ByteEncoder`` (byte ids (B, T) -> latents (B, T, D)).
        decoder: ``vqkit.modalities.text.SegmentDecoder`` with ``max_token_len`` slots.
        quantizer: the gated quantizer (``quantizer=gq``) with the decoder's ``max_token_len``.
        normalization: must be the identity (accepted for the common config layout).

    Raises:
        IncompatibleQuantizerError: the quantizer is not the gated quantizer (``vqkit.models.compat``).
        ValueError: the decoder and quantizer disagree on ``max_token_len``, or a normalization is set.
    """

    modality = "text"
    data_key = "bytes"
    decodes_every_position = False  # the segment decoder reads each position's own code

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer,
                 normalization: Mapping[str, Any] | None = None) -> None:
        super().__init__(encoder, decoder, quantizer, None)  # refuses any quantizer but the gated one
        if getattr(decoder, "max_token_len", quantizer.max_token_len) != quantizer.max_token_len:
            raise ValueError(
                f"the decoder's max_token_len ({decoder.max_token_len}) differs from the quantizer's "
                f"({quantizer.max_token_len}); set quantizer.max_token_len=${{model.decoder.max_token_len}} "
                "(the default)"
            )
        if getattr(quantizer, "compression_weight", 0.0):
            raise ValueError(
                f"a text model weights the gates' compression term in its training module "
                f"(module.losses.compression.weight, alpha); quantizer.compression_weight="
                f"{quantizer.compression_weight:g} would add it twice: set quantizer.compression_weight=0"
            )
        if normalization and (normalization.get("mean", 0.0) != 0.0 or normalization.get("std", 1.0) != 1.0):
            raise ValueError(f"text models take byte ids as they are; normalization must be the identity, got "
                             f"{dict(normalization)}")

    @property
    def max_token_len(self) -> int:
        """K: the longest token in bytes (the decoder's slots)."""
        return self.quantizer.max_token_len

    # --- the autoencoder -------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Byte ids are the model's input as they are."""
        return x

    def denormalize(self, x: Tensor) -> Tensor:
        """The identity (the reconstruction is byte logits)."""
        return x

    def forward(self, byte_ids: Tensor) -> ModelOutput:
        """byte_ids (B, T): 0..255, ``PAD_ID`` after the end of each row -> ``ModelOutput`` (see the class)."""
        valid = byte_ids != PAD_ID  # (B, T)
        z = self.encoder(byte_ids)  # (B, T, D)
        q = self.quantizer(z, mask=valid)
        k = self.max_token_len
        # The decoder and the losses run on real positions only (M of B*T): padding costs nothing.
        targets = window_targets(byte_ids, k)[valid]  # (M, K)
        byte_logits, length_logits = self.decoder(q.z_q[valid])  # (M, K, 256), (M, K)
        soft = q.segment_mask[valid] * (targets != PAD_ID)  # (M, K)
        extras = {"length_logits": length_logits, "targets": targets, "segment_mask": soft, "gates": q.gates,
                  "boundaries": q.mask, "valid": valid}
        return ModelOutput(reconstruction=byte_logits, quantized=q, latents=z, extras=extras)

    # --- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, byte_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(boundaries (B, T) bool, codes (B, T), predicted lengths (B, T))`` of byte rows, no state changes.

        ``codes`` holds the code of every real position (-1 on padding); the tokens are the codes at the
        boundaries. The lengths are what the length head predicts for each position's code.
        """
        valid = byte_ids != PAD_ID
        z = self.encoder(byte_ids)
        seg = self.quantizer.segment(z, valid)
        _, length_logits = self.decoder(seg.z_q)
        return seg.boundaries, seg.codes, predicted_lengths(length_logits)

    @torch.no_grad()
    def encode(self, byte_ids: Tensor) -> Tensor:
        """Byte rows (B, T) -> (B, T) int64 token codes at the positions where tokens end, -1 elsewhere."""
        boundaries, codes, _ = self.segment(byte_ids.to(self.device))
        return torch.where(boundaries, codes, torch.full_like(codes, -1))

    @torch.no_grad()
    def decode(self, codes: Tensor) -> list[bytes]:
        """Code ids (N,) -> the bytes each code decodes to alone (its predicted length, argmax per slot)."""
        if not isinstance(codes, Tensor) or codes.dim() != 1:
            raise ValueError(f"decode expects a 1-D tensor of code ids, got {getattr(codes, 'shape', codes)!r}")
        byte_logits, length_logits = self.decoder(self.quantizer.decode(codes.to(self.device)))
        byte_ids = byte_logits.argmax(-1).cpu()  # (N, K)
        lengths = predicted_lengths(length_logits).cpu()  # (N,)
        k = self.max_token_len
        return [bytes(row[k - int(n):].tolist()) for row, n in zip(byte_ids, lengths, strict=True)]

    @torch.no_grad()
    def code_strings(self) -> list[bytes]:
        """Each code decoded once, alone: the bytes of its predicted length (argmax per slot)."""
        return self.decode(torch.arange(self.codebook_size, device=self.device))
