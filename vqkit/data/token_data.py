"""TokenDataModule: token folders of ``vqkit.tokenize`` as training data for a generative prior.

Batches are ``{"ids": (B, L) int64}`` (hard quantizers; an item's ids flattened in raster order, residual stages
innermost) or ``{"tokens": (B, L, D) float}`` (soft quantizers), plus ``"label": (B,)`` when the folder has
labels. Items with augmented views (``augment=flip|tencrop``) give a random view per training draw and the first
(unaugmented) view in validation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vqkit.data.token_shards import TokenShards
from vqkit.data.workers import check_num_workers, loader_options

log = logging.getLogger(__name__)


class PriorItems(Dataset):
    """Items ``indices`` of a token folder as flat sequences."""

    def __init__(self, shards: TokenShards, indices: Tensor, random_view: bool) -> None:
        self.shards = shards
        self.indices = indices
        self.random_view = random_view
        self.key = shards.manifest["key"]
        self.views = int(shards.manifest.get("views", 1))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = self.shards[int(self.indices[i])]
        x = item[self.key]
        if self.views > 1:
            x = x[int(torch.randint(self.views, ())) if self.random_view else 0]
        x = x.reshape(-1) if self.key == "ids" else x.reshape(-1, x.shape[-1])
        out = {self.key: x.long() if self.key == "ids" else x.float()}
        if "label" in item:
            out["label"] = item["label"].long()
        return out


class TokenDataModule(L.LightningDataModule):
    """A token folder, with a held-out part (``val_fraction``) or another folder (``val_tokens``) for validation.

    Args:
        tokens: the training token folder.
        val_tokens: a token folder of held-out items made by the same tokenizer (e.g. ``split=test``).
        val_fraction: without ``val_tokens``, the share of ``tokens`` held out (seeded).
        batch_size, num_workers: the loaders'.
        seed: the held-out draw.
    """

    modality = "tokens"

    def __init__(self, tokens: str, val_tokens: str | None = None, val_fraction: float = 0.05,
                 batch_size: int = 32, num_workers: int | str = 0, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.train_shards = TokenShards(tokens)
        self.val_shards = TokenShards(val_tokens) if val_tokens else self.train_shards
        manifest = self.train_shards.manifest
        if val_tokens and self.val_shards.manifest["tokenizer"]["digest"] != manifest["tokenizer"]["digest"]:
            raise ValueError(f"val_tokens={val_tokens} was made by another tokenizer than tokens={tokens}")
        if bool(manifest["tokenizer"].get("variable_tokens")):
            raise ValueError(f"{tokens} holds variable-length tokens (gq); the priors take fixed-length sequences")
        self.tokens, self.batch_size, self.num_workers = Path(tokens), batch_size, check_num_workers(num_workers)
        n = manifest["num_items"]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held = 0 if val_tokens else max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        self.train_indices = order[held:].sort().values if held else torch.arange(n)
        self.val_indices = (torch.arange(self.val_shards.manifest["num_items"]) if val_tokens
                            else order[:held].sort().values)
        if len(self.train_indices) == 0:
            raise ValueError(f"{tokens} has {n} items: none left for training after val_fraction={val_fraction}")

    @property
    def manifest(self) -> dict[str, Any]:
        return self.train_shards.manifest

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["codebook_size"])

    @property
    def token_dim(self) -> int:
        return int(self.manifest["tokenizer"]["token_dim"])

    @property
    def seq_len(self) -> int:
        shape = self.manifest["item_shape"][1:] if self.manifest.get("views", 1) > 1 else self.manifest["item_shape"]
        return math.prod(int(s) for s in (shape[:-1] if self.key == "tokens" else shape))

    def token_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and std (D,) of the training items' continuous tokens (soft quantizers)."""
        if self.key != "tokens":
            raise ValueError(f"{self.tokens} holds ids, not continuous tokens")
        tokens = self.train_shards.tensors["tokens"][self.train_indices].float()
        flat = tokens.reshape(-1, tokens.shape[-1])
        return flat.mean(0), flat.std(0)

    @property
    def num_classes(self) -> int:
        labels = self.train_shards.tensors.get("label")
        return int(labels.max()) + 1 if labels is not None else 0

    def train_dataloader(self) -> DataLoader:
        items = PriorItems(self.train_shards, self.train_indices, random_view=True)
        return DataLoader(items, batch_size=self.batch_size, shuffle=True, drop_last=len(items) >= self.batch_size,
                          **loader_options(self.num_workers))

    def val_dataloader(self) -> DataLoader:
        items = PriorItems(self.val_shards, self.val_indices, random_view=False)
        return DataLoader(items, batch_size=self.batch_size, shuffle=False, **loader_options(0))
