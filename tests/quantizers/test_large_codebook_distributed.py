"""vqgan_lc and vqbridge under data parallelism (gloo, 2 CPU processes): identical parameters on every rank.

Both generate their codebook from parameters, so DDP's gradient averaging is all they need; the test
runs DDP-style steps (gradients all-reduced and averaged) on different data per rank and checks every
piece of state is bit-identical across ranks and differs from a single-process run on rank 0's data.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vqkit.quantizers import build_quantizer

WORLD, D, STEPS, TIMEOUT_S = 2, 4, 3, 180
KINDS = {
    "vqgan_lc": {"codebook_size": 64, "feature_dim": 6},
    "vqbridge": {"codebook_size": 64, "width": 16, "num_heads": 2, "depth": 1},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(kind: str, rank: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    q = build_quantizer(kind, dim=D, **KINDS[kind]).train()
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    world = dist.get_world_size() if dist.is_initialized() else 1
    g = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        out = q(torch.randn(2, 16, D, generator=g) + (2.0 if rank else -2.0))
        opt.zero_grad()
        out.loss.backward()
        for p in q.parameters():
            if p.grad is not None and world > 1:
                dist.all_reduce(p.grad)
                p.grad /= world
        opt.step()
    state = {k: v.detach().clone() for k, v in q.state_dict().items()}
    state["__codebook__"] = q.codebook.detach().clone()
    return state


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        results = {kind: _train(kind, rank) for kind in KINDS}
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        results["single"] = {kind: _train(kind, 0) for kind in KINDS}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_generated_codebooks_stay_identical_across_ranks(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(10)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for kind in KINDS:
        a, b, single = r0[kind], r1[kind], r0["single"][kind]
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind}: {key} differs between ranks"
        assert not torch.allclose(a["__codebook__"], single["__codebook__"])  # rank 1's data mattered
        if kind == "vqgan_lc":
            assert torch.equal(a["features"], single["features"])  # the frozen codebook never moves
