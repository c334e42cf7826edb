"""Learning-rate schedules as factories ``(optimizer, total_steps) -> LRScheduler``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1,
    warmup_start_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up from ``warmup_start_ratio`` (default 0) to the base LR, then cosine decay to
    ``min_lr_ratio`` x base LR.

    Args:
        optimizer: the optimizer whose groups' LRs are scaled.
        total_steps: optimizer steps in the run (Lightning's ``estimated_stepping_batches``).
        warmup_steps: steps of linear warm-up.
        min_lr_ratio: final LR as a fraction of the base LR.
        warmup_start_ratio: LR of the first warm-up step's start as a fraction of the base LR (timm's
            ``warmup_lr``; SoftVQ-VAE's run: 1e-5 / 1e-4 = 0.1).
    """
    if total_steps <= 0 or math.isinf(total_steps):
        raise ValueError(f"warmup_cosine needs a finite number of steps; set trainer.max_steps (got {total_steps})")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            if warmup_start_ratio:
                return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """No schedule (kept as a factory so configs can swap it in)."""
    return LambdaLR(optimizer, lambda step: 1.0)


def learning_annealing(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.01,
    warmup_start_ratio: float = 0.005,
    hold_fraction: float = 0.3,
) -> LambdaLR:
    """FVQ's "learning annealing": warm up from ``warmup_start_ratio`` x base LR, hold, then decay linearly.

    With P = total_steps - warmup_steps post-warm-up steps: linear warm-up from ``warmup_start_ratio``
    to 1.0 over ``warmup_steps``; 1.0 until ``hold_fraction`` x P steps after the warm-up; then a
    linear decay reaching ``min_lr_ratio`` at the last step (FVQ: 0.005, 0.3, 0.01).

    Args:
        optimizer: the optimizer whose groups' LRs are scaled.
        total_steps: optimizer steps in the run.
        warmup_steps: steps of warm-up.
        min_lr_ratio: final LR as a fraction of the base LR.
        warmup_start_ratio: LR factor at step 0.
        hold_fraction: fraction of the post-warm-up steps held at the base LR.
    """
    if total_steps <= 0 or math.isinf(total_steps):
        raise ValueError(
            f"learning_annealing needs a finite number of steps; set trainer.max_steps (got {total_steps})"
        )
    if not 0.0 <= hold_fraction <= 1.0:
        raise ValueError(f"hold_fraction must lie in [0, 1], got {hold_fraction}")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    post = max(total_steps - warmup_steps, 1)
    hold_end = hold_fraction * post
    decay_len = max(post - 1 - hold_end, 1e-12)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
        t = step - warmup_steps
        if t <= hold_end:
            return 1.0
        progress = min((t - hold_end) / decay_len, 1.0)
        return 1.0 + (min_lr_ratio - 1.0) * progress

    return LambdaLR(optimizer, factor)
