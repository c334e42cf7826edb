"""Learning-rate schedules as factories ``(optimizer, total_steps) -> LRScheduler``."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warm-up from 0 to the base LR, then cosine decay to ``min_lr_ratio`` x base LR.

    Args:
        optimizer: the optimizer whose groups' LRs are scaled.
        total_steps: optimizer steps in the run (Lightning's ``estimated_stepping_batches``).
        warmup_steps: steps of linear warm-up.
        min_lr_ratio: final LR as a fraction of the base LR.
    """
    if total_steps <= 0 or math.isinf(total_steps):
        raise ValueError(f"warmup_cosine needs a finite number of steps; set trainer.max_steps (got {total_steps})")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """No schedule (kept as a factory so configs can swap it in)."""
    return LambdaLR(optimizer, lambda step: 1.0)
