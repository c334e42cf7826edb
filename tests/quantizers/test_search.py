"""The tiled exact nearest-code search, cluster sums and k-means (vqkit/quantizers/search.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vqkit.quantizers.search import cluster_sums, kmeans, nearest_code

REPO_ROOT = Path(__file__).resolve().parents[2]


def _brute_force(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full (N, K) squared-distance matrix in float64."""
    d = torch.cdist(z.double(), codebook.double()).pow(2)
    best_d, best_i = d.min(dim=1)
    return best_i, best_d, d


# (N, K, D, code_chunk, row_chunk): tiles that divide, tiles that do not divide N or K,
# a tile larger than K, tiles of one row / one code, and K = 1.
SEARCH_CASES = [
    (64, 32, 4, 8, 16),
    (67, 29, 5, 8, 16),
    (50, 13, 3, 7, 9),
    (33, 5, 6, 1024, 1024),
    (20, 17, 2, 1, 1),
    (31, 40, 8, 64, 3),
    (9, 1, 4, 4, 4),
    (1, 7, 3, 2, 2),
]


@pytest.mark.parametrize(("n", "k", "d", "code_chunk", "row_chunk"), SEARCH_CASES)
def test_nearest_code_matches_brute_force(n, k, d, code_chunk, row_chunk):
    g = torch.Generator().manual_seed(n * 1000 + k)
    z = torch.randn(n, d, generator=g)
    codebook = torch.randn(k, d, generator=g)
    idx, dist = nearest_code(z, codebook, code_chunk=code_chunk, row_chunk=row_chunk)
    ref_i, ref_d, full = _brute_force(z, codebook)

    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert dist.dtype == torch.float32 and dist.shape == (n,)
    assert int(idx.min()) >= 0 and int(idx.max()) < k
    # The returned distance is the true squared distance to the returned code ...
    chosen = full.gather(1, idx.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(dist.double(), chosen, atol=1e-4, rtol=1e-4)
    # ... and that code is a nearest one (up to float rounding).
    torch.testing.assert_close(chosen, ref_d, atol=1e-4, rtol=1e-4)
    # Where the best code wins by a clear margin the index itself must match.
    if k > 1:
        two = full.topk(2, dim=1, largest=False).values
        unique = (two[:, 1] - two[:, 0]) > 1e-3
        assert unique.any()
        assert torch.equal(idx[unique], ref_i[unique])
    else:
        assert torch.equal(idx, torch.zeros(n, dtype=torch.long))


def test_nearest_code_best_code_in_later_tile_and_last_partial_tile():
    """The winner sits in the last, partial code tile: a search that drops the tail or
    forgets the tile offset returns a wrong index."""
    codebook = torch.arange(10, dtype=torch.float32).unsqueeze(1) * 10.0  # codes 0, 10, ..., 90
    z = torch.tensor([[91.0], [2.0], [48.0], [79.0]])
    idx, dist = nearest_code(z, codebook, code_chunk=4, row_chunk=3)
    assert idx.tolist() == [9, 0, 5, 8]
    torch.testing.assert_close(dist, torch.tensor([1.0, 4.0, 4.0, 1.0]))


def test_nearest_code_precomputed_norms_and_bad_shapes():
    g = torch.Generator().manual_seed(3)
    z, codebook = torch.randn(40, 6, generator=g), torch.randn(25, 6, generator=g)
    idx, dist = nearest_code(z, codebook, code_chunk=7, row_chunk=11)
    idx2, dist2 = nearest_code(z, codebook, code_chunk=7, row_chunk=11, codebook_sq_norms=codebook.pow(2).sum(1))
    assert torch.equal(idx, idx2)
    torch.testing.assert_close(dist, dist2)
    with pytest.raises(ValueError):
        nearest_code(z, codebook[:, :5])
    with pytest.raises(ValueError):
        nearest_code(z.unsqueeze(0), codebook)


def test_nearest_code_fp32_under_autocast_with_bf16_inputs():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(100, 8, generator=g).bfloat16()
    codebook = torch.randn(37, 8, generator=g).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        idx, dist = nearest_code(z, codebook, code_chunk=16, row_chunk=32)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    ref_idx, ref_dist = nearest_code(z.float(), codebook.float(), code_chunk=16, row_chunk=32)
    # Same values searched in fp32 -> the same answer; a bf16 matmul would differ.
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, atol=1e-5, rtol=1e-5)
    _, ref_d, full = _brute_force(z.float(), codebook.float())
    torch.testing.assert_close(dist.double(), full.gather(1, idx.unsqueeze(1)).squeeze(1), atol=1e-4, rtol=1e-4)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from vqkit.quantizers.search import nearest_code

    N, K, D = 4096, 65536, 8
    torch.set_num_threads(2)  # bounded thread pool, so its stacks/arenas fit in the cap on any machine
    torch.manual_seed(0)
    z = torch.randn(N, D)
    codebook = torch.randn(K, D)
    # warm up kernels, the thread pool and malloc arenas at the real tile size before capping
    nearest_code(z[:2048], codebook[:8192], code_chunk=4096, row_chunk=1024)

    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    headroom = 256 * 2**20  # the N x K fp32 matrix would need 1 GiB
    cap = vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))

    idx, dist = nearest_code(z, codebook, code_chunk=4096, row_chunk=1024)
    # spot-check a few rows against brute force on the full codebook
    rows = torch.arange(0, N, 512)
    ref = torch.cdist(z[rows], codebook).argmin(1)
    assert torch.equal(idx[rows], ref), (idx[rows], ref)
    print("SEARCH_OK", flush=True)

    # control: the cap really forbids the N x K matrix a naive search would build
    try:
        torch.empty(N, K)
    except (RuntimeError, MemoryError):
        print("FULL_MATRIX_REFUSED", flush=True)
    else:
        print("FULL_MATRIX_ALLOWED", flush=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_nearest_code_never_allocates_n_by_k():
    """N*K*4 bytes = 1 GiB; the search must succeed with only 256 MiB of address space to spare."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "SEARCH_OK" in proc.stdout, f"search failed under the memory cap:\n{proc.stdout}\n{proc.stderr}"
    assert "FULL_MATRIX_REFUSED" in proc.stdout, f"the memory cap is ineffective:\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr


def test_cluster_sums_equals_one_hot_sums():
    g = torch.Generator().manual_seed(5)
    k, x = 7, torch.randn(50, 3, generator=g, dtype=torch.float64)
    idx = torch.randint(0, k - 2, (50,), generator=g)  # the last two clusters stay empty
    counts, sums = cluster_sums(x, idx, k)
    one_hot = torch.nn.functional.one_hot(idx, k).double()  # (M, K)
    assert counts.shape == (k,) and sums.shape == (k, 3)
    assert counts.dtype == torch.float32 and sums.dtype == torch.float32
    torch.testing.assert_close(counts.double(), one_hot.sum(0))
    torch.testing.assert_close(sums.double(), one_hot.T @ x, atol=1e-5, rtol=1e-5)
    assert counts[-2:].eq(0).all() and sums[-2:].eq(0).all()


def _blobs(centres: torch.Tensor, per: int, std: float, g: torch.Generator) -> torch.Tensor:
    pts = centres.repeat_interleave(per, 0) + std * torch.randn(len(centres) * per, centres.shape[1], generator=g)
    return pts[torch.randperm(len(pts), generator=g)]


def test_kmeans_recovers_blob_centres():
    g = torch.Generator().manual_seed(6)
    centres = torch.tensor([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, -10.0]])
    x = _blobs(centres, 200, 0.3, g)
    # Lloyd's from random data points can merge two blobs for unlucky seeds; the seed is fixed.
    centroids, counts = kmeans(x, 4, iters=10, generator=torch.Generator().manual_seed(1))
    assert centroids.shape == (4, 3) and centroids.dtype == torch.float32
    d = torch.cdist(centres, centroids)  # (true, found)
    # every true centre has its own centroid, close to the blob mean
    assert torch.equal(d.argmin(1).sort().values, torch.arange(4))
    assert d.min(1).values.max() < 0.1
    torch.testing.assert_close(counts.sort().values, torch.full((4,), 200.0))


def test_kmeans_empty_clusters_keep_centroid_and_normalize():
    # 3 distinct points repeated, k = 5: duplicate starting centroids -> empty clusters
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, -3.0]]).repeat(4, 1)
    centroids, counts = kmeans(x, 5, iters=5, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(centroids).all()
    assert counts.sum() == len(x)
    # every centroid is one of the data points (empty ones kept their start value)
    assert (torch.cdist(centroids, x).min(1).values < 1e-6).all()

    g = torch.Generator().manual_seed(7)
    x = torch.randn(200, 4, generator=g) * 5
    centroids, _ = kmeans(x, 6, iters=5, normalize=True, generator=g)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(6))
