"""torch.distributed helpers that keep codebook state identical on every rank.

All functions are no-ops in a single process, so quantizers call them unconditionally.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks in place (and return it)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0(tensor: Tensor) -> Tensor:
    """Overwrite ``tensor`` on every rank with rank 0's values (in place)."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def sample_rows(x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` rows of ``x`` (M, D) drawn on rank 0 and broadcast, so all ranks agree.

    Rows are drawn without replacement when ``M >= n`` and with replacement otherwise.
    Every rank must pass the same ``n`` and ``D``.
    """
    out = torch.empty(n, x.shape[1], device=x.device, dtype=x.dtype)
    if not is_distributed() or dist.get_rank() == 0:
        if x.shape[0] >= n:
            idx = torch.randperm(x.shape[0], device=x.device, generator=generator)[:n]
        else:
            idx = torch.randint(0, x.shape[0], (n,), device=x.device, generator=generator)
        out.copy_(x[idx])
    return broadcast_from_rank0(out)
