"""Pre-tokenized datasets: the shard format ``python -m vqkit.tokenize`` writes and a generative prior reads.

A token folder holds ``shard-00000.safetensors``, ``shard-00001.safetensors``, ... and ``manifest.json``.
Shard ``s`` holds the items ``[s * shard_size, (s + 1) * shard_size)`` of the split, in order:

- ``ids`` (n, ...) int16/int32 (hard quantizers; -1 inside a variable-length token) or ``tokens`` (n, ..., D)
  float (soft quantizers); with augmented views an axis V after n (``augment=flip``: 2, ``tencrop``: 10);
- ``index`` (n,) int64: the item's index in the split (checked on resume and when read: no gaps, no duplicates);
- ``label`` (n,) int64 when the data has labels; ``num_tokens`` (n[, V]) int32 for variable-length tokens;
- safetensors metadata: ``plan`` (digest of the settings that made it) and ``paths`` (JSON list) when known.

Why safetensors shards rather than LitData / WebDataset: token ids are small, fixed-shape tensors that a prior
reads whole into memory; safetensors is already vqkit's weights format (no pickle, memory-mappable, one file per
shard written atomically), so a shard is either complete or absent and needs no extra dependency. Streaming
formats pay off for large raw images and audio, not for ids.

``ShardPlan`` assigns shards to ranks (rank r writes shards r, r + W, ...), ``finished_shards`` finds those a
killed run completed, ``write_shard`` / ``write_manifest`` write atomically, ``load_tokens`` / ``TokenShards``
read a finished folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from vqkit.data.workers import loader_options
from vqkit.files import write_atomically

log = logging.getLogger(__name__)

FORMAT = "vqkit-tokens"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def shard_name(shard: int) -> str:
    """File name of shard ``shard``."""
    return f"shard-{shard:05d}.safetensors"


def plan_digest(settings: Mapping[str, Any]) -> str:
    """A short digest of the settings that determine a folder's tokens (tokenizer, data, split, shard size...)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of ``paths`` (an artifact's files), read in 1 MiB blocks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """How ``num_items`` items are cut into shards of ``shard_size`` and dealt to ranks."""

    num_items: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"the split has no items ({self.num_items}); there is nothing to tokenize")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_items / self.shard_size)

    def items(self, shard: int) -> range:
        """Item indices of ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_items))

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        """The shards rank ``rank`` of ``world_size`` writes: every shard exactly once over the ranks."""
        return list(range(rank, self.num_shards, world_size))


def _shard_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    return metadata, shapes


def finished_shards(folder: Path, plan: ShardPlan, digest: str, shards: Sequence[int] | None = None) -> set[int]:
    """The shards of ``plan`` (or of ``shards``) already complete in ``folder``.

    A shard counts when its file opens, holds as many items as the plan gives it and was made by the same
    settings (``digest``). An unreadable shard (a disk error, a copy cut short) is reported and done again.

    Raises:
        ValueError: a shard was written by other settings: the folder belongs to another run.
    """
    done: set[int] = set()
    for shard in range(plan.num_shards) if shards is None else shards:
        path = folder / shard_name(shard)
        if not path.exists():
            continue
        try:
            metadata, shapes = _shard_header(path)
        except (SafetensorError, OSError) as err:
            log.warning("shard %s is unreadable (%s); it will be written again", path, err)
            continue
        if metadata.get("plan") != digest:
            raise ValueError(
                f"{path} was written by other settings (plan {metadata.get('plan')!r}, this run {digest!r}: another "
                "tokenizer, data config, split, shard_size, augment or dtype); pass another out= folder, or the "
                "settings of that run to resume it"
            )
        if shapes.get("index", (None,))[0] == len(plan.items(shard)):
            done.add(shard)
        else:
            log.warning("shard %s holds %s items, not %d; it will be written again", path,
                        shapes.get("index"), len(plan.items(shard)))
    return done


def write_shard(folder: Path, shard: int, tensors: Mapping[str, Tensor], digest: str,
                paths: Sequence[str] | None = None) -> Path:
    """Write one shard atomically (a killed write leaves no file under the shard's name)."""
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "plan": digest}
    if paths is not None:
        metadata["paths"] = json.dumps(list(paths))
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    return write_atomically(folder / shard_name(shard), data)


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` atomically."""
    return write_atomically(folder / MANIFEST, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode())


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a finished token folder.

    Raises:
        FileNotFoundError: no such folder or no manifest (a run that has not finished: run it again to resume).
        ValueError: not a vqkit token manifest, or an unknown format version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"token folder {folder} does not exist; write one with `python -m vqkit.tokenize`")
    path = folder / MANIFEST
    if not path.exists():
        shards = sorted(folder.glob("shard-*.safetensors"))
        hint = (f"it holds {len(shards)} shards of an unfinished run: run the same `python -m vqkit.tokenize` "
                "command again to finish it") if shards else "write one with `python -m vqkit.tokenize`"
        raise FileNotFoundError(f"{folder} has no {MANIFEST}; {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run `python -m vqkit.tokenize` again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vqkit token manifest (format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {manifest.get('format_version')!r}; this vqkit reads "
                         f"{FORMAT_VERSION}")
    return manifest


def load_tokens(folder: str | Path) -> dict[str, Any]:
    """Every tensor of a finished token folder, concatenated in item order, plus ``paths`` and ``manifest``.

    Raises:
        FileNotFoundError / ValueError: as ``read_manifest``; a shard missing, unreadable, or items out of order.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts: dict[str, list[Tensor]] = {}
    paths: list[str] = []
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                for key in f.keys():
                    parts.setdefault(key, []).append(f.get_tensor(key))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"shard {path} of {folder} is missing or unreadable ({err}); run `python -m "
                             "vqkit.tokenize` again with the same settings to rewrite it") from None
        if metadata.get("plan") != manifest["plan"]:
            raise ValueError(f"shard {path} was written by other settings than {folder / MANIFEST} says")
        paths += json.loads(metadata.get("paths", "[]"))
    tensors = {key: torch.cat(chunks) for key, chunks in parts.items()}
    if not torch.equal(tensors["index"], torch.arange(manifest["num_items"])):
        raise ValueError(f"the shards of {folder} do not hold items 0..{manifest['num_items'] - 1} once each, in "
                         "order; run `python -m vqkit.tokenize` again into an empty folder")
    return {**tensors, "paths": paths, "manifest": manifest}


