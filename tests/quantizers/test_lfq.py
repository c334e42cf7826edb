"""LFQ and BSQ (vqkit/quantizers/lfq.py, bsq.py, binary_entropy.py): the entropy terms against a brute-force
M x K computation, low precision, the K = 2^18 memory bound, validation errors and residual stacking. The contract
itself is tests/quantizers/test_contract.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vqkit.quantizers import BinarySphericalQuantizer, LookupFreeQuantizer, build_quantizer


def latents(b: int, n: int, d: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def all_codes(bits: int, scale: float) -> torch.Tensor:
    """(2^bits, bits) every sign pattern, row k with coordinate i = +scale iff bit i of k is set."""
    k = torch.arange(2**bits).unsqueeze(-1)
    return torch.where((k >> torch.arange(bits)) & 1 == 1, scale, -scale).float()


def softmax_entropies(u: torch.Tensor, codes: torch.Tensor, temperature: float, eps: float):
    """Brute force over an (M, K) softmax of the distances: per-sample entropy, batch entropy, argmax ids."""
    logits = 2 * u @ codes.T / temperature  # (M, K)
    probs = logits.softmax(-1)
    per_sample = -(probs * logits.log_softmax(-1)).sum(-1).mean()
    mean = probs.mean(0)
    return per_sample, -(mean * torch.log(mean + eps)).sum(), logits.argmax(-1)


def brute_force(q: LookupFreeQuantizer, z: torch.Tensor, mask: torch.Tensor | None):
    """The loss and its parts of ``q`` on ``z``, from full M x K softmaxes (and the grouped sum for BSQ's groups)."""
    rows = z.float()[mask] if mask is not None else z.float().reshape(-1, q.dim)
    u = q.projection.to_code(rows)
    scale = 1.0
    if isinstance(q, BinarySphericalQuantizer):
        u, scale = F.normalize(u, dim=-1), 1 / math.sqrt(q.bits)
    codes = all_codes(q.bits, scale)
    per_sample, batch, ids = softmax_entropies(u, codes, q.temperature, q.entropy_eps)
    if q.group_bits is not None and q.group_bits < q.bits:  # BSQ's approximation: sum over groups of bits
        batch = sum(softmax_entropies(part, all_codes(part.shape[-1], scale), q.temperature, q.entropy_eps)[1]
                    for part in u.split(q.group_bits, dim=-1))
    commit = (u - torch.where(u > 0, scale, -scale)).pow(2).mean()
    penalty = per_sample - q.gamma * batch
    loss = q.commit_weight * commit + q.entropy_weight * penalty
    return loss, {"commit": commit, "per_sample_entropy": per_sample, "batch_entropy": batch, "entropy": penalty}, ids


CASES = [
    ("lfq", 8, {"temperature": 1.0}),
    ("lfq", 8, {}),  # Open-MAGVIT2's T = 0.01: near one-hot probabilities
    ("lfq", 12, {"temperature": 0.5}),  # a Linear 12 -> 8 bits
    ("bsq", 8, {"group_bits": None}),
    ("bsq", 8, {"group_bits": 4, "commit_weight": 0.25}),  # two groups: the grouped approximation
    ("bsq", 8, {"group_bits": 3}),  # groups of 3, 3 and 2 bits
    ("bsq", 8, {}),  # group_bits 9 >= 8 bits: one group, exact
]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("name", "dim", "options"), CASES)
def test_entropy_terms_match_brute_force(name, dim, options, masked):
    torch.manual_seed(0)
    q = build_quantizer(name, dim=dim, codebook_size=2**8, **options).train()
    z = latents(3, 40, dim, seed=1, scale=0.5).requires_grad_(True)
    mask = torch.rand(3, 40, generator=torch.Generator().manual_seed(2)) > 0.3 if masked else None
    out = q(z, mask)
    loss, parts, ids = brute_force(q, z, mask)
    for key, value in parts.items():
        torch.testing.assert_close(out.losses[key], value.detach(), atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    # the sign code is the nearest code, and the brute-force loss has the same gradient
    valid = out.indices[mask] if masked else out.indices.reshape(-1)
    assert torch.equal(valid, ids)
    (grad,) = torch.autograd.grad(out.loss, z)
    (expected,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_grouped_batch_entropy_bounds_the_exact_one():
    z = latents(4, 64, 8, seed=3)
    exact = build_quantizer("bsq", dim=8, codebook_size=2**8, group_bits=None)(z).losses["batch_entropy"]
    for group_bits in (1, 2, 4):
        grouped = build_quantizer("bsq", dim=8, codebook_size=2**8, group_bits=group_bits)(z).losses["batch_entropy"]
        assert grouped >= exact - 1e-6
    assert exact <= math.log(2**8)


@pytest.mark.parametrize("name", ["lfq", "bsq"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_finite_in_low_precision(name, dtype, scale):
    q = build_quantizer(name, dim=16, codebook_size=2**10).train()
    z = latents(2, 50, 16, seed=4, scale=scale).to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        out = q(z)
        (out.loss + out.z_q.float().sum()).backward()
    assert out.z_q.dtype == dtype and torch.isfinite(out.z_q).all()
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.losses.values())
    assert torch.isfinite(z.grad).all()
    ref = q(z.detach().float())  # the same values in fp32: the same ids and loss
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=1e-6)


class LargestAllocation(TorchDispatchMode):
    """Records the largest tensor any op returns, and the bytes of all of them (a bound on the peak memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.total = 0
        self.backward_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.backward_ops += "backward" in str(func)
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                size = tensor.numel() * tensor.element_size()
                self.largest = max(self.largest, size)
                self.total += size
        return out


@pytest.mark.parametrize(("name", "group_bits"), [("lfq", None), ("bsq", 9), ("bsq", None)])
def test_two_to_the_eighteen_codes_never_hold_tokens_times_codes(name, group_bits):
    """K = 2^18, 8 x 256 tokens: an M x K fp32 tensor would be 2 GiB; every tensor of forward + backward stays small."""
    torch.manual_seed(0)
    q = build_quantizer(name, dim=32, codebook_size=2**18, group_bits=group_bits).train()
    z = latents(8, 256, 32, seed=5).requires_grad_(True)
    tracker = LargestAllocation()
    with tracker:
        out = q(z)
        (out.loss + out.z_q.sum()).backward()
    assert tracker.backward_ops > 0  # the backward pass ran under the tracker too
    tokens_times_codes = 8 * 256 * 2**18 * 4
    assert tracker.largest <= 8 * 2**20, tracker.largest  # the largest: an (M, 2^9) product table, 4 MiB
    assert tracker.total < 512 * 2**20 < tokens_times_codes, tracker.total  # all allocations together
    assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert 0 < out.losses["batch_entropy"] <= 18 * math.log(2) + 1e-4


def test_bsq_codes_lie_on_the_unit_sphere():
    q = build_quantizer("bsq", dim=8, codebook_size=2**8).eval()
    out = q(latents(2, 30, 8, seed=6))
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(2, 30))
    torch.testing.assert_close(q.codebook.abs(), torch.full((256, 8), 8**-0.5))
    torch.testing.assert_close(q.decode(out.indices), out.z_q, atol=1e-6, rtol=0)


def test_ids_and_codes_are_a_bijection():
    q = build_quantizer("lfq", dim=10, codebook_size=2**10).eval()
    codebook = q.codebook  # (K, d) in {-1, 1}
    assert codebook.shape == (1024, 10) and torch.unique(codebook, dim=0).shape[0] == 1024
    out = q(codebook.unsqueeze(0))  # each code quantizes to itself, with its own id
    assert torch.equal(out.indices[0], torch.arange(1024)) and torch.equal(out.z_q[0], codebook)
    assert set(q.state_dict()) == set()  # no state: nothing differs across ranks


def test_validation_errors():
    with pytest.raises(ValueError, match=r"power of 2; got 1000 \(nearest: 512 or 1024\)"):
        LookupFreeQuantizer(dim=8, codebook_size=1000)
    with pytest.raises(ValueError, match="power of 2"):
        BinarySphericalQuantizer(dim=8, codebook_size=1)
    with pytest.raises(ValueError, match="group_bits must be a positive integer"):
        LookupFreeQuantizer(dim=8, codebook_size=2**8, group_bits=0)
    with pytest.raises(ValueError, match="temperature"):
        LookupFreeQuantizer(dim=8, codebook_size=2**8, temperature=0.0)
    with pytest.raises(ValueError, match="exact batch entropy over 2\\^26 codes is too large; set group_bits"):
        LookupFreeQuantizer(dim=8, codebook_size=2**26)
    assert LookupFreeQuantizer(dim=8, codebook_size=2**26, group_bits=13).bits == 26  # grouped: fine, nothing built


@pytest.mark.parametrize("name", ["lfq", "bsq"])
def test_residual_stages(name):
    rvq = build_quantizer("residual", dim=8, codebook_size=2**8, num_stages=2, stage_quantizer=name,
                          stage_options={"entropy_weight": 0.1}).train()
    z = latents(2, 16, 8, seed=7).requires_grad_(True)
    out = rvq(z)
    assert out.indices.shape == (2, 16, 2) and torch.isfinite(out.loss) and out.loss.requires_grad
    assert {"commit", "entropy", "per_sample_entropy", "batch_entropy"} <= set(out.losses)
    (out.loss + out.z_q.sum()).backward()
    assert z.grad.abs().sum() > 0
    rvq.eval()
    out = rvq(z.detach())
    torch.testing.assert_close(rvq.decode(out.indices), out.z_q, atol=1e-5, rtol=0)
    residual = z.detach() - rvq.stages[0].decode(out.indices[..., 0])
    assert torch.equal(out.indices[..., 1], rvq.stages[1].encode(residual))
