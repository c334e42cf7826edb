"""Codebook files: a (K, F) fp32 tensor under the key ``codebook`` in a safetensors file, plus metadata.

Written by ``python -m vqkit.tools.codebook`` and read by the ``vqgan_lc`` and ``vqbridge`` quantizers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor

from vqkit.files import write_atomically

CODEBOOK_KEY = "codebook"
BUILD_HINT = (
    "build one with `python -m vqkit.tools.codebook --out PATH --num-codes K` (see `python -m vqkit.tools.codebook -h`)"
)


def save_codebook(path: str | Path, codebook: Tensor, metadata: dict[str, object] | None = None) -> Path:
    """Write ``codebook`` (K, F) as fp32 with string metadata (non-strings are JSON-encoded), atomically."""
    if codebook.dim() != 2 or not codebook.is_floating_point():
        raise ValueError(f"a codebook is a (K, F) float tensor, got {codebook.dtype} {tuple(codebook.shape)}")
    if not torch.isfinite(codebook).all():
        raise ValueError("refusing to save a codebook with NaN/Inf entries")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta.update(num_codes=str(codebook.shape[0]), feature_dim=str(codebook.shape[1]))
    data = save({CODEBOOK_KEY: codebook.detach().float().contiguous().cpu()}, metadata=meta)
    return write_atomically(path, data)  # atomic, mode 0666 & ~umask (safetensors' save_file makes 0600)


def load_codebook(path: str | Path, expected_size: int | None = None) -> tuple[Tensor, dict[str, str]]:
    """Read a codebook file; returns the (K, F) fp32 tensor and its metadata.

    Raises:
        FileNotFoundError: no such file (the message says how to build one).
        ValueError: not a safetensors file, no ``codebook`` entry, wrong shape, wrong K, NaN/Inf.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codebook file {path} does not exist; {BUILD_HINT}, or point codebook_path at it")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            metadata = dict(f.metadata() or {})
            if CODEBOOK_KEY not in keys:
                raise ValueError(
                    f"{path} holds no {CODEBOOK_KEY!r} tensor (keys: {sorted(keys)}); it is not a vqkit codebook file"
                )
            codebook = f.get_tensor(CODEBOOK_KEY)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors codebook (truncated or corrupt?): {err}; "
                         f"{BUILD_HINT}") from err
    if codebook.dim() != 2 or not codebook.is_floating_point():
        raise ValueError(f"{path}: the codebook must be a (K, F) float tensor, got {codebook.dtype} "
                         f"{tuple(codebook.shape)}")
    if expected_size is not None and codebook.shape[0] != expected_size:
        raise ValueError(
            f"{path} holds {codebook.shape[0]} codes but codebook_size={expected_size}; set "
            f"quantizer.codebook_size={codebook.shape[0]} or rebuild the file with --num-codes {expected_size}"
        )
    if not torch.isfinite(codebook).all():
        raise ValueError(f"{path}: the codebook holds NaN/Inf entries; rebuild it")
    return codebook.float(), metadata