class TokenShards(Dataset):
    """A finished token folder as a dataset: item ``i`` -> ``{"ids" | "tokens", "label"?, "num_tokens"?}``."""

    def __init__(self, folder: str | Path) -> None:
        loaded = load_tokens(folder)
        self.manifest: dict[str, Any] = loaded.pop("manifest")
        self.paths: list[str] = loaded.pop("paths")
        loaded.pop("index")
        self.tensors: dict[str, Tensor] = loaded

    def __len__(self) -> int:
        return self.manifest["num_items"]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: t[index] for key, t in self.tensors.items()}


def split_dataset(datamodule: Any, split: str) -> Any:
    """The items of ``split``: the data module's ``tokenize_dataset`` (no random crops), else its loader's dataset."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if hasattr(datamodule, "tokenize_dataset"):
        return datamodule.tokenize_dataset(split)
    log.warning("%s has no tokenize_dataset(split): encoding the dataset of its %s loader as it is (random "
                "augmentations included)", type(datamodule).__name__, split)
    if hasattr(datamodule, "setup"):
        datamodule.setup(None)
    return getattr(datamodule, f"{split}_dataloader")().dataset


class IndexedItems(Dataset):
    """A split's dataset with each item's index and shard added: ``{..., "index": i, "shard": s}``."""

    def __init__(self, dataset: Dataset, shard_size: int) -> None:
        self.dataset = dataset
        self.shard_size = shard_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(f"{type(self.dataset).__name__} items must be dicts such as {{'image': tensor}}, got "
                            f"{type(item).__name__}")
        return {**item, "index": index, "shard": index // self.shard_size}


class ShardBatches(Sampler[list[int]]):
    """Batches of item indices, each inside one shard, over ``shards`` in order (a shard's last batch may be short)."""

    def __init__(self, plan: ShardPlan, shards: Sequence[int], batch_size: int) -> None:
        self.plan = plan
        self.shards = list(shards)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for shard in self.shards:
            items = self.plan.items(shard)
            for start in range(0, len(items), self.batch_size):
                yield list(items[start:start + self.batch_size])

    def __len__(self) -> int:
        return sum(math.ceil(len(self.plan.items(s)) / self.batch_size) for s in self.shards)


class ShardedSplit(L.LightningDataModule):
    """The predict data of ``vqkit.tokenize``: this rank's unfinished shards of one split, in shard-sized batches.

    The rank and world size are read from the trainer when the loader is made (after DDP has started), so every
    shard is done by exactly one rank and finished shards are skipped; no sampler pads or repeats items.
    """

    def __init__(self, dataset: Dataset, plan: ShardPlan, folder: Path, digest: str, batch_size: int,
                 num_workers: int | str = 0) -> None:
        super().__init__()
        self.dataset = IndexedItems(dataset, plan.shard_size)
        self.plan = plan
        self.folder = folder
        self.digest = digest
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.todo: list[int] = []

    def predict_dataloader(self) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        mine = self.plan.shards_of_rank(rank, world)
        done = finished_shards(self.folder, self.plan, self.digest, mine)
        self.todo = [s for s in mine if s not in done]
        log.info("rank %d of %d: %d shards to write (%d of its %d already written)", rank, world, len(self.todo),
                 len(done), len(mine))
        sampler = ShardBatches(self.plan, self.todo, self.batch_size)
        return DataLoader(self.dataset, batch_sampler=sampler, **loader_options(self.num_workers))
