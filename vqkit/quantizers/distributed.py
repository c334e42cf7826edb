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
    """``n`` rows drawn from the union of every rank's ``x`` (M_r, D); all ranks get the same rows.

    Each output row comes from rank r with probability M_r / sum(M): a seed broadcast from
    rank 0 decides how many rows each rank contributes, each rank draws its share from its
    own rows, and the shares are all-gathered. Rows are drawn without replacement where a
    rank has enough of them. Every rank must call this with the same ``n`` and ``D``.
    ``generator`` (CPU) makes single-process draws reproducible.

    Raises:
        ValueError: when no rank has any row.
    """
    device, dim = x.device, x.shape[1]
    if not is_distributed():
        if x.shape[0] == 0:
            raise ValueError("cannot sample codebook vectors from an empty batch")
        return _draw(x, n, generator)
    world = dist.get_world_size()
    sizes = torch.zeros(world, dtype=torch.long, device=device)
    sizes[dist.get_rank()] = x.shape[0]
    all_reduce_sum(sizes)
    if int(sizes.sum()) == 0:
        raise ValueError("cannot sample codebook vectors: every rank has an empty batch")
    seed = broadcast_from_rank0(torch.randint(0, 2**62, (1,), device=device))
    generator = torch.Generator().manual_seed(int(seed))
    source = torch.multinomial(sizes.float().cpu(), n, replacement=True, generator=generator)
    shares = torch.bincount(source, minlength=world)  # rows each rank contributes
    width = int(shares.max())
    mine = int(shares[dist.get_rank()])
    local = torch.zeros(width, dim, device=device, dtype=x.dtype)
    if mine:
        local[:mine] = _draw(x, mine)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    rows = torch.cat([g[: int(k)] for g, k in zip(gathered, shares, strict=True)])
    return rows[torch.randperm(n, generator=generator).to(device)]


def _draw(x: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` rows of ``x``: without replacement when there are enough, with replacement otherwise."""
    if x.shape[0] >= n:
        idx = torch.randperm(x.shape[0], generator=generator)[:n]
    else:
        idx = torch.randint(0, x.shape[0], (n,), generator=generator)
    return x[idx.to(x.device)]
