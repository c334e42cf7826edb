"""Check at the end of training that every rank holds the same parameters and buffers (codebooks included)."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import Tensor

log = logging.getLogger(__name__)


def fingerprint(tensor: Tensor) -> Tensor:
    """Three float64 numbers that differ, with near certainty, for any two different tensors of the same shape.

    Identical tensors give bit-identical fingerprints (same reduction on the same kind of device).
    """
    flat = tensor.detach().reshape(-1).double()
    ramp = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), flat.square().sum(), (flat * ramp).sum()])


class RankConsistencyCheck(L.Callback):
    """After ``fit``, all-gathers a fingerprint of every parameter and persistent buffer and compares the ranks.

    Data-parallel training keeps parameters in sync through gradient all-reduce, but state a module
    changes by itself (codebook k-means init, EMA statistics, dead-code revival) is synced only if
    the module does it; a rank that drifts trains a different model silently. This makes it loud.
    Single-process runs skip the check. Sharded (FSDP) parameters are compared as each rank holds them.

    Args:
        strict: raise on a mismatch (default); False only logs an error.
    """

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.checked: int | None = None

    @staticmethod
    def fingerprints(module: torch.nn.Module) -> tuple[list[str], Tensor]:
        """Names of the parameters and persistent buffers compared, and their fingerprints (T, 3) float64."""
        scratch = {  # non-persistent buffers are per-rank working memory by declaration (not checkpointed)
            f"{prefix}.{name}" if prefix else name
            for prefix, sub in module.named_modules()
            for name in sub._non_persistent_buffers_set
        }
        names, prints = [], []
        buffers = [(name, b) for name, b in module.named_buffers() if name not in scratch]
        for name, tensor in [*module.named_parameters(), *buffers]:
            if tensor.is_floating_point() or tensor.dtype in (torch.int64, torch.int32, torch.bool):
                names.append(name)
                prints.append(fingerprint(tensor))
        if not prints:
            return names, torch.zeros(0, 3, dtype=torch.float64)
        return names, torch.stack(prints)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        names, local = self.fingerprints(pl_module)
        gathered = trainer.strategy.all_gather(local)  # (world, T, 3)
        differ = [name for i, name in enumerate(names) if not bool((gathered[:, i] == gathered[0, i]).all())]
        self.checked = len(names)
        if differ:
            message = (
                f"ranks disagree on {len(differ)} of {len(names)} tensors after training: {differ[:10]}; "
                "a module changes state outside the gradient all-reduce without syncing it"
            )
            if self.strict:
                raise RuntimeError(message)
            log.error(message)
        elif trainer.is_global_zero:
            log.info("rank consistency: %d tensors identical on %d ranks", len(names), trainer.world_size)
