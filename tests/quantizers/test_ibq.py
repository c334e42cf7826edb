"""IBQ: the tiled softmax straight-through and entropy terms equal their dense formulas, every code gets a
gradient, K = 2^18 runs without an N x K tensor, and bf16 autocast gives the fp32 ids."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vqkit.quantizers import IBQuantizer, build_quantizer
from vqkit.quantizers.tiled_softmax import softmax_entropies

D, K = 8, 64


def latents(seed: int = 1, b: int = 4, n: int = 32, d: int = D) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def dense_ibq_loss(q: IBQuantizer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The official IndexPropagationQuantize forward with its configured losses, as one dense N x K computation."""
    z = z.reshape(-1, q.dim)
    e = q.embedding
    logits = z @ e.T
    soft = logits.softmax(1)
    hard = torch.zeros_like(logits).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
    z_q = (hard - soft.detach() + soft) @ e
    z_q2 = hard @ e
    parts = {"double_quant": F.mse_loss(z_q, z), "commit": F.mse_loss(z, z_q2.detach()),
             "codebook": F.mse_loss(z_q2, z.detach())}
    probs = (logits / q.entropy_temperature).softmax(1)
    log_probs = (logits / q.entropy_temperature).log_softmax(1)
    mean_probs = probs.mean(0)
    parts["sample_entropy"] = -(probs * log_probs).sum(1).mean()
    parts["avg_entropy"] = -(mean_probs * torch.log(mean_probs + 1e-5)).sum()
    loss = (parts["double_quant"] + parts["commit"] + 0.25 * parts["codebook"]
            + 0.05 * (parts["sample_entropy"] - parts["avg_entropy"]))
    return z_q, loss, parts


@pytest.mark.parametrize("chunks", [(7, 10), (64, 1024), (1, 3)])
def test_tiled_quantizer_equals_the_dense_formula_in_values_and_gradients(chunks):
    code_chunk, row_chunk = chunks
    torch.manual_seed(0)
    q = build_quantizer("ibq", dim=D, codebook_size=K, code_chunk=code_chunk, row_chunk=row_chunk).train()
    # latents at the scale of the codes' logits, so the softmax is neither one-hot nor flat
    z1 = (0.3 * latents()).requires_grad_(True)
    z2 = z1.detach().clone().requires_grad_(True)
    weights = latents(seed=2)
    out = q(z1)
    ref_zq, ref_loss, ref_parts = dense_ibq_loss(q, z2)
    torch.testing.assert_close(out.z_q.reshape(-1, D), ref_zq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, ref_loss, atol=1e-5, rtol=1e-5)
    for key, value in ref_parts.items():
        torch.testing.assert_close(out.losses[key], value.detach(), atol=1e-5, rtol=1e-5)
    (out.loss + (out.z_q * weights).sum()).backward()
    grad_tiled = q.embedding.grad.clone()
    q.embedding.grad = None
    (ref_loss + (ref_zq * weights.reshape(-1, D)).sum()).backward()
    torch.testing.assert_close(z1.grad, z2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_tiled, q.embedding.grad, atol=1e-5, rtol=1e-5)


def test_tiled_entropies_have_the_true_gradient_in_float64():
    """Finite differences (not for the straight-through: its gradient is by design not that of its value)."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(23, 5, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(41, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: softmax_entropies(a, b, 0.5, 1e-5, 6, 8), (z, e))


def test_every_code_gets_a_nonzero_gradient_from_one_batch():
    torch.manual_seed(0)
    q = build_quantizer("ibq", dim=D, codebook_size=512, entropy_weight=0.0).train()
    out = q(0.3 * latents(n=8))  # 32 tokens for 512 codes: at most 32 are selected
    assert int(out.metrics["used_codes"]) <= 32
    out.z_q.pow(2).sum().backward()  # the decoder's gradient alone, through z_q
    assert (q.embedding.grad.abs().sum(1) > 0).all()


def test_bf16_autocast_gives_the_fp32_ids():
    torch.manual_seed(0)
    q = build_quantizer("ibq", dim=D, codebook_size=K).train()
    z = latents(seed=7, n=500).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = q(z)
    ref = q(z.float())
    assert torch.equal(amp.indices, ref.indices)
    assert amp.z_q.dtype == torch.bfloat16 and torch.equal(amp.z_q, ref.z_q.to(torch.bfloat16))
    assert torch.equal(q.encode(z), ref.indices)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="entropy_temperature"):
        build_quantizer("ibq", dim=D, codebook_size=K, entropy_temperature=0.0)
    with pytest.raises(ValueError, match="code_chunk"):
        build_quantizer("ibq", dim=D, codebook_size=K, code_chunk=0)
    with pytest.raises(ValueError, match="commit_weight"):
        build_quantizer("ibq", dim=D, codebook_size=K, commit_weight=-1.0)


def test_residual_stages_of_ibq_train():
    torch.manual_seed(0)
    q = build_quantizer("residual", dim=D, codebook_size=K, num_stages=2, stage_quantizer="ibq").train()
    z = latents().requires_grad_(True)
    out = q(z)
    assert out.indices.shape == (4, 32, 2)
    (out.loss + out.z_q.pow(2).sum()).backward()
    assert z.grad.abs().sum() > 0 and all((s.embedding.grad.abs().sum(1) > 0).all() for s in q.stages)
    q.eval()
    torch.testing.assert_close(q.decode(q.encode(z.detach())), q(z.detach()).z_q, atol=1e-6, rtol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_largest_tensor_records_an_n_by_k_matrix():
    """The probe of the test below sees a dense N x K matrix when there is one."""
    z, e = torch.randn(64, D), torch.randn(256, D, requires_grad=True)
    with LargestTensor() as probe:
        (z @ e.T).softmax(1)
    assert probe.largest == 64 * 256
    loss = (z @ e.T).softmax(1).pow(2).sum()
    with LargestTensor() as backward_probe:  # the backward pass is seen too
        loss.backward()
    assert backward_probe.largest == 64 * 256


def test_262144_codes_run_forward_and_backward_without_an_n_by_k_tensor():
    k, n_tokens, row_chunk, code_chunk = 2**18, 8 * 256, 1024, 1024
    torch.manual_seed(0)
    q = build_quantizer("ibq", dim=D, codebook_size=k, row_chunk=row_chunk, code_chunk=code_chunk).train()
    z = (0.3 * latents(b=8, n=256)).requires_grad_(True)
    start = time.perf_counter()
    with LargestTensor() as probe:
        out = q(z)
        (out.loss + out.z_q.pow(2).mean()).backward()
    seconds = time.perf_counter() - start
    # the tiles (row_chunk x code_chunk) and the (K, D) codebook and its gradient; N x K would be 2048 x 2^18
    bound = max(row_chunk * code_chunk, k * D)
    assert probe.largest <= bound, (probe.largest, bound)
    assert probe.largest * 64 < n_tokens * k
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert (q.embedding.grad.abs().sum(1) > 0).float().mean() > 0.99
    print(f"K=2^18, {n_tokens} tokens, D={D}: forward+backward {seconds:.1f} s, largest tensor {probe.largest}")
