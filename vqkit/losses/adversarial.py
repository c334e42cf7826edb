"""Adversarial losses for VQGAN-style tokenizers: D and G losses, LeCAM, consistency, adaptive weight."""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

GanLoss = Literal["hinge", "non_saturating"]
GAN_LOSSES: tuple[str, ...] = ("hinge", "non_saturating")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; expected one of {GAN_LOSSES}")


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor, kind: GanLoss = "hinge") -> Tensor:
    """Discriminator loss, averaged over real and fake logits.

    ``hinge``: ``(mean(relu(1 - real)) + mean(relu(1 + fake))) / 2``; zero once every real
    logit is >= 1 and every fake one <= -1. ``non_saturating``: the logistic loss
    ``(mean(softplus(-real)) + mean(softplus(fake))) / 2``.

    Args:
        logits_real: discriminator logits on data, any shape.
        logits_fake: discriminator logits on reconstructions, any shape.
        kind: ``"hinge"`` or ``"non_saturating"``.
    """
    _check_kind(kind)
    logits_real, logits_fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_loss(logits_fake: Tensor, kind: GanLoss = "hinge") -> Tensor:
    """Generator loss on the discriminator's logits for reconstructions.

    ``hinge``: ``-mean(fake)`` (as in VQGAN); ``non_saturating``: ``mean(softplus(-fake))``.
    """
    _check_kind(kind)
    logits_fake = logits_fake.float()
    return -logits_fake.mean() if kind == "hinge" else F.softplus(-logits_fake).mean()


def consistency_loss(logits: Tensor, logits_augmented: Tensor) -> Tensor:
    """Consistency regularisation of a discriminator: ``mean((logits - logits_augmented) ** 2)``.

    bCR (Zhao et al., "Improved consistency regularization for GANs", 2021) on real and fake inputs
    together: the discriminator should give an image and a strongly augmented copy the same logits.
    Neither side is detached.
    """
    if logits.shape != logits_augmented.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and augmented logits {tuple(logits_augmented.shape)} differ")
    return F.mse_loss(logits.float(), logits_augmented.float())


def lecam_penalty(logits_real: Tensor, logits_fake: Tensor, anchor_real: Tensor, anchor_fake: Tensor) -> Tensor:
    """LeCAM regulariser (Tseng et al., 2021) in the one-sided form of the authors' code.

    ``mean(relu(real - anchor_fake) ** 2) + mean(relu(anchor_real - fake) ** 2)``: real
    logits are pulled down toward the running mean of fake logits and fake logits up
    toward the running mean of real ones, only where they overshoot them.

    Args:
        logits_real: logits on data.
        logits_fake: logits on reconstructions.
        anchor_real: running mean of past real logits (scalar).
        anchor_fake: running mean of past fake logits (scalar).
    """
    logits_real, logits_fake = logits_real.float(), logits_fake.float()
    return F.relu(logits_real - anchor_fake).pow(2).mean() + F.relu(anchor_real - logits_fake).pow(2).mean()


class LeCAMRegularizer(nn.Module):
    """LeCAM penalty with exponential moving averages of the mean real and fake logits.

    In training mode each call first folds the batch means (averaged over processes
    under ``torch.distributed``, so every rank keeps the same anchors) into the EMAs,
    then returns :func:`lecam_penalty` against the updated EMAs. The EMAs are buffers:
    they are saved in checkpoints.

    Args:
        decay: EMA decay per call.
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCAM EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """Fold the batch means of the logits into the EMAs."""
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(means)
            means /= dist.get_world_size()
        self.ema_real.lerp_(means[0], 1.0 - self.decay)
        self.ema_fake.lerp_(means[1], 1.0 - self.decay)

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        if self.training:
            self.update(logits_real, logits_fake)
        return lecam_penalty(logits_real, logits_fake, self.ema_real, self.ema_fake)


def adaptive_generator_weight(
    nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor, eps: float = 1e-4, max_weight: float = 1e4
) -> Tensor:
    """VQGAN's balance between the reconstruction and the adversarial gradient.

    ``||d nll / d W|| / (||d g_loss / d W|| + eps)`` for the decoder's last weight ``W``,
    clamped to ``[0, max_weight]`` and detached. Both graphs are kept for the backward
    pass that follows; parameter ``.grad`` fields are not touched.

    Args:
        nll_loss: the reconstruction (+ perceptual) loss.
        g_loss: the generator's adversarial loss.
        last_layer: the decoder's output weight; both losses must depend on it.
        eps: added to the adversarial gradient norm.
        max_weight: upper clamp.
    """
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    weight = nll_grad.float().norm() / (g_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
