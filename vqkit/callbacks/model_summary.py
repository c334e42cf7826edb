"""The parameter summary printed when training starts, without Lightning's FLOPs column.

Lightning counts FLOPs by running the module on ``example_input_array``; vqkit's modules define none (a forward
on a made-up batch would move k-means initialisation, EMA statistics and revival reservoirs), so Lightning's
summary shows a column of zeros and ``Total FLOPs: 0``. This one lists what is known: each top-level child with
parameters, then the totals, frozen buffers (a VQGAN-LC feature codebook) included.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.utilities.model_summary import get_human_readable_count

log = logging.getLogger("vqkit.train")


def _count(number: int) -> str:
    return get_human_readable_count(number).strip()  # "628 K"


def summary_lines(module: L.LightningModule) -> list[str]:
    """One line per top-level child that holds parameters or buffers, then one line of totals."""
    rows = []
    for name, child in module.named_children():
        params = sum(p.numel() for p in child.parameters())
        trainable = sum(p.numel() for p in child.parameters() if p.requires_grad)
        buffers = sum(b.numel() for b in child.buffers())
        if params or buffers:
            rows.append((name, type(child).__name__, _count(trainable), _count(params - trainable), _count(buffers)))
    header = ("module", "type", "trainable", "frozen", "buffers")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    size_mb = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / 2**20
    lines.append(f"{_count(trainable)} trainable of {_count(total)} parameters, "
                 f"{size_mb:.1f} MiB with buffers")
    return lines


class ParameterSummary(L.Callback):
    """Logs :func:`summary_lines` on the main process at the start of fit.

    vqkit's trainer configs set ``enable_model_summary: false`` so that Lightning's own table is not printed too
    (a ModelSummary subclass would make Lightning announce that it skips its default one).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("model:\n%s", "\n".join(summary_lines(pl_module)))
