"""Save a PNG of how often each code was used over the last validation split."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from PIL import Image, ImageDraw


def usage_plot(counts: torch.Tensor, title: str, width: int = 640, height: int = 240) -> Image.Image:
    """Codes sorted by count (x) against log10(1 + count) (y), with the dead codes shaded."""
    counts = counts.double().sort(descending=True).values
    k = counts.numel()
    top = math.log10(1.0 + float(counts[0])) if k else 1.0
    margin_l, margin_b, margin_t = 8, 8, 22
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    plot_w, plot_h = width - 2 * margin_l, height - margin_b - margin_t
    for x in range(plot_w):
        lo, hi = x * k // plot_w, max((x + 1) * k // plot_w, x * k // plot_w + 1)
        value = float(counts[lo:hi].mean()) if k else 0.0
        y = int(plot_h * math.log10(1.0 + value) / max(top, 1e-9))
        colour = (60, 110, 200) if value > 0 else (230, 120, 110)
        if value == 0:
            draw.line([(margin_l + x, margin_t), (margin_l + x, margin_t + plot_h)], fill=(250, 225, 220))
        draw.line([(margin_l + x, margin_t + plot_h), (margin_l + x, margin_t + plot_h - y)], fill=colour)
    used = int((counts > 0).sum())
    draw.text((margin_l, 4), f"{title}: {used}/{k} codes used, sorted by count (log scale); red = dead", fill="black")
    return img


class CodebookUsagePlot(L.Callback):
    """Writes ``<dirpath>/usage_step<step>.png`` and ``usage_latest.png`` after each validation.

    Reads the all-process counts that the module's ``val_usage`` metric kept from its
    last ``compute()``.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        usage = getattr(pl_module, "val_usage", None)
        if usage is None or usage.last_counts is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        counts = usage.last_counts  # (K,), or (S, K): one panel per stage of a residual quantizer
        if counts.dim() == 1:
            img = usage_plot(counts, f"step {trainer.global_step}")
        else:
            panels = [usage_plot(c, f"step {trainer.global_step} stage {k}", height=140) for k, c in enumerate(counts)]
            img = Image.new("RGB", (panels[0].width, sum(p.height for p in panels)), "white")
            for k, panel in enumerate(panels):
                img.paste(panel, (0, k * panel.height))
        path = self.dirpath / f"usage_step{trainer.global_step:06d}.png"
        img.save(path)
        img.save(self.dirpath / "usage_latest.png")
