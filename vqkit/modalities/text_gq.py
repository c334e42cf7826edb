"""GQ-VAE (gated quantized VAE, arXiv 2512.21913): variable-length tokens learned over bytes.

Every byte position t is encoded and quantized (any vqkit quantizer). A gate reads the quantized
sequence and gives g_t, the probability that a token ends at t. The decoder reads each quantized
latent alone and reconstructs the bytes of the segment that ends at t: slot K-1-j holds byte t-j,
weighted by the soft mask

    m_{t,j} = prod_{i=1..j} (1 - g_{t-i})      (m_{t,0} = 1; 0 before the start of the row),

the probability that byte t-j still belongs to the token ending at t. A length head is trained to
predict m (BCE, weighted by g_t), so a code alone says how many bytes it stands for; a compression
loss alpha * mean(g) pushes towards fewer, longer tokens. Tokens are the positions with g_t > 0.5;
the last byte of a row always ends a token, and a token is cut once it reaches ``max_token_len`` bytes.

``segmentation="fixed"`` is the paper's fixed-length VQ-VAE baseline (the reference's ``--hardset``):
the gate is replaced by boundaries every ``fixed_length`` bytes (and at the end of each row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.modalities.text import ALiBiTransformer
from vqkit.modalities.text_bytes import PAD_ID
from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.vq import VectorQuantizer

SEGMENTATION_MODES = ("learned", "fixed")


class BoundaryGate(nn.Module):
    """Quantized latents (B, T, D) -> boundary probabilities g (B, T): transformer, Conv1d stack, sigmoid.

    Args:
        latent_dim: width of the quantized latents.
        width: transformer width (the convolutions narrow it to width/2, width/4, 1).
        depth: transformer blocks (paper: 2).
        num_heads: attention heads.
        kernel: base kernel size of the convolutions (paper: the max token length; 2k, 1.5k, k).
    """

    def __init__(self, latent_dim: int = 64, width: int = 64, depth: int = 2, num_heads: int = 4,
                 kernel: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(latent_dim, width)
        self.transformer = ALiBiTransformer(width, depth, num_heads)
        self.convs = nn.Sequential(
            nn.Conv1d(width, width // 2, 2 * kernel, padding="same"),
            nn.Conv1d(width // 2, width // 4, kernel + kernel // 2, padding="same"),
            nn.Conv1d(width // 4, 1, kernel, padding="same"),
        )

    def forward(self, z_q: Tensor, valid: Tensor | None = None) -> Tensor:
        key_padding = None if valid is None else ~valid
        h = self.transformer(self.inp(z_q), key_padding)  # (B, T, W)
        return torch.sigmoid(self.convs(h.transpose(1, 2)).squeeze(1).float())  # (B, T)


def window_targets(byte_ids: Tensor, max_token_len: int) -> Tensor:
    """(B, T, K) bytes of the window ending at each position: [..., K-1-j] = byte t-j, PAD before the row."""
    padded = F.pad(byte_ids, (max_token_len - 1, 0), value=PAD_ID)
    return padded.unfold(1, max_token_len, 1)


def segment_mask(gates: Tensor, max_token_len: int) -> Tensor:
    """Soft mask (B, T, K): [..., K-1-j] = prod_{i=1..j} (1 - g_{t-i}), 0 for slots before the row start."""
    keep = F.pad(1.0 - gates, (max_token_len - 1, 0), value=0.0)  # (B, T+K-1)
    windows = keep.unfold(1, max_token_len, 1).flip(-1)  # [..., j] = 1 - g_{t-j}
    windows = torch.cat([torch.ones_like(windows[..., :1]), windows[..., 1:]], dim=-1)
    return torch.cumprod(windows, dim=-1).flip(-1)


def length_probs(length_logits: Tensor) -> Tensor:
    """(..., K) probability that each slot is inside the segment: cumulative softmax over slots."""
    return torch.softmax(length_logits.float(), dim=-1).cumsum(-1).clamp(1e-6, 1.0 - 1e-6)


def predicted_lengths(length_logits: Tensor) -> Tensor:
    """(...) segment length in bytes the length head predicts (at least 1)."""
    return (length_probs(length_logits) > 0.5).sum(-1).clamp_min(1)


def row_ends(valid: Tensor) -> Tensor:
    """(B, T) bool: the last real byte of each row."""
    nxt = F.pad(valid[:, 1:], (0, 1), value=False)
    return valid & ~nxt


def enforce_max_length(boundaries: Tensor, valid: Tensor, max_token_len: int) -> Tensor:
    """Add boundaries so that no token is longer than ``max_token_len`` bytes (left to right)."""
    out = boundaries & valid
    run = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
    for t in range(out.shape[1]):
        run = run + valid[:, t].long()
        cut = valid[:, t] & (out[:, t] | (run >= max_token_len))
        out[:, t] = cut
        run = torch.where(cut, torch.zeros_like(run), run)
    return out


def segment_lengths(boundaries: Tensor) -> Tensor:
    """(B, T) bytes since the previous boundary, counting t itself (meaningful where a token ends)."""
    b, t = boundaries.shape
    pos = torch.arange(t, device=boundaries.device).expand(b, t)
    last = torch.where(boundaries, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    previous = F.pad(last[:, :-1], (1, 0), value=-1)
    return pos - previous


@dataclass
class GQOutput:
    """What ``GatedTextAutoencoder.forward`` returns.

    Attributes:
        loss: scalar training loss (reconstruction + compression + mask + quantizer).
        losses: unweighted parts for logging.
        gates: (B, T) boundary probabilities (hard-set at row ends, 0 on padding).
        boundaries: (B, T) bool, positions that end a token (g > 0.5, row ends, max-length cuts).
        indices: (B, T) code ids, -1 on padding.
        byte_logits: (M, K, 256) at the M real (non-padding) positions, in row-major order.
        length_logits: (M, K).
        quantizer: the inner quantizer's output.
        metrics: detached diagnostics of this batch (sums, so splits can be aggregated).
    """

    loss: Tensor
    losses: dict[str, Tensor]
    gates: Tensor
    boundaries: Tensor
    indices: Tensor
    byte_logits: Tensor
    length_logits: Tensor
    quantizer: QuantizerOutput
    metrics: dict[str, Tensor] = field(default_factory=dict)


class GatedTextAutoencoder(nn.Module):
    """Encoder -> per-byte quantizer -> gate -> segment decoder, with the GQ-VAE losses.

    Args:
        encoder: byte ids (B, T) -> latents (B, T, D) (``vqkit.modalities.text.ByteEncoder``).
        quantizer: any vqkit quantizer of width D; every real byte position is quantized.
        decoder: ``SegmentDecoder`` with ``max_token_len`` slots.
        gate: ``BoundaryGate``; unused (may be None) when ``segmentation="fixed"``.
        segmentation: ``learned`` (the gate) or ``fixed`` (boundaries every ``fixed_length`` bytes).
        fixed_length: token length of the fixed baseline.
        alpha: weight of the compression loss mean(g) (paper: 2-3).
        gamma: weight of the mask (length head) loss.
        reservoir_size: latents kept for reviving dead codes; > 0 switches the quantizer to its reservoir
            revival (``quantizer.configure_revival("reservoir", ...)``, see ``vqkit.quantizers.revival``) with
            these three settings; 0 leaves the quantizer's own ``revival`` options in charge.
        reservoir_per_step: the highest-distortion latents of each step offered to the reservoir.
        revive_every: every this many training steps, codes unused since the last revival are replaced
            by reservoir samples (<= 0: no revival).
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: Quantizer,
        decoder: nn.Module,
        gate: nn.Module | None = None,
        segmentation: str = "learned",
        fixed_length: int = 8,
        alpha: float = 2.0,
        gamma: float = 1.0,
        reservoir_size: int = 16384,
        reservoir_per_step: int = 2048,
        revive_every: int = 250,
    ) -> None:
        super().__init__()
        if segmentation not in SEGMENTATION_MODES:
            raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {segmentation!r}")
        if segmentation == "learned" and gate is None:
            raise ValueError("segmentation='learned' needs a gate")
        if getattr(encoder, "latent_dim", quantizer.dim) != quantizer.dim:
            raise ValueError(
                f"the encoder's latent_dim ({encoder.latent_dim}) differs from the quantizer's dim ({quantizer.dim}); "
                "set quantizer.dim=${model.encoder.latent_dim} (the default)"
            )
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.gate = gate if segmentation == "learned" else None
        self.segmentation = segmentation
        self.max_token_len = decoder.max_token_len
        if segmentation == "fixed" and not 0 < fixed_length <= self.max_token_len:
            raise ValueError(f"fixed_length must lie in [1, max_token_len={self.max_token_len}], got {fixed_length}")
        self.fixed_length = fixed_length
        self.alpha = alpha
        self.gamma = gamma
        if reservoir_size and revive_every > 0:
            self._use_reservoir_revival(quantizer, reservoir_size, reservoir_per_step, revive_every)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _use_reservoir_revival(quantizer: Quantizer, size: int, per_step: int, every: int) -> None:
        """Forward the model's reservoir options to the quantizer, which revives its own codes."""
        if not isinstance(quantizer, VectorQuantizer) or not quantizer.writable_codebook:
            raise TypeError(
                "reservoir revival needs a quantizer with writable codes (vq, ema_vq); got "
                f"{type(quantizer).__name__}: set model.reservoir_size=0"
            )
        if quantizer.revival.enabled:
            raise ValueError(
                f"the quantizer already revives dead codes (revival={quantizer.revival.strategy!r}); set "
                "model.reservoir_size=0 to keep the quantizer's own revival options, or drop them (revival, "
                "dead_code_threshold) to use the model's reservoir"
            )
        quantizer.configure_revival("reservoir", revive_every=every, reservoir_size=size, reservoir_per_step=per_step)

    # --- segmentation ------------------------------------------------------------------
    def fixed_gates(self, valid: Tensor) -> Tensor:
        t = torch.arange(valid.shape[1], device=valid.device)
        return (((t + 1) % self.fixed_length) == 0).float().expand_as(valid) * valid

    def gates_for(self, z_q: Tensor, valid: Tensor) -> Tensor:
        """(B, T) boundary probabilities, 1 at row ends, 0 on padding."""
        g = self.fixed_gates(valid) if self.gate is None else self.gate(z_q, valid)
        g = torch.where(row_ends(valid), torch.ones_like(g), g)
        return g * valid

    def hard_boundaries(self, gates: Tensor, valid: Tensor) -> Tensor:
        return enforce_max_length((gates > 0.5) | row_ends(valid), valid, self.max_token_len)

    # --- forward -------------------------------------------------------------------------
    def forward(self, byte_ids: Tensor) -> GQOutput:
        """byte_ids (B, T): 0..255, PAD_ID after the end of each row."""
        valid = byte_ids != PAD_ID
        n_valid = valid.sum().clamp_min(1)
        z = self.encoder(byte_ids)  # (B, T, D)
        q = self.quantizer(z, mask=valid)
        gates = self.gates_for(q.z_q, valid)
        boundaries = self.hard_boundaries(gates.detach(), valid)
        k = self.max_token_len
        # The decoder and the losses run on real positions only (M of B*T): padding costs nothing.
        targets = window_targets(byte_ids, k)[valid]  # (M, K)
        mask = segment_mask(gates, k)[valid] * (targets != PAD_ID)  # (M, K)
        byte_logits, length_logits = self.decoder(q.z_q[valid])  # (M, K, 256), (M, K)
        ce = F.cross_entropy(byte_logits.float().flatten(0, 1), targets.clamp_max(255).flatten(), reduction="none")
        rec = (ce.view_as(mask) * mask).sum() / (n_valid * k)
        bce = F.binary_cross_entropy(length_probs(length_logits), mask.detach(), reduction="none").mean(-1)
        mask_loss = (bce * gates.detach()[valid]).sum() / n_valid
        compression = gates.sum() / n_valid
        loss = rec + self.gamma * mask_loss + q.loss
        if self.gate is not None:
            loss = loss + self.alpha * compression
        losses = {"rec": rec.detach(), "mask": mask_loss.detach(), "compression": compression.detach()}
        losses.update({f"quantizer/{name}": v for name, v in q.losses.items()})

        if self.training:
            self.steps += 1
        metrics = self._metrics(boundaries, valid, byte_logits, length_logits, targets)
        return GQOutput(loss, losses, gates, boundaries, q.indices, byte_logits, length_logits, q, metrics)

    @torch.no_grad()
    def _metrics(self, boundaries: Tensor, valid: Tensor, byte_logits: Tensor, length_logits: Tensor,
                 targets: Tensor) -> dict[str, Tensor]:
        """Sums over the batch: bytes, tokens, tokens decoded exactly from their code, bytes of tokens right."""
        k = self.max_token_len
        lengths = segment_lengths(boundaries)[valid]  # (M,)
        ends = boundaries[valid]
        slots = torch.arange(k, device=targets.device)
        in_segment = slots >= (k - lengths.clamp_max(k))[:, None]  # (M, K): slots of the true segment
        hit = byte_logits.argmax(-1) == targets
        token_ok = (hit | ~in_segment).all(-1) & (predicted_lengths(length_logits) == lengths) & ends
        return {
            "bytes": valid.sum().float(),
            "tokens": ends.sum().float(),
            "tokens_correct": token_ok.sum().float(),
            "segment_bytes_correct": ((hit & in_segment).sum(-1) * ends).sum().float(),
        }

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, byte_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(boundaries (B, T) bool, indices (B, T), predicted lengths (B, T)) without losses or state changes."""
        valid = byte_ids != PAD_ID
        z = self.encoder(byte_ids)
        indices = self.quantizer.encode(z, mask=valid)
        z_q = self.quantizer.decode(indices.clamp_min(0)) * valid[..., None]
        gates = self.gates_for(z_q, valid)
        _, length_logits = self.decoder(z_q)
        return self.hard_boundaries(gates, valid), indices, predicted_lengths(length_logits)

    @torch.no_grad()
    def code_strings(self) -> list[bytes]:
        """Each code decoded once, alone: the bytes of its predicted length (argmax per slot)."""
        codes = self.quantizer.decode(torch.arange(self.quantizer.codebook_size, device=self.steps.device))
        byte_logits, length_logits = self.decoder(codes)
        byte_ids = byte_logits.argmax(-1).cpu()  # (V, K)
        lengths = predicted_lengths(length_logits).cpu()
        k = self.max_token_len
        return [bytes(row[k - int(n):].tolist()) for row, n in zip(byte_ids, lengths, strict=True)]
