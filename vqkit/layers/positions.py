"""Fixed 2-D sine-cosine position tables, shared by the 1-D image tokenizer and the VQBridge."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_positions(grid: tuple[int, int], width: int, columns_first: bool = True) -> Tensor:
    """Fixed 2-D sine-cosine table (1, H * W, width) of a row-major H x W token grid.

    Half of the channels encode the column, half the row: columns first (the MAE / DiT layout) or rows
    first; each half is ``[sin(pos * f), cos(pos * f)]`` with ``f_k = 10000^(-k / (width / 4))``.
    """
    if width % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {width}")
    quarter = width // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    order = (cols, rows) if columns_first else (rows, cols)
    halves = []
    for pos in order:
        angles = pos.reshape(-1)[:, None] * freqs[None, :]
        halves += [angles.sin(), angles.cos()]
    return torch.cat(halves, dim=1).float().unsqueeze(0)
