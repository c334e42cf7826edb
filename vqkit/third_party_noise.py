"""The one place where vqkit silences messages of other libraries that it cannot fix at their cause.

Everything vqkit itself caused is fixed where it arises (see the README's reliability table); what is left here
comes from inside Lightning or torch, is harmless for vqkit's use, and would otherwise be printed on every run.
``silence_third_party_noise()`` is called by the command-line entry points (train, eval, export) and by the test
suite's conftest, so a run and the tests see the same filters. Each entry says where it comes from and why it
is safe to hide; nothing of vqkit's own is ever filtered here.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category, why it is harmless)
WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
     "lightning/pytorch/utilities/_pytree.py uses torch's old LeafSpec check; fixed upstream, no effect on results"),
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning,
     "Lightning counts modules in eval mode; vqkit keeps its frozen pretrained networks (LPIPS, REPA and feature-"
     "discriminator backbones) in eval mode on purpose, so that their dropout and norms do not change the loss"),
    (r"Checkpoint directory .* exists and is not empty", UserWarning,
     "vqkit's run folders are new per run (timestamped); one holds checkpoints already only under resume=, which "
     "continues the run in place on purpose (a new run never writes into an old folder)"),
    (r".*does not have many workers", UserWarning,
     "Lightning's advice to raise num_workers; vqkit's embedded datasets are in memory and default to 0 workers "
     "on purpose (data.num_workers raises it for folders on disk)"),
)

# (logger name, start of the message, why it is harmless)
LOG_MESSAGES: tuple[tuple[str, str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging",
     "an advertisement for a hosted logger printed whenever it is not installed"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip: For seamless cloud logging", "the same, through fabric"),
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def silence_third_party_noise() -> None:
    """Install the filters above (idempotent)."""
    for message, category, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    prefixes: dict[str, tuple[str, ...]] = {}
    for name, prefix, _why in LOG_MESSAGES:
        prefixes[name] = (*prefixes.get(name, ()), prefix)
    for name, starts in prefixes.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))
