"""Make every training epoch a function of (seed, epoch), so a resumed run repeats the uninterrupted one exactly."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch


class ReproducibleEpochs(L.Callback):
    """At the start of training epoch ``e``: seed the global generators from ``(seed, e)`` and pin samplers to ``e``.

    Lightning restores weights, optimizer, scheduler and loop counters on resume, but two things
    still depend on the history of the process, and both make a resumed run diverge:

    - the global generators (dropout, k-means seeding, dead-code revival, DataLoader base seeds): a
      resumed run has drawn from them in a sanity check the uninterrupted one did not run. Seeding
      Python, NumPy and torch (all devices) from the run seed and the epoch number at each epoch
      start makes an epoch's draws independent of what came before.
    - the sampler epoch (shuffling, vqkit's per-epoch crops): lightning 2.6 passes ``set_epoch`` one
      more than ``trainer.current_epoch`` after resuming from an epoch-end checkpoint, so the resumed
      run would see the next epoch's data. The samplers are set to ``trainer.current_epoch`` again.

    With both, resuming from an epoch-end checkpoint (``last.ckpt`` of ``resume=``) reproduces the
    uninterrupted run (bit for bit with ``trainer.deterministic=true``; tests/test_resume.py). Every
    rank gets the same seed, as with ``seed_everything``.

    Args:
        seed: the run seed (``seed`` in the train config).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def epoch_seed(self, epoch: int) -> int:
        """The seed of ``epoch``: distinct per (seed, epoch), inside NumPy's 32-bit range."""
        return int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        seed = self.epoch_seed(epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also seeds every CUDA device
        loaders = trainer.fit_loop._combined_loader
        for loader in loaders.flattened if loaders is not None else []:
            _set_sampler_epoch(loader, epoch)
