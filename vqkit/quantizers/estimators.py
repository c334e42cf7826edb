"""Gradient estimators of the hard nearest-code step: how the decoder's gradient reaches the latents.

The forward value is always the chosen code; only the backward pass differs.

``ste`` (VQ-VAE): the straight-through estimator, the identity: dL/dz = dL/dq.

``rotation`` (the rotation trick, Fifty et al. 2024, arXiv 2410.06424, section 4.2): the code q is written as
``lambda * R z`` with R the rotation that turns z's direction u = z/|z| into q's direction v = q/|q| within
their common plane and lambda = |q| / |z| the rescale; R and lambda are treated as constants (detached), so
dL/dz = lambda * R^T dL/dq. R is applied in Householder form without a D x D matrix per vector:
``R x = x - 2 (w.x) w + 2 (u.x) v`` with w = (u + v) / |u + v|. Two cases have no such rotation and are made
safe: a latent or a code of (near) zero norm (no direction, or an infinite rescale) falls back to the identity
for that row, and an antipodal pair (v = -u, |u + v| = 0) uses the reflection ``x - 2 (u.x) u``, which also
maps u onto v. Everything runs in fp32, also under autocast.
"""

from __future__ import annotations

import torch
from torch import Tensor

ESTIMATORS = ("ste", "rotation")

# Norm below which a vector has no usable direction (the fallback to the identity).
_TINY_NORM = 1e-6
# |u + v| below which u and v count as antipodal; the rotation there is taken as the reflection about u.
# At |u + v| = s the fp32 error of w is ~1e-7 / s and the reflection's error ~s: they cross near 3e-4.
_ANTIPODAL = 3e-4


def check_estimator(name: str) -> str:
    """``name`` if it is a known estimator; a ValueError naming the choices otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(
            f"estimator must be one of {ESTIMATORS}, got {name!r}: 'ste' (straight-through, the identity gradient) "
            "or 'rotation' (the rotation trick, arXiv 2410.06424)"
        )
    return name


def straight_through(z: Tensor, codes: Tensor) -> Tensor:
    """Value ``codes``, gradient to ``z`` the identity; (M, C) both."""
    return z + (codes - z).detach()


def rotation_factors(z: Tensor, codes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The detached pieces of ``lambda * R`` for rows of ``z`` and ``codes`` (M, C), in fp32.

    Returns:
        u, v, w (M, C): the unit directions of z and of the code and the Householder axis (0 for antipodal rows,
        where R is the reflection about u); scale (M, 1): lambda = |q| / |z|; keep (M, 1) bool: rows where the
        rotation is defined (False rows use the identity).
    """
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        z, codes = z.float(), codes.float()
        z_norm = z.norm(dim=-1, keepdim=True)  # (M, 1)
        q_norm = codes.norm(dim=-1, keepdim=True)
        keep = (z_norm > _TINY_NORM) & (q_norm > _TINY_NORM)
        u = z / z_norm.clamp_min(_TINY_NORM)
        v = codes / q_norm.clamp_min(_TINY_NORM)
        s = u + v
        s_norm = s.norm(dim=-1, keepdim=True)
        w = torch.where(s_norm > _ANTIPODAL, s / s_norm.clamp_min(_ANTIPODAL), torch.zeros_like(s))
        # antipodal rows: R x = x - 2 (u.x) u, written in the same form with w = 0 and v replaced by -u
        v = torch.where(s_norm > _ANTIPODAL, v, -u)
        scale = q_norm / z_norm.clamp_min(_TINY_NORM)
    return u, v, w, scale, keep


def rotate(x: Tensor, u: Tensor, v: Tensor, w: Tensor) -> Tensor:
    """``R x`` row by row: x - 2 (w.x) w + 2 (u.x) v; (M, C) all, no (C, C) matrix."""
    return x - 2.0 * (x * w).sum(-1, keepdim=True) * w + 2.0 * (x * u).sum(-1, keepdim=True) * v


def rotation_trick(z: Tensor, codes: Tensor) -> Tensor:
    """Value: the straight-through value (bit for bit); gradient to ``z``: lambda * R^T dL/dq.

    Args:
        z: (M, C) latents in the searched space, with their graph.
        codes: (M, C) the codes they picked (no gradient flows to them here, as with ``ste``).

    Returns:
        (M, C) fp32.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        u, v, w, scale, keep = rotation_factors(z, codes)
        rotated = torch.where(keep, scale * rotate(z, u, v, w), z)  # (M, C), ~= codes, carries z's graph
        # adding (rotated - rotated) keeps the value exactly the straight-through one and the gradient rotated's
        return straight_through(z, codes.float()).detach() + (rotated - rotated.detach())


def estimate(name: str, z: Tensor, codes: Tensor) -> Tensor:
    """The decoder input of estimator ``name`` (``ESTIMATORS``) for latents ``z`` and their ``codes`` (M, C)."""
    if name == "rotation" and z.requires_grad:  # without a graph both are the same value: skip the rotation
        return rotation_trick(z, codes)
    return straight_through(z, codes)
