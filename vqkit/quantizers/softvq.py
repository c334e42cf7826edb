"""Soft vector quantization (SoftVQ-VAE, arXiv 2412.10958).

Each token is a convex mix of codes: p = softmax(cos(z, sg(E)) / tau), z_q = p @ E.
There is no straight-through estimator and no codebook/commitment loss: the encoder
learns through p, the codebook through the mix. An entropy term (mean per-token
entropy minus the entropy of the mean posterior, on sharper logits) keeps each token
decisive and the codes in use. The sequence can be split into contiguous blocks, each
with its own share of the codes, as the paper does with 4 blocks of 16 tokens.

Differences from the reference code: the entropy term is computed per block (the
reference flattens all blocks together, so code k of block 0 and code k of block 1
share one bin of the batch-mean posterior), and ``indices`` are global ids in
[0, codebook_size), so a code id alone identifies its vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqkit.quantizers.base import Quantizer, QuantizerOutput, batch_usage_metrics
from vqkit.quantizers.registry import register_quantizer


@register_quantizer("softvq")
class SoftVectorQuantizer(Quantizer):
    """Soft categorical posterior over a codebook.

    Args:
        dim: token width D.
        codebook_size: total number of codes K (split evenly over the blocks).
        num_codebooks: blocks along the sequence; tokens of block b mix only the codes of block b.
            The sequence length must be divisible by it.
        tau: softmax temperature of the posterior (0.07 in the paper).
        normalize: l2-normalise tokens and codes (cosine logits, unit-norm codes in the mix).
        entropy_weight: weight of the entropy term (0.01 in the paper); 0 = logged only.
        entropy_temperature: temperature of the logits inside the entropy term (0.01).
        return_probs: also return the posterior (B, N, K_block) in ``QuantizerOutput.probs``.
        check_finite: raise on NaN/Inf latents.
    """

    soft = True

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        num_codebooks: int = 1,
        tau: float = 0.07,
        normalize: bool = True,
        entropy_weight: float = 0.01,
        entropy_temperature: float = 0.01,
        return_probs: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if dim <= 0 or codebook_size <= 0 or num_codebooks <= 0:
            raise ValueError(f"dim, codebook_size and num_codebooks must be positive, got {dim}, {codebook_size}, "
                             f"{num_codebooks}")
        if codebook_size % num_codebooks:
            raise ValueError(f"codebook_size ({codebook_size}) must be divisible by num_codebooks ({num_codebooks})")
        if tau <= 0 or entropy_temperature <= 0:
            raise ValueError(f"tau and entropy_temperature must be > 0, got {tau} and {entropy_temperature}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.num_codebooks = num_codebooks
        self.block_size = codebook_size // num_codebooks
        self.tau = tau
        self.normalize = normalize
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.return_probs = return_probs
        self.check_finite = check_finite
        self.embedding = nn.Parameter(F.normalize(torch.randn(codebook_size, dim), dim=-1))

    @property
    def codebook(self) -> Tensor:
        codes = self.embedding.float()
        return F.normalize(codes, dim=-1) if self.normalize else codes

    def decode(self, indices: Tensor) -> Tensor:
        """The hard code of each id (the posterior's argmax); ``forward`` mixes codes instead."""
        self.check_indices(indices)
        with torch.autocast(device_type=indices.device.type, enabled=False):
            return F.embedding(indices.long(), self.codebook)

    def forward(self, z: Tensor, mask: Tensor | None = None) -> QuantizerOutput:
        self.check_input(z, mask)
        b, n, d = z.shape
        if n % self.num_codebooks:
            raise ValueError(
                f"softvq with num_codebooks={self.num_codebooks} needs a sequence length divisible by it, got {n} "
                "tokens; change the number of latent tokens or quantizer.num_codebooks."
            )
        if self.check_finite:
            self.check_finite_input(z)
        in_dtype = z.dtype
        blocks, per_block = self.num_codebooks, n // self.num_codebooks
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float().reshape(b, blocks, per_block, d).transpose(0, 1)  # (G, B, T, D)
            if self.normalize:
                z32 = F.normalize(z32, dim=-1)
            codes = self.codebook.reshape(blocks, self.block_size, d)  # (G, Kb, D)
            logits = torch.einsum("gbtd,gkd->gbtk", z32, codes.detach())  # (G, B, T, Kb)
            probs = torch.softmax(logits / self.tau, dim=-1)
            z_q = torch.einsum("gbtk,gkd->gbtd", probs, codes)  # (G, B, T, D)

            valid = None if mask is None else mask.reshape(b, blocks, per_block).transpose(0, 1)  # (G, B, T)
            entropy = self._entropy_term(logits, valid)
            local = probs.argmax(-1)  # (G, B, T)
            offsets = torch.arange(blocks, device=z.device).view(blocks, 1, 1) * self.block_size
            ids = (local + offsets).transpose(0, 1).reshape(b, n)
            z_q = z_q.transpose(0, 1).reshape(b, n, d)
            kept = ids if mask is None else ids[mask]
            counts = torch.bincount(kept.reshape(-1), minlength=self.codebook_size).float()
            max_prob = probs.max(-1).values
            max_prob = max_prob.mean() if valid is None else max_prob[valid].mean()

        if mask is not None:
            z_q = z_q * mask.unsqueeze(-1)
            ids = ids.masked_fill(~mask, -1)
        out_probs = probs.transpose(0, 1).reshape(b, n, self.block_size) if self.return_probs else None
        metrics = {**batch_usage_metrics(counts), "max_prob": torch.nan_to_num(max_prob.detach())}
        return QuantizerOutput(
            z_q=z_q.to(in_dtype),
            indices=ids,
            loss=self.entropy_weight * entropy,
            losses={"entropy": entropy.detach()},
            mask=mask,
            probs=out_probs,
            metrics=metrics,
        )

    def _entropy_term(self, logits: Tensor, valid: Tensor | None) -> Tensor:
        """Mean over blocks of (mean per-token entropy - entropy of the mean posterior)."""
        sharp = logits / self.entropy_temperature  # (G, B, T, Kb)
        log_p = torch.log_softmax(sharp, dim=-1)
        p = log_p.exp()
        if valid is None:
            weights = torch.ones(sharp.shape[:-1], device=sharp.device)
        else:
            weights = valid.float()
        count = weights.sum(dim=(1, 2)).clamp_min(1.0)  # (G,)
        token_entropy = -(p * log_p).sum(-1)  # (G, B, T)
        sample_entropy = (token_entropy * weights).sum(dim=(1, 2)) / count
        mean_p = (p * weights.unsqueeze(-1)).sum(dim=(1, 2)) / count.unsqueeze(-1)  # (G, Kb)
        batch_entropy = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum(-1)
        return (sample_entropy - batch_entropy).mean()
