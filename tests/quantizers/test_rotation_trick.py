"""The rotation trick (``estimator="rotation"``, vqkit/quantizers/estimators.py) of every hard nearest-code backend.

Backends are the registered classes that subclass ``VectorQuantizer`` (the one hard forward), so new ones
(simvq, ...) are covered as they are registered.
"""

from __future__ import annotations

import pytest
import torch

import vqkit.quantizers  # noqa: F401  (registers the backends)
from vqkit.quantizers import VectorQuantizer, build_quantizer, list_quantizers
from vqkit.quantizers.estimators import rotation_trick
from vqkit.quantizers.registry import quantizer_class

D, K, B, N = 6, 16, 2, 7
HARD = [name for name in list_quantizers() if issubclass(quantizer_class(name), VectorQuantizer)]


def dense_rotation_gradient(z: torch.Tensor, codes: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dz = lambda R^T dL/dq with R built as a full (C, C) matrix per row (the paper's eq. for R)."""
    rows = []
    eye = torch.eye(z.shape[1], dtype=torch.float64)
    for zi, qi, gi in zip(z.double(), codes.double(), grad_out.double(), strict=True):
        u, v = zi / zi.norm(), qi / qi.norm()
        w = (u + v) / (u + v).norm()
        r = eye - 2 * torch.outer(w, w) + 2 * torch.outer(v, u)
        assert torch.allclose(r @ u, v, atol=1e-10)  # R turns z's direction into the code's
        assert torch.allclose(r.T @ r, eye, atol=1e-10)  # and is a rotation
        rows.append(qi.norm() / zi.norm() * (r.T @ gi))
    return torch.stack(rows)


def make(name: str, estimator: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_quantizer(name, dim=D, codebook_size=K, estimator=estimator)


def latents(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))


def test_unknown_estimator_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"estimator must be one of \('ste', 'rotation'\), got 'rotate'"):
        build_quantizer("vq", dim=D, codebook_size=K, estimator="rotate")


def test_gradient_equals_the_dense_rotation_formula():
    """Plain codes (no projection, no normalisation): z_code is z, so dL/dz is lambda R^T dL/dq exactly."""
    q = make("vq", "rotation").train()
    z = latents().requires_grad_(True)
    out = q(z)
    g = torch.randn(B, N, D, generator=torch.Generator().manual_seed(2))
    (out.z_q * g).sum().backward()
    codes = q.codebook.detach()[out.indices.reshape(-1)]
    expected = dense_rotation_gradient(z.detach().reshape(-1, D), codes, g.reshape(-1, D))
    torch.testing.assert_close(z.grad.reshape(-1, D).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", HARD)
def test_every_hard_backend_same_value_other_gradient(name):
    """Forward value bit-identical to ste (training and eval); the gradient to z differs; loss unchanged."""
    ste, rot = make(name, "ste"), make(name, "rotation")
    with torch.no_grad():  # off the initial state: zero-initialised generators (vqbridge) give all-zero codes
        for p in ste.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    rot.load_state_dict(ste.state_dict())
    g = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3))
    grads, outs = [], []
    for q in (ste, rot):
        q.train()
        z = latents().requires_grad_(True)
        out = q(z)
        (out.z_q * g).sum().backward()
        grads.append(z.grad)
        outs.append(out)
    assert torch.equal(outs[0].indices, outs[1].indices)
    assert torch.equal(outs[0].z_q, outs[1].z_q)
    assert torch.equal(outs[0].loss, outs[1].loss)
    assert torch.isfinite(grads[1]).all()
    assert (grads[0] - grads[1]).abs().max() > 1e-3  # ste passes g unchanged (or through project_in only)
    # the same training step left the same state (the estimator only changes the backward pass)
    for key, value in ste.state_dict().items():
        assert torch.equal(value, rot.state_dict()[key]), key
    ste.eval(), rot.eval()
    z = latents(seed=4)
    assert torch.equal(ste(z).z_q, rot(z).z_q)


def test_zero_and_antipodal_vectors_give_finite_gradients():
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, -1.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    codes = torch.tensor([[0.5, 0.5, 0.0], [-2.0, -4.0, 2.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = rotation_trick(z, codes)
    assert torch.equal(out, z.detach() + (codes - z.detach()))
    g = torch.tensor([[1.0, -2.0, 3.0]]).expand(4, 3)
    (out * g).sum().backward()
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad[0], g[0])  # zero latent: no direction, identity (ste)
    torch.testing.assert_close(z.grad[2], g[2])  # zero code: no direction, identity (ste)
    # antipodal: the reflection about u maps z onto the code's direction; scale |q|/|z| = 2
    u = z.detach()[1] / z.detach()[1].norm()
    reflection = torch.eye(3) - 2 * torch.outer(u, u)
    torch.testing.assert_close(z.grad[1], 2.0 * reflection.T @ g[1])
    torch.testing.assert_close(z.grad[3], g[3])  # z is its code: R = I, scale 1


def test_bf16_autocast_keeps_the_rotation_in_fp32():
    q = make("vq", "rotation").train()
    z = latents().to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
        out.z_q.float().sum().backward()
    assert out.z_q.dtype == torch.bfloat16 and torch.isfinite(z.grad.float()).all() and z.grad.abs().sum() > 0
