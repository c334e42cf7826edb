"""Run a function on 2 CPU processes joined by a gloo process group, and collect what each rank returned.

The distributed tests of quantizers all do the same: spawn the ranks, join them with a deadline (a hung
collective must fail the test, not CI), terminate stragglers, then compare the ranks' results. ``on_ranks``
does that once; the test supplies a module-level ``train(rank, *args) -> dict`` (picklable under spawn) and,
optionally, ``alone(*args) -> dict`` run on rank 0 after the group is gone: the same work without the other
rank, so a test can check that the other rank's data mattered.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out_dir: str, train: Callable[..., dict],
               alone: Callable[..., dict] | None, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        results = train(rank, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0 and alone is not None:
        assert not dist.is_initialized()
        results = {**results, "single": alone(*args)}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def on_ranks(train: Callable[..., dict], out_dir: Path, *args: Any, alone: Callable[..., dict] | None = None,
             world: int = 2, timeout_s: float = 180.0) -> list[dict]:
    """``train(rank, *args)`` on ``world`` spawned gloo ranks; returns each rank's result (rank 0's with the
    ``alone(*args)`` result under ``"single"`` when given). Fails the test when a rank fails or the ranks do
    not finish within ``timeout_s``."""
    ctx = mp.start_processes(_rank_main, args=(world, free_port(), str(out_dir), train, alone, args),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=2):  # raises if a rank failed
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {timeout_s:g} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(10)
    assert [p.exitcode for p in ctx.processes] == [0] * world
    return [torch.load(Path(out_dir) / f"rank{r}.pt") for r in range(world)]
