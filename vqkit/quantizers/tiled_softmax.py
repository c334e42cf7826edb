"""Softmax over a whole codebook in tiles: exact values and gradients without an N x K matrix.

The logits of N latents against K codes are ``z @ E.T`` (N, K). At K = 262,144 that matrix (and its
softmax, and its gradient) does not fit, so both functions here walk the codes in tiles of ``code_chunk``
for blocks of ``row_chunk`` latents, as flash attention does: the forward keeps a running maximum and
sum of exponentials per row (and whatever weighted sums it needs, rescaled when the maximum grows); the
backward recomputes each tile's probabilities from the saved log-sum-exp and adds that tile's share of
the gradient to ``z`` and ``E``. Memory is O(row_chunk x code_chunk + (N + K) x D), whatever K is.

- ``softmax_straight_through(z, E)``: the id of the largest logit and ``z_q = E[id]``, whose gradient is
  that of ``one_hot(id) - sg(p) + p`` times ``E`` with p = softmax(z E^T): the hard code gets the upstream
  gradient, and every code gets a gradient through p (Index Backpropagation Quantization).
- ``softmax_entropies(z, E, temperature)``: the mean per-row entropy of softmax(z E^T / T) and the entropy
  of the mean distribution over the rows (the MAGVIT-v2 / IBQ entropy terms).

Both run in the dtype of their inputs (the quantizers pass fp32). Exponents are floored at -87 (e^-87 is about
fp32's smallest normal number): subnormal arithmetic is 10-100x slower on CPUs, and at temperature 0.01 most
terms would be subnormal; the floor changes a sum of K terms, the largest of which is 1, by at most K e^-87.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK

EXP_FLOOR = -87.0


def _exp_(x: Tensor) -> Tensor:
    """exp of ``x`` (<= 0) in place, floored at e^-87 (no subnormals)."""
    return x.clamp_min_(EXP_FLOOR).exp_()


def _check(z: Tensor, codebook: Tensor, code_chunk: int, row_chunk: int) -> None:
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected latents (N, D) and codes (K, D), got {tuple(z.shape)} and {tuple(codebook.shape)}")
    if code_chunk <= 0 or row_chunk <= 0:
        raise ValueError(f"code_chunk and row_chunk must be positive, got {code_chunk} and {row_chunk}")


class _SoftmaxStraightThrough(torch.autograd.Function):
    """(z (N, D), E (K, D)) -> (z_q = E[ids] (N, D), ids (N,)); gradient of (one_hot - sg(p) + p) @ E."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, codebook: Tensor, code_chunk: int, row_chunk: int,
                need_soft: bool) -> tuple[Tensor, Tensor]:
        # need_soft False (no gradient wanted): the ids alone, from the same tiles (so the same ids)
        n, k = z.shape[0], codebook.shape[0]
        ids = torch.empty(n, dtype=torch.long, device=z.device)
        lse = z.new_empty(n)  # log sum_k exp(l_k)
        soft = z.new_empty(n, z.shape[1])  # p @ E, the soft code
        for r0 in range(0, n, row_chunk):
            zr = z[r0 : r0 + row_chunk]  # (R, D)
            run_max = zr.new_full((zr.shape[0],), float("-inf"))
            run_arg = torch.zeros(zr.shape[0], dtype=torch.long, device=z.device)
            run_sum = zr.new_zeros(zr.shape[0])
            run_soft = torch.zeros_like(zr)
            for c0 in range(0, k, code_chunk):
                codes = codebook[c0 : c0 + code_chunk]  # (C, D)
                logits = zr @ codes.T  # (R, C)
                tile_max, tile_arg = logits.max(dim=1)
                better = tile_max > run_max  # strict: the first of tied codes wins, as argmax
                run_arg = torch.where(better, tile_arg + c0, run_arg)
                new_max = torch.maximum(run_max, tile_max)
                if need_soft:
                    rescale = torch.exp(run_max - new_max)  # 0 at the first tile
                    weights = _exp_(logits.sub_(new_max.unsqueeze(1)))  # (R, C), in place: one tile buffer
                    run_sum = run_sum * rescale + weights.sum(1)
                    run_soft = run_soft * rescale.unsqueeze(1) + weights @ codes
                run_max = new_max
            ids[r0 : r0 + zr.shape[0]] = run_arg
            if need_soft:
                lse[r0 : r0 + zr.shape[0]] = run_max + run_sum.log()
                soft[r0 : r0 + zr.shape[0]] = run_soft / run_sum.unsqueeze(1)
        ctx.save_for_backward(z, codebook, lse, soft, ids)
        ctx.chunks = (code_chunk, row_chunk)
        ctx.mark_non_differentiable(ids)
        return codebook[ids], ids

    @staticmethod
    def backward(ctx: FunctionCtx, grad_zq: Tensor, _grad_ids: Tensor | None):
        z, codebook, lse, soft, ids = ctx.saved_tensors
        code_chunk, row_chunk = ctx.chunks
        grad_z = torch.zeros_like(z)
        grad_e = torch.zeros_like(codebook)
        grad_e.index_add_(0, ids, grad_zq)  # the hard one-hot: the selected code gets the upstream gradient
        # dL/dl_k = p_k (g.e_k - sum_j p_j g.e_j), and sum_j p_j g.e_j = g . (p @ E)
        centre = (grad_zq * soft).sum(1)  # (N,)
        for r0 in range(0, z.shape[0], row_chunk):
            rows = slice(r0, r0 + row_chunk)
            zr, gr = z[rows], grad_zq[rows]
            for c0 in range(0, codebook.shape[0], code_chunk):
                codes = codebook[c0 : c0 + code_chunk]
                probs = _exp_((zr @ codes.T).sub_(lse[rows].unsqueeze(1)))  # (R, C)
                dlogits = (gr @ codes.T).sub_(centre[rows].unsqueeze(1)).mul_(probs)
                grad_z[rows] += dlogits @ codes
                grad_e[c0 : c0 + code_chunk] += dlogits.T @ zr
        return grad_z, grad_e, None, None, None


