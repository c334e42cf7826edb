"""A tokenizer's identity: one digest of its config and weights, stored with saved codes and checked on decode.

Codes are only meaningful to the model that made them: decoding them with another tokenizer (another
training run, a re-export after more steps, another codebook) gives garbage without an error. The digest
tells them apart: sha256 over the model's config subtree (canonical JSON) and every tensor of its state
dict (name, dtype, shape, bytes), so it is the same for a model and its artifact, on any device, and
changes with any weight.
"""

from __future__ import annotations

import hashlib
import json

import torch

from vqkit.models.base import TokenizerModel


def model_digest(model: TokenizerModel) -> str:
    """``"sha256:<64 hex>"`` of the model's config and weights (reads every weight once: compute it once per use)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model.config, sort_keys=True, separators=(",", ":")).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"\0{name}\0{data.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"
