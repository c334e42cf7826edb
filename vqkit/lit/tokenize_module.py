"""TokenizeModule: a trained tokenizer in Lightning's predict loop (``python -m vqkit.tokenize``).

``predict_step`` encodes one batch of a split (one shard's items, see ``vqkit.data.token_shards``) and returns
plain CPU tensors: ``ids`` (hard quantizers) or ``tokens`` (soft ones), ``index``, ``shard``, ``label`` when the
data has labels, ``num_tokens`` for variable-length tokens. The prediction writer turns them into shards.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from vqkit.data.transforms import AUGMENT_VIEWS, tokenize_views
from vqkit.models.base import TokenizerModel

TOKEN_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def id_dtype(codebook_size: int) -> torch.dtype:
    """The narrowest signed integer type that holds ids in [-1, codebook_size)."""
    return torch.int16 if codebook_size <= torch.iinfo(torch.int16).max else torch.int32


class TokenizeModule(L.LightningModule):
    """Encodes batches with a frozen tokenizer model.

    Args:
        tokenizer: an image or audio ``TokenizerModel`` (e.g. from ``vqkit.load_tokenizer``).
        augment: ``none`` | ``flip`` | ``tencrop`` (images; adds a views axis V after the batch axis).
        token_dtype: float type of continuous tokens (soft quantizers): float32, float16 or bfloat16.
    """

    def __init__(self, tokenizer: TokenizerModel, augment: str = "none", token_dtype: str = "float32") -> None:
        super().__init__()
        if augment not in AUGMENT_VIEWS:
            raise ValueError(f"augment must be one of {sorted(AUGMENT_VIEWS)}, got {augment!r}")
        if augment != "none" and tokenizer.modality != "image":
            raise ValueError(f"augment={augment} makes image crops and flips; this is a {tokenizer.modality} "
                             "tokenizer: use augment=none")
        if token_dtype not in TOKEN_DTYPES:
            raise ValueError(f"token_dtype must be one of {sorted(TOKEN_DTYPES)}, got {token_dtype!r}")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.augment = augment
        self.token_dtype = TOKEN_DTYPES[token_dtype]
        self.key = "tokens" if tokenizer.soft else "ids"
        self.variable = bool(getattr(tokenizer.quantizer, "variable_tokens", False))

    @property
    def views(self) -> int:
        return AUGMENT_VIEWS[self.augment]

    def train(self, mode: bool = True) -> TokenizeModule:
        """The tokenizer stays in eval mode (hard assignments, no codebook updates) whatever Lightning asks."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        key = self.tokenizer.data_key
        if key not in batch:
            raise KeyError(f"the batches have no {key!r} entry (keys: {sorted(batch)}): this data config does not "
                           f"match the {self.tokenizer.modality} tokenizer; pick a data= of its modality")
        data = batch[key]
        if self.augment != "none":
            views = tokenize_views(data.float(), self.augment)  # (B, V, 3, S, S)
            codes = self.tokenizer.encode(views.flatten(0, 1))
            codes = codes.reshape(data.shape[0], self.views, *codes.shape[1:])
        else:
            codes = self.tokenizer.encode(data)
        if codes.is_floating_point():
            codes = codes.to(self.token_dtype)
        else:
            codes = codes.to(id_dtype(self.tokenizer.codebook_size))
        out = {self.key: codes.cpu(), "index": batch["index"].cpu(), "shard": batch["shard"].cpu()}
        if "label" in batch:
            out["label"] = torch.as_tensor(batch["label"]).long().cpu()
        if self.variable:
            lead = 2 if self.augment != "none" else 1
            out["num_tokens"] = (codes >= 0).flatten(lead).sum(-1).to(torch.int32).cpu()
        return out
