"""Masked tokens in and out: the valid positions of (B, N, D) latents as rows, and rows back onto the grid.

The implicit-codebook backends (FSQ, LFQ, BSQ) quantize only the positions a mask keeps, so that padding
never reaches their statistics or losses; these two helpers are that gather and its inverse.
"""

from __future__ import annotations

import torch
from torch import Tensor


def valid_rows(z: Tensor, mask: Tensor | None) -> Tensor:
    """(B, N, D) -> (M, D) fp32: every position when ``mask`` is None, else those where ``mask`` (B, N) is True."""
    z = z.float()
    return z[mask] if mask is not None else z.reshape(-1, z.shape[-1])


def scatter_rows(rows: Tensor, ids: Tensor, shape: torch.Size, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rows (M, D) and ids (M,) back to (B, N, D) and (B, N): zeros and id -1 at masked positions."""
    b, n, d = shape
    if mask is None:
        return rows.reshape(b, n, d), ids.reshape(b, n)
    out = rows.new_zeros(b, n, d).masked_scatter(mask.unsqueeze(-1), rows)
    full_ids = torch.full((b, n), -1, dtype=torch.long, device=ids.device)
    full_ids[mask] = ids
    return out, full_ids
