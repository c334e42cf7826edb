"""A trained prior as a folder: ``prior.json`` (kind, sizes, the token folder's tokenizer) + ``prior.safetensors``.

Nothing is unpickled and only the prior classes of ``PRIORS`` can be built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from vqkit.files import write_atomically
from vqkit.prior.ar import ARPrior
from vqkit.prior.flow import FlowPrior

PRIORS: dict[str, type[nn.Module]] = {"ar": ARPrior, "flow": FlowPrior}
CONFIG = "prior.json"
WEIGHTS = "prior.safetensors"
FORMAT = "vqkit-prior"


def save_prior(prior: nn.Module, folder: str | os.PathLike, kind: str, options: dict[str, Any],
               info: dict[str, Any] | None = None) -> Path:
    """Write the prior's weights and config (both atomically); ``options`` are its constructor's arguments."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()}
    write_atomically(folder / WEIGHTS, save(tensors))
    config = {"format": FORMAT, "kind": kind, "options": options, **(info or {})}
    write_atomically(folder / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def load_prior(folder: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """-> (the prior in eval mode, its config).

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ValueError: not a vqkit prior, an unknown kind, or weights that do not fit.
    """
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: a prior folder is written by `python -m "
                                    "vqkit.train_prior` (<run>/prior)")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != FORMAT or config.get("kind") not in PRIORS:
        raise ValueError(f"{folder / CONFIG} is not a vqkit prior of a known kind ({sorted(PRIORS)})")
    prior = PRIORS[config["kind"]](**config["options"])
    try:
        prior.load_state_dict(load_file(folder / WEIGHTS, device="cpu"))
    except (SafetensorError, RuntimeError) as err:
        raise ValueError(f"{folder / WEIGHTS} does not fit {folder / CONFIG}: {err}") from None
    return prior.to(device).eval(), config