class _SoftmaxEntropies(torch.autograd.Function):
    """(z (N, D), E (K, D)) -> (mean_n H(p_n), H(mean_n p_n)) with p_n = softmax(z_n E^T / T)."""

    @staticmethod
    def forward(ctx: FunctionCtx, z: Tensor, codebook: Tensor, temperature: float, eps: float, code_chunk: int,
                row_chunk: int) -> tuple[Tensor, Tensor]:
        n, k = z.shape[0], codebook.shape[0]
        lse = z.new_empty(n)  # log sum_k exp(l'_k), l' = l / T
        mean_logit = z.new_empty(n)  # sum_k p_k l'_k
        for r0 in range(0, n, row_chunk):
            zr = z[r0 : r0 + row_chunk] / temperature  # l' = (z / T) E^T: one scaling of (R, D), not of (R, C)
            run_max = zr.new_full((zr.shape[0],), float("-inf"))
            run_sum = zr.new_zeros(zr.shape[0])
            run_dot = zr.new_zeros(zr.shape[0])
            for c0 in range(0, k, code_chunk):
                logits = zr @ codebook[c0 : c0 + code_chunk].T  # (R, C)
                new_max = torch.maximum(run_max, logits.amax(dim=1))
                rescale = torch.exp(run_max - new_max)
                weights = _exp_(logits - new_max.unsqueeze(1))
                run_sum = run_sum * rescale + weights.sum(1)
                run_dot = run_dot * rescale + (weights * logits).sum(1)
                run_max = new_max
            lse[r0 : r0 + zr.shape[0]] = run_max + run_sum.log()
            mean_logit[r0 : r0 + zr.shape[0]] = run_dot / run_sum
        sample_entropy = (lse - mean_logit).mean()  # H(p) = lse - E_p[l']
        # second pass: the mean distribution over the rows, (K,)
        mean_probs = z.new_zeros(k)
        for r0 in range(0, n, row_chunk):
            zr = z[r0 : r0 + row_chunk] / temperature
            for c0 in range(0, k, code_chunk):
                logits = zr @ codebook[c0 : c0 + code_chunk].T
                mean_probs[c0 : c0 + code_chunk] += _exp_(logits.sub_(lse[r0 : r0 + row_chunk].unsqueeze(1))).sum(0)
        mean_probs /= n
        avg_entropy = -(mean_probs * torch.log(mean_probs + eps)).sum()
        ctx.save_for_backward(z, codebook, lse, mean_logit, mean_probs)
        ctx.options = (temperature, eps, code_chunk, row_chunk)
        return sample_entropy, avg_entropy

    @staticmethod
    def backward(ctx: FunctionCtx, grad_sample: Tensor, grad_avg: Tensor):
        z, codebook, lse, mean_logit, mean_probs = ctx.saved_tensors
        temperature, eps, code_chunk, row_chunk = ctx.options
        n, k = z.shape[0], codebook.shape[0]
        # dH(q)/dq_k with q the mean distribution
        slope = -(torch.log(mean_probs + eps) + mean_probs / (mean_probs + eps))  # (K,)
        grad_z = torch.zeros_like(z)
        grad_e = torch.zeros_like(codebook)
        w_sample, w_avg = grad_sample / (n * temperature), grad_avg / (n * temperature)
        # dl'_nk = p_nk (w_avg slope_k - w_sample l'_nk + w_sample E_p[l'] - w_avg E_p[slope]), the last two per row:
        # d mean_n H(p_n) / dl' = -p (l' - E_p[l']) / N ; d H(q) / dl' = p (slope - E_p[slope]) / N
        per_code = w_avg * slope  # (K,)
        for r0 in range(0, n, row_chunk):
            rows = slice(r0, r0 + row_chunk)
            zt, lse_r = z[rows] / temperature, lse[rows].unsqueeze(1)
            expected_slope = zt.new_zeros(zt.shape[0])  # sum_k p_k slope_k, needs a pass of its own
            for c0 in range(0, k, code_chunk):
                probs = _exp_((zt @ codebook[c0 : c0 + code_chunk].T).sub_(lse_r))
                expected_slope += probs @ slope[c0 : c0 + code_chunk]
            per_row = (w_sample * mean_logit[rows] - w_avg * expected_slope).unsqueeze(1)  # (R, 1)
            for c0 in range(0, k, code_chunk):
                codes = codebook[c0 : c0 + code_chunk]
                logits = zt @ codes.T  # (R, C)
                probs = _exp_(logits - lse_r)
                dlogits = logits.mul_(-w_sample).add_(per_code[c0 : c0 + code_chunk]).add_(per_row).mul_(probs)
                grad_z[rows] += dlogits @ codes
                grad_e[c0 : c0 + code_chunk] += dlogits.T @ z[rows]
        return grad_z, grad_e, None, None, None, None


