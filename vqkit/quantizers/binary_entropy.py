"""Entropy terms of the binary (sign) quantizers LFQ and BSQ, without ever forming an M x K tensor.

Both quantizers score code c in {-s, +s}^d for a token u (d = log2 K bits) by its distance, as the
official code does: logits_c = 2 <u, c> / T (the squared distance up to a constant), probs = softmax
over the K codes. That softmax is a product of independent per-bit Bernoullis,

    q(c | u) = prod_i Bernoulli(bit_i; p_i),   p_i = P(bit_i = +s) = sigmoid(4 s u_i / T),

which gives, over M tokens u_1..u_M:

- the per-sample entropy, EXACTLY: H(q(. | u)) = sum_i H_b(p_i) (computed from the logits 4 s u_i / T,
  stable at the official T = 0.01 where p saturates to 0/1 in fp32);
- the batch entropy H(qbar), qbar = mean_m q(. | u_m), the entropy of the batch-mean distribution. qbar
  is a mixture of products and does not factorize. ``group_bits=None`` computes it EXACTLY: the bits
  split into a low and a high half, each token's distribution over a half is a product table (M, 2^h),
  and qbar = P_high^T P_low / M as a (2^(d-h), 2^h) matrix, i.e. the K probabilities, in O(M 2^(d/2) + K)
  memory (8 MiB plus 1 MiB at K = 2^18 and M = 2048; the official Open-MAGVIT2 code forms the full
  M x K softmax instead, 2 GiB there). ``group_bits=g`` is BSQ's official approximation: the bits split
  into groups of g, and the batch entropy is the sum over groups of the entropy of each group's mean
  distribution (an upper bound of the exact value, by subadditivity; equal to it for one group, g >= d).

The sign convention is the one of the ids: bit i set <=> u_i > 0 <=> code coordinate +s, weight 2^i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Widest code an exact batch entropy accepts: its qbar holds K = 2^bits fp32 probabilities (2^24: 64 MiB).
MAX_EXACT_BITS = 24


def bit_logits(u: Tensor, scale: float, temperature: float) -> Tensor:
    """(M, d) code-space tokens -> (M, d) logits of P(bit = +scale): 4 * scale * u / T."""
    return u * (4.0 * scale / temperature)


def per_sample_entropy(logits: Tensor) -> Tensor:
    """Mean over the M tokens of the entropy (nats) of each token's distribution over the K codes.

    Args:
        logits: (M, d) per-bit logits (``bit_logits``). M = 0 gives 0 (with a graph).
    """
    p = torch.sigmoid(logits)
    bits = F.softplus(logits) - p * logits  # (M, d) H_b(p) = log(1 + e^l) - p l
    return bits.sum(-1).sum() / max(logits.shape[0], 1)


def product_table(p: Tensor) -> Tensor:
    """(M, g) P(bit = 1) -> (M, 2^g) each token's probability of every g-bit pattern (bit i has weight 2^i)."""
    table = p.new_ones(p.shape[0], 1)
    for i in range(p.shape[1]):
        pi = p[:, i : i + 1]
        table = torch.cat([table * (1 - pi), table * pi], dim=1)  # pattern j + 2^i has bit i set
    return table


def entropy(probs: Tensor, eps: float) -> Tensor:
    """Entropy (nats) of a distribution over the last axis: -sum p log(p + eps), summed over leading axes."""
    return -(probs * torch.log(probs + eps)).sum()


def batch_mean_distribution(logits: Tensor) -> Tensor:
    """(M, d) per-bit logits -> (2^d,) the batch-mean distribution over all codes, exactly, without M x K.

    Raises:
        ValueError: d > ``MAX_EXACT_BITS`` (use the grouped approximation).
    """
    m, d = logits.shape
    if d > MAX_EXACT_BITS:
        raise ValueError(
            f"an exact batch entropy over 2^{d} codes needs a {2**d}-entry distribution; set group_bits (e.g. 9) to "
            f"use BSQ's grouped approximation, or use at most {MAX_EXACT_BITS} bits"
        )
    p = torch.sigmoid(logits)
    low = d - d // 2
    low_table = product_table(p[:, :low])  # (M, 2^low)
    high_table = product_table(p[:, low:])  # (M, 2^(d-low))
    joint = high_table.transpose(0, 1) @ low_table  # (2^(d-low), 2^low): row = high bits, column = low bits
    return joint.reshape(-1) / max(m, 1)  # id = high * 2^low + low


def batch_entropy(logits: Tensor, group_bits: int | None, eps: float) -> Tensor:
    """Entropy of the batch-mean code distribution: exact (``group_bits=None``) or BSQ's grouped sum.

    Args:
        logits: (M, d) per-bit logits of the (unmasked) tokens.
        group_bits: None for the exact value; g for the sum of the entropies of the mean distributions of the
            groups of g consecutive bits (the last one holds the remainder when g does not divide d; g >= d: one
            group, the exact value). bsq-vit requires g to divide d; the remainder group extends it.
        eps: inside the log, as the official code.
    """
    d = logits.shape[1]
    if group_bits is None or group_bits >= d:
        return entropy(batch_mean_distribution(logits), eps)
    p = torch.sigmoid(logits)
    total = logits.new_zeros(())
    for start in range(0, d, group_bits):
        table = product_table(p[:, start : start + group_bits])  # (M, 2^g)
        total = total + entropy(table.sum(0) / max(logits.shape[0], 1), eps)
    return total
