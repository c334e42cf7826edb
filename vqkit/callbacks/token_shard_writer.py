"""Write the predictions of ``TokenizeModule`` as token shards, one atomic file per finished shard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from vqkit.data.token_shards import ShardPlan, write_shard


class TokenShardWriter(BasePredictionWriter):
    """Collects a shard's batches and writes the shard as soon as its last item arrives.

    Batches never straddle shards (``ShardBatches``), so at most one shard is held in memory; a run killed
    mid-shard loses only that shard's items, and the next run does it again.

    Args:
        folder: the token folder.
        plan: the shard plan (items per shard).
        digest: the settings' digest stored in every shard.
        item_path: item index -> its file (stored in the shard's metadata), or None when items have no file.
    """

    def __init__(self, folder: Path, plan: ShardPlan, digest: str,
                 item_path: Callable[[int], str] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.folder = folder
        self.plan = plan
        self.digest = digest
        self.item_path = item_path
        self.pending: dict[int, list[dict[str, Tensor]]] = {}
        self.written: list[int] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Tensor], batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        shards = prediction.pop("shard").unique().tolist()
        if len(shards) != 1:
            raise RuntimeError(f"a batch holds items of shards {shards}; batches must stay inside one shard")
        shard = shards[0]
        parts = self.pending.setdefault(shard, [])
        parts.append(prediction)
        count = sum(len(p["index"]) for p in parts)
        expected = len(self.plan.items(shard))
        if count < expected:
            return
        tensors = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        if not torch.equal(tensors["index"], torch.as_tensor(list(self.plan.items(shard)))):
            raise RuntimeError(f"shard {shard} received items {tensors['index'].tolist()[:8]}... instead of "
                               f"{self.plan.items(shard)}")
        paths = [self.item_path(i) for i in self.plan.items(shard)] if self.item_path is not None else None
        write_shard(self.folder, shard, tensors, self.digest, paths)
        del self.pending[shard]
        self.written.append(shard)
