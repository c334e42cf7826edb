"""A Lightning callback that times every training step and writes the durations to a JSON file.

Used by benchmarks/quantizer_zoo.py, which adds it to an otherwise unchanged ``vqkit.train`` run through the
override ``+callbacks.step_timer._target_=step_timer.StepTimer`` (this folder is on the child's ``sys.path``).
A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``: forward, losses, backward and the
optimizer step, without data loading, validation or checkpointing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from vqkit.files import write_atomically


class StepTimer(Callback):
    """Seconds of every training step, written to ``path`` as ``{"step_s": [...]}`` when training ends.

    Args:
        path: the JSON file (written atomically; its folder is created).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.step_s: list[float] = []
        self._start: float | None = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._start is not None:
            self.step_s.append(time.perf_counter() - self._start)
            self._start = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            write_atomically(self.path, json.dumps({"step_s": self.step_s}).encode())
