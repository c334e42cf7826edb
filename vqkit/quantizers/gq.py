"""GQ: the gated quantizer of GQ-VAE (arXiv 2512.21913): variable-length tokens over any single-stage backend.

Every valid position t of the latents is quantized by the inner backend (``inner``: ``vq``, ``ema_vq``,
...). A boundary gate reads the quantized sequence and gives g_t, the probability that a token ends at
t; the last valid position of a row always ends one (g = 1) and padding never does (g = 0). From the
gates come

- the hard boundaries, the positions that are tokens: g > 0.5, row ends, and a cut once a token reaches
  ``max_token_len`` positions (left to right);
- the soft segment mask m (B, T, K) that weights the segment decoder's K slots: slot K-1-j of position
  t is the probability that position t-j still belongs to the token ending at t,

      m_{t,j} = prod_{i=1..j} (1 - g_{t-i})      (m_{t,0} = 1; 0 before the start of the row);

- the compression term mean(g) over valid positions, which pushes towards fewer, longer tokens.

``segmentation="fixed"`` is the paper's fixed-length baseline (the reference's ``--hardset``): no gate,
boundaries every ``fixed_length`` positions and at row ends.

What ``forward`` returns (a ``GatedQuantizerOutput``, a ``QuantizerOutput`` with four more fields):
    z_q: (B, T, D) the inner backend's output at EVERY valid position (zeros on padding): the segment
        decoder reads every position, weighted by the soft mask, during training.
    indices: (B, T) code ids at the token positions, -1 elsewhere (codebook usage counts tokens only).
    mask: (B, T) bool, the token positions (the hard boundaries); a subset of the input mask.
    loss / losses: the inner backend's weighted loss and parts, plus ``losses["compression"]`` = mean(g),
        which keeps its graph and is NOT in ``loss``: the training module weights it (the ``compression``
        loss term, weight alpha).
    gates: (B, T) float32 g; segment_mask: (B, T, K); valid: (B, T) bool, the positions quantized;
        codes: (B, T) the inner ids at every valid position (-1 on padding).

Models that decode every position (image, audio, any ``(B, N, D)`` sequence) read a token as a (code, length)
pair: the vector of the token that covers each position (``hold``), plus which position inside the token it is.
The length is not coded: it is implied by where the next token ends (the ids' -1 positions), so a token costs
log2(K) + log2(max_token_len) bits when sent as a (code, length) pair. ``hold`` weights the positions t..t+L-1
by the probability that the token covering t ends there,

    P_{t,j} = g_{t+j} * prod_{i<j} (1 - g_{t+i})      (renormalized over j < L = max_token_len),

soft in training (the gates get gradients; ``expansion="straight_through"``: the hard forward with the soft
gradient) and hard (one-hot at the next boundary) in eval; ``expand`` does the hard one from ids.
``compression_weight`` adds weight x mean(g) to ``loss`` for those models (text models weight that term in
their training module instead, ``module.losses.compression``). ``target_rate`` (tokens per latent position)
subtracts from the gate's logits a threshold tau, the same in training and eval, that every training step moves
towards the rate (stochastic approximation of the quantile that meets it; ``rate_logits``,
``update_rate_threshold``), or with ``rate_control="budget"`` gives each sequence round(target x length) tokens
where its gate logits are highest (``budget_boundaries``); ``metrics["tokens_per_position"]`` is the realised rate.

Contract exception: ``decode(encode(z))`` is the code of each TOKEN, so it equals ``forward(z).z_q`` at
the token positions (``out.mask``) in eval mode, not at the positions inside a token (whose ids are -1).
``encode`` gates exact codes (``decode`` of the inner ids), ``forward`` the straight-through ``z_q``; the
two agree up to float rounding of a gate at exactly 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.layers.alibi import ALiBiTransformer
from vqkit.quantizers.base import Quantizer, QuantizerOutput
from vqkit.quantizers.distributed import all_reduce_sum
from vqkit.quantizers.registry import build_inner_quantizer, register_quantizer, self_contained_inner_options

SEGMENTATION_MODES = ("learned", "fixed")
EXPANSION_MODES = ("soft", "straight_through")
RATE_CONTROLS = ("threshold", "budget")
BUDGET_PASSES = 4  # choices of a budget's boundaries, each one taking the cuts the last forced out of the budget


class SameConv1d(nn.Conv1d):
    """``Conv1d(..., padding="same")`` with the padding made explicit: (k - 1) // 2 zeros on the left, the rest on
    the right, exactly what PyTorch's "same" does, without the warning (and implicit padded copy) it raises for
    the even kernels of the gate (2k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        total = kernel_size - 1
        self.same_padding = (total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.same_padding))


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
            SameConv1d(width, width // 2, 2 * kernel),
            SameConv1d(width // 2, width // 4, kernel + kernel // 2),
            SameConv1d(width // 4, 1, kernel),
        )

    def logits(self, z_q: Tensor, valid: Tensor | None = None) -> Tensor:
        """z_q (B, T, D), valid (B, T) bool -> (B, T) float32 logits of g."""
        key_padding = None if valid is None else ~valid
        h = self.transformer(self.inp(z_q), key_padding)  # (B, T, W)
        return self.convs(h.transpose(1, 2)).squeeze(1).float()

    def forward(self, z_q: Tensor, valid: Tensor | None = None) -> Tensor:
        """z_q (B, T, D), valid (B, T) bool -> g (B, T) float32 in (0, 1)."""
        return torch.sigmoid(self.logits(z_q, valid))


def segment_mask(gates: Tensor, max_token_len: int) -> Tensor:
    """Soft mask (B, T, K) from gates (B, T): [..., K-1-j] = prod_{i=1..j} (1 - g_{t-i}), 0 before the row start."""
    keep = F.pad(1.0 - gates, (max_token_len - 1, 0), value=0.0)  # (B, T+K-1)
    windows = keep.unfold(1, max_token_len, 1).flip(-1)  # (B, T, K): [..., j] = 1 - g_{t-j}
    windows = torch.cat([torch.ones_like(windows[..., :1]), windows[..., 1:]], dim=-1)
    return torch.cumprod(windows, dim=-1).flip(-1)


def row_ends(valid: Tensor) -> Tensor:
    """(B, T) bool: the last valid position of each run of valid positions (of each row, for left-aligned rows)."""
    nxt = F.pad(valid[:, 1:], (0, 1), value=False)
    return valid & ~nxt


def enforce_max_length(boundaries: Tensor, valid: Tensor, max_token_len: int) -> Tensor:
    """(B, T) bool boundaries plus the cuts that keep every token within ``max_token_len`` valid positions."""
    out = boundaries & valid
    run = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)  # (B,) positions since the last cut
    for t in range(out.shape[1]):
        run = run + valid[:, t].long()
        cut = valid[:, t] & (out[:, t] | (run >= max_token_len))
        out[:, t] = cut
        run = torch.where(cut, torch.zeros_like(run), run)
    return out


def segment_lengths(boundaries: Tensor) -> Tensor:
    """(B, T) positions since the previous boundary, counting t itself (meaningful where a token ends)."""
    b, t = boundaries.shape
    pos = torch.arange(t, device=boundaries.device).expand(b, t)
    last = torch.where(boundaries, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    previous = F.pad(last[:, :-1], (1, 0), value=-1)
    return pos - previous


def next_boundary(boundaries: Tensor) -> Tensor:
    """(B, T) int64: the first boundary at or after each position (T where a row has none left)."""
    t = boundaries.shape[1]
    pos = torch.arange(t, device=boundaries.device).expand_as(boundaries)
    marked = torch.where(boundaries, pos, torch.full_like(pos, t))
    return marked.flip(1).cummin(dim=1).values.flip(1)


def hold_weights(gates: Tensor, max_token_len: int) -> Tensor:
    """(B, T, L) probability that the token covering position t ends at t + j, from gates (B, T), L = max_token_len.

    P_{t,j} = g_{t+j} prod_{i<j} (1 - g_{t+i}), zero past the row, renormalized over the L positions (a row end
    has g = 1, so only a run longer than L without a likely boundary loses mass before renormalizing).
    """
    g = F.pad(gates, (0, max_token_len - 1), value=0.0).unfold(1, max_token_len, 1)  # (B, T, L): g_{t+j}
    keep = torch.cumprod(1.0 - g, dim=-1)  # prod_{i<=j} (1 - g_{t+i})
    survive = torch.cat([torch.ones_like(keep[..., :1]), keep[..., :-1]], dim=-1)  # prod_{i<j}
    weights = g * survive
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-6)


def hard_hold_weights(boundaries: Tensor, max_token_len: int) -> Tensor:
    """(B, T, L) float one-hot at j = (next boundary at or after t) - t; zero rows where no boundary follows."""
    offset = next_boundary(boundaries) - torch.arange(boundaries.shape[1], device=boundaries.device)
    inside = offset < max_token_len
    return F.one_hot(offset.clamp(max=max_token_len - 1), max_token_len).float() * inside[..., None]


def hold(z_q: Tensor, weights: Tensor) -> Tensor:
    """(B, T, D) sum_j weights[t, j] * z_q[t + j]: each position gets the vector(s) of the token(s) covering it."""
    length = weights.shape[-1]
    ahead = F.pad(z_q, (0, 0, 0, length - 1)).unfold(1, length, 1)  # (B, T, D, L): z_q[t + j]
    return torch.einsum("btdl,btl->btd", ahead, weights.to(z_q.dtype))


def budget_counts(valid: Tensor, rate: float) -> tuple[Tensor, Tensor]:
    """(B,) boundaries to place among each row's inner positions under a budget of ``rate`` tokens per valid
    position (the row end is one of them), and (B, T) bool those inner positions (valid, not a row end)."""
    inner = valid & ~row_ends(valid)
    wanted = torch.round(valid.sum(1).float() * rate).long() - (valid.sum(1) > 0).long()  # minus the row end
    return torch.minimum(wanted.clamp_min(0), inner.sum(1)), inner


def budget_boundaries(scores: Tensor, inner: Tensor, count: Tensor) -> Tensor:
    """(B, T) bool: in each row the ``count`` inner positions of highest score (ties: the earliest)."""
    masked = torch.where(inner, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (B, T)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return inner & (rank < count[:, None])


def budget_threshold(logits: Tensor, inner: Tensor, count: Tensor) -> Tensor:
    """(B, 1) per-row threshold between the count-th and (count+1)-th largest inner logit, so that
    sigmoid(logit - threshold) > 0.5 exactly at the positions ``budget_boundaries`` picks (up to ties)."""
    n_inner = inner.sum(1)
    masked = torch.where(inner, logits.detach().float(), torch.full_like(logits, float("-inf"), dtype=torch.float32))
    ordered = torch.sort(masked, dim=1, descending=True).values  # (B, T)
    last = (n_inner - 1).clamp_min(0)
    above = ordered.gather(1, torch.minimum((count - 1).clamp_min(0), last)[:, None])[:, 0]  # count-th largest
    below = ordered.gather(1, torch.minimum(count, last)[:, None])[:, 0]  # (count+1)-th largest
    tau = torch.where(count == 0, above + 1.0, torch.where(count == n_inner, below - 1.0, (above + below) / 2))
    return torch.where(n_inner > 0, tau, torch.zeros_like(tau))[:, None]


def budget_plan(scores: Tensor, valid: Tensor, rate: float, max_token_len: int) -> tuple[Tensor, Tensor, Tensor]:
    """The tokens of a ``rate`` budget per row: (boundaries (B, T) bool incl. row ends and ``max_token_len`` cuts,
    count (B,) gate-chosen boundaries, inner (B, T)). The cuts a choice forces (runs longer than max_token_len)
    are taken out of the budget (up to ``BUDGET_PASSES`` choices), so that a row's total lands at
    round(rate x length) or just above it (a rate near 1 / max_token_len needs evenly spaced tokens)."""
    count, inner = budget_counts(valid, rate)
    ends = row_ends(valid)
    target = count + ends.sum(1)
    chosen = count
    boundaries = enforce_max_length(budget_boundaries(scores, inner, chosen) | ends, valid, max_token_len)
    for _ in range(BUDGET_PASSES - 1):
        extra = boundaries.sum(1) - target
        if not bool((extra > 0).any()):
            break
        chosen = (chosen - extra.clamp_min(0)).clamp_min(0)
        boundaries = enforce_max_length(budget_boundaries(scores, inner, chosen) | ends, valid, max_token_len)
    return boundaries, chosen, inner


def fixed_gates(valid: Tensor, fixed_length: int) -> Tensor:
    """(B, T) float gates of the fixed baseline: 1 at every ``fixed_length``-th position, 0 elsewhere and on padding."""
    t = torch.arange(valid.shape[1], device=valid.device)
    return (((t + 1) % fixed_length) == 0).float().expand_as(valid) * valid


@dataclass
class GatedQuantizerOutput(QuantizerOutput):
    """``QuantizerOutput`` of the gated quantizer (see the module docstring for every field).

    Attributes:
        gates: (B, T) float32 boundary probabilities (1 at row ends, 0 on padding).
        segment_mask: (B, T, K) the soft segment mask of the decoder's K slots.
        valid: (B, T) bool, the positions that were quantized (the input mask).
        codes: (B, T) int64 inner code ids at every valid position, -1 on padding.
        learned_gates: False for ``segmentation="fixed"``: the gates are constants, nothing to train.
    """

    gates: Tensor | None = None
    segment_mask: Tensor | None = None
    valid: Tensor | None = None
    codes: Tensor | None = None
    learned_gates: bool = True


class Segmentation(NamedTuple):
    """What ``GatedQuantizer.segment`` returns (all (B, T) but ``z_q``)."""

    boundaries: Tensor  # bool, the token positions
    codes: Tensor  # int64 inner ids at every valid position, -1 on padding
    z_q: Tensor  # (B, T, D) the exact codes of every valid position, zeros on padding
    gates: Tensor  # float32 boundary probabilities


@register_quantizer("gq")
class GatedQuantizer(Quantizer):
    """A boundary gate over any single-stage backend: variable-length tokens (see the module docstring).

    Args:
        dim: width D of the latents (B, T, D).
        codebook_size: codes K of the inner backend.
        inner: registry name of the backend that quantizes every position (``vq``, ``ema_vq``, ...).
        inner_options: extra keyword arguments of that backend (e.g. ``{"swap_loss_weights": true}``).
        segmentation: ``learned`` (the gate) or ``fixed`` (a boundary every ``fixed_length`` positions).
        fixed_length: token length of the fixed baseline, in [1, max_token_len].
        max_token_len: the longest token (the segment decoder's slot count K); longer runs are cut.
        width: gate transformer width.
        depth: gate transformer blocks (paper: 2).
        num_heads: gate attention heads.
        kernel: base kernel of the gate's convolutions; None: ``max_token_len`` (the paper's choice).
        compression_weight: weight of mean(g) in ``loss`` (models that decode every position; text models weight
            the term in their training module and need 0 here).
        expansion: ``hold`` in training: ``soft`` (the gates' probabilities) or ``straight_through`` (hard
            forward, soft gradient).
        target_rate: tokens per latent position to reach (in [1 / max_token_len, 1]); None: no rate control
            (the gate decides at g > 0.5).
        rate_control: how ``target_rate`` is held. ``threshold``: one threshold on the gate's logits for all
            data, moved every training step towards the rate (``update_rate_threshold``; the rate of new data
            follows how its gate logits compare with the training data's). ``budget``: every sequence gets
            round(target_rate x its length) tokens, placed where its gate logits are highest (a per-sequence
            threshold between the k-th and (k+1)-th logit, the same in training and eval), so the rate of each
            clip is the target up to rounding and the ``max_token_len`` cuts; the gate decides where, not how many.
        rate_lr: the threshold's step, in running stds of the logits per unit of relative rate error (threshold).
        rate_momentum: weight of the running std's past in its update after each training batch (threshold).

    Raises:
        ValueError: an unknown segmentation or expansion, a multi-stage or gated inner backend, options that clash.
    """

    variable_tokens = True  # ``mask`` marks the tokens it emits, a subset of the positions it was given
    network_modules = ("gate",)  # sub-networks trained like the encoder (weight decay), not like a codebook

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        inner: str = "vq",
        inner_options: dict[str, Any] | None = None,
        segmentation: str = "learned",
        fixed_length: int = 8,
        max_token_len: int = 10,
        width: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        kernel: int | None = None,
        compression_weight: float = 0.0,
        expansion: str = "soft",
        target_rate: float | None = None,
        rate_control: str = "threshold",
        rate_lr: float = 0.05,
        rate_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if segmentation not in SEGMENTATION_MODES:
            raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {segmentation!r}")
        if expansion not in EXPANSION_MODES:
            raise ValueError(f"expansion must be one of {EXPANSION_MODES}, got {expansion!r}")
        if rate_control not in RATE_CONTROLS:
            raise ValueError(f"rate_control must be one of {RATE_CONTROLS}, got {rate_control!r}")
        if compression_weight < 0:
            raise ValueError(f"compression_weight must be >= 0, got {compression_weight}")
        if max_token_len < 1:
            raise ValueError(f"max_token_len must be >= 1, got {max_token_len}")
        if target_rate is not None:
            if segmentation != "learned":
                raise ValueError("target_rate needs segmentation=learned: a fixed segmentation has a fixed rate "
                                 f"(1 / fixed_length = {1 / fixed_length:.3g} tokens per position)")
            if not 1.0 / max_token_len <= target_rate <= 1.0:
                raise ValueError(f"target_rate is tokens per latent position and must lie in [1 / max_token_len, 1] = "
                                 f"[{1 / max_token_len:.3g}, 1], got {target_rate}: a token covers at most "
                                 f"max_token_len={max_token_len} positions (raise it for lower rates)")
            if rate_lr <= 0:
                raise ValueError(f"rate_lr must be > 0, got {rate_lr}")
            if not 0.0 <= rate_momentum < 1.0:
                raise ValueError(f"rate_momentum must lie in [0, 1), got {rate_momentum}")
        if segmentation == "fixed" and not 0 < fixed_length <= max_token_len:
            raise ValueError(f"fixed_length must lie in [1, max_token_len={max_token_len}], got {fixed_length}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.segmentation = segmentation
        self.fixed_length = fixed_length
        self.max_token_len = max_token_len
        self.compression_weight = float(compression_weight)
        self.expansion = expansion
        self.target_rate = None if target_rate is None else float(target_rate)
        self.rate_control = rate_control
        self.rate_lr = float(rate_lr)
        self.rate_momentum = float(rate_momentum)
        if self.target_rate is not None and rate_control == "threshold":
            # The controller's threshold tau on the gate's logits and the running std of the logits
            # (``update_rate_threshold``): saved with the weights, so that a resumed run and an artifact use them.
            self.register_buffer("rate_stats", torch.tensor([0.0, 1.0]))  # tau, running std of the logits
        # The gate is built before the inner backend, so that parameters are drawn from the RNG in the
        # order of the original GQ-VAE model (encoder, decoder, gate, codebook).
        self.gate = (
            BoundaryGate(dim, width, depth, num_heads, kernel or max_token_len) if segmentation == "learned" else None
        )
        self.inner_name = inner
        self.inner = build_inner_quantizer(inner, dim, codebook_size, inner_options, "inner / inner_options")
        self.soft = bool(self.inner.soft)
        self.code_dim = getattr(self.inner, "code_dim", dim)

    @classmethod
    def self_contained_arguments(cls, config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
        """The inner backend's own (``inner_options``), e.g. a vqgan_lc backend's codebook_path."""
        return self_contained_inner_options(cls, config, "inner", "inner_options", shapes, "inner.")

    @property
    def codebook(self) -> Tensor:
        """(K, C) the inner backend's codebook."""
        return self.inner.codebook

    # --- segmentation ---------------------------------------------------------------------------
    def gates_for(self, z_q: Tensor, valid: Tensor, update: bool = True) -> Tensor:
        """(B, T) float32 boundary probabilities of quantized latents z_q (B, T, D): 1 at row ends, 0 on padding.
        ``update``: a training-mode call may move the rate controller's statistics (``forward`` only)."""
        if self.gate is None:
            g = fixed_gates(valid, self.fixed_length)
        elif self.target_rate is None:
            g = self.gate(z_q.to(self.gate.inp.weight.dtype), valid)
        elif self.rate_control == "budget":
            logits = self.gate.logits(z_q.to(self.gate.inp.weight.dtype), valid)
            _, count, inner = budget_plan(logits.detach(), valid, self.target_rate, self.max_token_len)
            g = torch.sigmoid(logits - budget_threshold(logits, inner, count).to(logits.dtype))
        else:
            logits = self.gate.logits(z_q.to(self.gate.inp.weight.dtype), valid)
            g = torch.sigmoid(self.rate_logits(logits, valid, update))
        g = torch.where(row_ends(valid), torch.ones_like(g), g)
        return g * valid

    def hard_boundaries(self, gates: Tensor, valid: Tensor) -> Tensor:
        """(B, T) bool token positions: g > 0.5 (under a ``budget``: each row's highest gates), row ends, and cuts at
        ``max_token_len``."""
        if self.target_rate is not None and self.rate_control == "budget" and self.gate is not None:
            return budget_plan(gates, valid, self.target_rate, self.max_token_len)[0]
        return enforce_max_length((gates > 0.5) | row_ends(valid), valid, self.max_token_len)

    # --- the contract ---------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None) -> GatedQuantizerOutput:
        """Quantize every valid position of z (B, T, D), gate it, and mark the tokens (see the module docstring)."""
        self.check_input(z, mask)
        q = self.inner(z, mask)
        valid = mask if mask is not None else torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        gates = self.gates_for(q.z_q, valid)  # (B, T)
        boundaries = self.hard_boundaries(gates.detach(), valid)  # (B, T)
        n_valid = valid.sum().clamp_min(1)
        compression = gates.sum() / n_valid
        indices = torch.where(boundaries, q.indices, torch.full_like(q.indices, -1))
        metrics = dict(q.metrics)
        metrics["bytes_per_token"] = (valid.sum() / boundaries.sum().clamp_min(1)).float().detach()
        tokens_per_position = (boundaries.sum() / n_valid).float().detach()
        metrics["tokens_per_position"] = tokens_per_position
        loss = q.loss
        if self.compression_weight and self.gate is not None:
            loss = loss + self.compression_weight * compression
        if self.target_rate is not None and self.rate_control == "threshold":
            if self.training:
                self.update_rate_threshold(boundaries, valid)
            metrics["rate_threshold"] = self.rate_stats[0].detach().clone()
        return GatedQuantizerOutput(
            z_q=q.z_q,
            indices=indices,
            loss=loss,
            losses={**q.losses, "compression": compression},
            mask=boundaries,
            probs=q.probs,
            metrics=metrics,
            gates=gates,
            segment_mask=segment_mask(gates, self.max_token_len),
            valid=valid,
            codes=q.indices,
            learned_gates=self.gate is not None,
        )

    def rate_logits(self, logits: Tensor, valid: Tensor, update: bool = True) -> Tensor:
        """(B, T) logits - tau under ``target_rate``: the same threshold in training and eval, so that the rate a
        run reaches in training is the rate its artifact gives on data like the training data. Training also
        moves the running std of the logits (``rate_stats[1]``, the controller's step size) by
        ``1 - rate_momentum`` (unless ``update`` is False)."""
        if self.training and update:
            inner = valid & ~row_ends(valid)
            if int(inner.sum()) > 1:
                with torch.no_grad():
                    one = torch.ones((), device=logits.device)
                    sums = all_reduce_sum(torch.stack([logits.detach()[inner].std(), one]))
                    self.rate_stats[1].mul_(self.rate_momentum).add_((1.0 - self.rate_momentum) * sums[0] / sums[1])
        return logits - self.rate_stats[0]

    def update_rate_threshold(self, boundaries: Tensor, valid: Tensor) -> None:
        """One training step of the rate controller (``target_rate``): a stochastic-approximation step of the
        threshold tau that the gate's logits must pass (g = sigmoid(logit - tau), ``rate_logits``),

            tau <- tau + rate_lr * s * (tokens per position - target_rate) / target_rate

        with the batch's realised rate (row ends and cuts at ``max_token_len`` included) summed over every rank,
        and s the running std of the logits (``rate_stats[1]``, ``rate_logits``), so that the step follows their
        scale.
        It moves the decision itself, not the gate's gradients, so it also works on saturated gates.
        """
        with torch.no_grad():
            counts = all_reduce_sum(torch.stack([boundaries.sum(), valid.sum()]).float())
            rate = counts[0] / counts[1].clamp_min(1)
            self.rate_stats[0].add_(self.rate_lr * self.rate_stats[1] * (rate - self.target_rate) / self.target_rate)

    @torch.no_grad()
    def segment(self, z: Tensor, mask: Tensor | None = None) -> Segmentation:
        """Tokens of z (B, T, D) from the exact codes of its positions, without touching any state or mode."""
        self.check_input(z, mask)
        valid = mask if mask is not None else torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        codes = self.inner.encode(z, mask=valid)  # (B, T), -1 on padding
        z_q = self.inner.decode(codes.clamp_min(0)) * valid[..., None]  # (B, T, D)
        gates = self.gates_for(z_q, valid, update=False)
        return Segmentation(self.hard_boundaries(gates, valid), codes, z_q, gates)

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T) code ids of the tokens of z (B, T, D), -1 at the other positions and on padding."""
        seg = self.segment(z, mask)
        return torch.where(seg.boundaries, seg.codes, torch.full_like(seg.codes, -1))

    def decode(self, indices: Tensor) -> Tensor:
        """Vectors (..., D) of code ids (...) (the inner backend's codes)."""
        return self.inner.decode(indices)

    # --- every position of a token (image / audio models) -----------------------------------------
    def hold_tokens(self, out: GatedQuantizerOutput) -> tuple[Tensor, Tensor]:
        """``(held (B, T, D), weights (B, T, L))`` of a ``forward`` output: the token vector at every position.

        ``weights[t, j]`` is the probability that the token covering t ends at t + j: soft (from the gates) in
        training, one-hot at the next boundary in eval (see the module docstring); zero on padding.
        """
        hard = hard_hold_weights(out.mask, self.max_token_len)
        if not self.training:
            weights = hard
        else:
            soft = hold_weights(out.gates, self.max_token_len)
            weights = soft if self.expansion == "soft" else hard + soft - soft.detach()
        weights = weights * out.valid[..., None]
        return hold(out.z_q, weights), weights

    def expand(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """``(held (B, T, D), weights (B, T, L))`` from token ids (B, T): the code at each token's last position, -1
        at the positions inside it (as ``encode`` returns them); weights one-hot at the position inside the token.

        Raises:
            ValueError: not (B, T) ids, a row whose last position is not a token's end (-1), a token longer than
                ``max_token_len`` positions, or ids outside [-1, K).
        """
        if indices.dim() != 2:
            raise ValueError(f"gated token ids are (B, T) with -1 inside each token, got shape {tuple(indices.shape)}")
        if indices.shape[1] == 0:
            raise ValueError("gated token ids of 0 positions: there is nothing to decode")
        if int(indices.min()) < -1:
            raise ValueError(f"gated token ids lie in [-1, {self.codebook_size - 1}], got a minimum of "
                             f"{int(indices.min())}")
        boundaries = indices >= 0
        if not bool(boundaries[:, -1].all()):
            raise ValueError("every row of gated token ids must end a token (a code id, not -1, at its last "
                             "position): the ids were cut inside a token")
        offsets = next_boundary(boundaries) - torch.arange(indices.shape[1], device=indices.device)
        if int(offsets.max()) >= self.max_token_len:
            raise ValueError(f"a token covers {int(offsets.max()) + 1} positions, more than this quantizer's "
                             f"max_token_len={self.max_token_len}: these ids come from another tokenizer")
        weights = hard_hold_weights(boundaries, self.max_token_len)
        z_q = self.inner.decode(indices.clamp_min(0)) * boundaries[..., None]
        return hold(z_q, weights), weights

    @staticmethod
    def token_lengths(indices: Tensor) -> Tensor:
        """(B, T) int64 positions each token covers, at its last position (0 at the positions inside a token)."""
        boundaries = indices >= 0
        return torch.where(boundaries, segment_lengths(boundaries), torch.zeros_like(indices))

    def extra_repr(self) -> str:
        return (f"inner={self.inner_name}, segmentation={self.segmentation}, max_token_len={self.max_token_len}"
                + (f", fixed_length={self.fixed_length}" if self.gate is None else "")
                + (f", compression_weight={self.compression_weight:g}" if self.compression_weight else "")
                + (f", target_rate={self.target_rate:g}, rate_control={self.rate_control}"
                   if self.target_rate is not None else ""))