def softmax_straight_through(z: Tensor, codebook: Tensor, code_chunk: int = DEFAULT_CODE_CHUNK,
                             row_chunk: int = DEFAULT_ROW_CHUNK) -> tuple[Tensor, Tensor]:
    """Hard codes of the largest logits with the gradient of the softmax over every code, in tiles.

    Equal, in value and gradient, to ``(one_hot(l.argmax(1)) - p.detach() + p) @ codebook`` with
    ``l = z @ codebook.T`` and ``p = softmax(l, 1)``, except that the value is exactly ``codebook[ids]``.

    Args:
        z: (N, D) latents.
        codebook: (K, D) codes.
        code_chunk: codes per tile.
        row_chunk: latents per tile.

    Returns:
        z_q (N, D) and ids (N,) int64 (the first of tied maxima).
    """
    _check(z, codebook, code_chunk, row_chunk)
    need_soft = torch.is_grad_enabled() and (z.requires_grad or codebook.requires_grad)
    return _SoftmaxStraightThrough.apply(z, codebook, code_chunk, row_chunk, need_soft)


def softmax_entropies(z: Tensor, codebook: Tensor, temperature: float = 1.0, eps: float = 1e-5,
                      code_chunk: int = DEFAULT_CODE_CHUNK,
                      row_chunk: int = DEFAULT_ROW_CHUNK) -> tuple[Tensor, Tensor]:
    """Entropies of p_n = softmax(z_n . codebook^T / temperature), in tiles, differentiable.

    Args:
        z: (N, D) latents, N >= 1.
        codebook: (K, D) codes.
        temperature: divides the logits (IBQ: 0.01).
        eps: added inside the log of the mean distribution (IBQ / MAGVIT-v2: 1e-5).
        code_chunk, row_chunk: tile sizes.

    Returns:
        ``sample_entropy`` = mean_n -sum_k p_nk log p_nk and ``avg_entropy`` = -sum_k q_k log(q_k + eps) with
        q = mean_n p_n; scalars.
    """
    _check(z, codebook, code_chunk, row_chunk)
    if z.shape[0] == 0:
        raise ValueError("softmax_entropies needs at least one latent (every position was masked out)")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return _SoftmaxEntropies.apply(z, codebook, float(temperature), float(eps), code_chunk, row_chunk)
