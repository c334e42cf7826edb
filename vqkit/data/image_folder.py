"""ImageNet-layout folders (``data=imagenet``): ``root/<split>/<class>/<image>``.

Any tree with one sub-folder per class under ``train/`` and ``val/`` works (ImageNet-1k after the
usual ``valprep.sh`` reorganisation of val, Imagenette, your own photos). Files are found with
torchvision's ``make_dataset`` (extensions ``.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp``,
case-insensitive); class indices come from the sorted class folders of the train split and are
reused for val/test, so labels agree across splits even when a val folder lacks a class.
Batches are ``{"image": (B, 3, S, S) float32 in [0, 1], "label": (B,) int64}``.

Transforms: train = ``RandomResizedCrop(S, scale=(min_crop_area, 1))`` + horizontal flip;
val/test = resize the short side to S + center crop.

Files are read with ``vqkit.modalities.image_files.load_rgb``, the loader the image tokenizer uses: every
PIL mode (16-bit scaled by its range, transparency composited on white) and EXIF orientation.

Unreadable images (skip, replace, report, count; no start-up scan): checking 1.28M files before the
first step would take many minutes, and ImageNet has almost no bad files, so files are only decoded
when they are loaded. A file PIL cannot decode, or whose mode or value range ``load_rgb`` refuses, is

* reported by path through ``logging`` (logger ``vqkit.data.image_folder``), once per file;
* marked in a per-split flag tensor held in shared memory, so every DataLoader worker (fork or
  spawn) and the main process see the same marks, the file is never retried, and the count is of
  distinct files across workers and epochs (``ImageFolderDataModule.corrupt_files`` lists them);
* replaced by the next readable file of the split (index + 1, wrapping), with that file's label,
  so batches stay full and validation stays deterministic.

When a split has more than ``max_corrupt`` unreadable files, loading raises a RuntimeError listing
all of their paths (from a worker, the DataLoader re-raises it in the main process), which stops the
run. No locks or queues are involved, so nothing can deadlock with ``num_workers`` = 0 or > 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from vqkit.data.transforms import eval_transform, train_transform
from vqkit.data.workers import check_num_workers, loader_options
from vqkit.modalities.image_files import load_rgb

log = logging.getLogger(__name__)

# UnidentifiedImageError and truncated files are OSErrors; some broken headers raise ValueError/SyntaxError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
HOW_TO = (
    "Pass data.root=/path/to/imagenet, a folder containing train/ and val/ with one sub-folder of images per class "
    "(e.g. train/n01440764/*.JPEG)."
)


class ImageFolderSplit(Dataset):
    """One split: ``samples[i] = (path, label)`` -> ``{"image": (3, S, S), "label": int}``.

    Unreadable files are skipped, reported and counted as described in the module docstring.

    Args:
        split_dir: the split folder (for messages).
        samples: (path, class index) pairs.
        transform: PIL image -> float tensor (3, S, S).
        max_corrupt: number of unreadable files tolerated in this split.
    """

    def __init__(
        self,
        split_dir: Path,
        samples: list[tuple[str, int]],
        transform: Callable[[Image.Image], Tensor],
        max_corrupt: int,
    ) -> None:
        self.split_dir = split_dir
        self.samples = samples
        self.transform = transform
        self.max_corrupt = max_corrupt
        # One flag per file, in shared memory so that marks made in DataLoader workers are seen everywhere.
        self.corrupt = torch.zeros(len(samples), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def corrupt_files(self) -> list[str]:
        """Paths of the files found unreadable so far, in any process."""
        return [self.samples[i][0] for i in self.corrupt.nonzero().flatten().tolist()]

    def item_path(self, index: int) -> str:
        """The file of item ``index``, relative to the split folder."""
        return Path(self.samples[index][0]).relative_to(self.split_dir).as_posix()

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        n = len(self.samples)
        for offset in range(n):
            i = (index + offset) % n
            if self.corrupt[i]:
                continue
            path, label = self.samples[i]
            try:
                image = load_rgb(path)  # every PIL mode and EXIF orientation; fully decoded
            except DECODE_ERRORS as err:
                self._mark_corrupt(i, err)
                continue
            return {"image": self.transform(image), "label": label}
        raise RuntimeError(f"none of the {n} images under {self.split_dir} can be decoded")

    def _mark_corrupt(self, i: int, err: Exception) -> None:
        self.corrupt[i] = True
        count = int(self.corrupt.sum())
        log.warning(
            "skipping unreadable image %s (%s: %s); replaced by the next file. %d unreadable in %s so far "
            "(data.max_corrupt=%d)",
            self.samples[i][0],
            type(err).__name__,
            err,
            count,
            self.split_dir,
            self.max_corrupt,
        )
        if count > self.max_corrupt:
            raise RuntimeError(
                f"{count} unreadable images under {self.split_dir}, more than data.max_corrupt={self.max_corrupt}. "
                "Delete or re-download them, or raise data.max_corrupt. Files:\n" + "\n".join(self.corrupt_files)
            )


class ImageFolderDataModule(L.LightningDataModule):
    """Labelled images from an ImageNet-layout folder (see module docstring).

    Args:
        root: folder holding the split folders.
        image_size: side S of the square images.
        batch_size: batch size of every split.
        num_workers: DataLoader worker processes per split, or ``auto`` (the cores this process may use minus one,
            at most 8; ``vqkit.data.workers``).
        train_split: training split folder under ``root``.
        val_split: validation split folder under ``root``.
        test_split: test split folder; None reuses the validation split.
        min_crop_area: smallest RandomResizedCrop area fraction for training (1.0: whole images).
        max_corrupt: unreadable files tolerated per split before the run stops.
    """

    modality = "image"  # vqkit.train refuses a model of another modality (TokenizerModel.modality)

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 32,
        num_workers: int | str = "auto",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        min_crop_area: float = 0.35,
        max_corrupt: int = 100,
    ) -> None:
        super().__init__()
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"data.image_size and data.batch_size must be >= 1, got {image_size}, {batch_size}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={root!r} is not a directory. {HOW_TO}")
        for key, split in [("train_split", train_split), ("val_split", val_split), ("test_split", test_split)]:
            if split is not None and not (self.root / split).is_dir():
                found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
                raise FileNotFoundError(
                    f"split folder {self.root / split} (data.{key}={split!r}) does not exist; {self.root} contains "
                    f"folders {found}. {HOW_TO}"
                )
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = check_num_workers(num_workers)
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.min_crop_area = min_crop_area
        self.max_corrupt = max_corrupt
        self.classes: list[str] = []
        self.class_to_idx: dict[str, int] = {}
        self._train: ImageFolderSplit | None = None
        self._val: ImageFolderSplit | None = None
        self._test: ImageFolderSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def corrupt_files(self) -> dict[str, list[str]]:
        """Unreadable files found so far, per split folder name."""
        splits = {self.train_split: self._train, self.val_split: self._val, self.test_split: self._test}
        return {name: ds.corrupt_files for name, ds in splits.items() if name is not None and ds is not None}

    def setup(self, stage: str | None = None) -> None:
        """Index the split folders needed by ``stage`` ("fit", "validate", "test"; None: all)."""
        if not self.classes:
            self.classes = _class_folders(self.root / self.train_split)
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        if stage in ("fit", None) and self._train is None:
            self._train = self._split(self.train_split, train_transform(self.image_size, self.min_crop_area))
        needs_val = stage in ("fit", "validate", None) or (stage == "test" and self.test_split is None)
        if needs_val and self._val is None:
            self._val = self._split(self.val_split, eval_transform(self.image_size))
        if stage in ("test", None) and self._test is None:
            test_split = self.test_split
            self._test = self._val if test_split is None else self._split(test_split, eval_transform(self.image_size))

    def _split(self, split: str, transform: Callable[[Image.Image], Tensor]) -> ImageFolderSplit:
        split_dir = self.root / split
        present = _class_folders(split_dir)
        unknown = sorted(set(present) - set(self.classes))
        if unknown:
            raise ValueError(
                f"{split_dir} has class folders that are not in {self.root / self.train_split}: {unknown[:10]}; "
                "every split must use the training split's classes."
            )
        class_to_idx = {name: self.class_to_idx[name] for name in present}
        samples = make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise ValueError(
                f"no images ({' '.join(IMG_EXTENSIONS)}) found in the class folders of {split_dir}. {HOW_TO}"
            )
        return ImageFolderSplit(split_dir, samples, transform, self.max_corrupt)

    def _loader(self, dataset: ImageFolderSplit, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            # Full training batches only, unless the split is smaller than one batch.
            drop_last=train and len(dataset) >= self.batch_size,
            **loader_options(self.num_workers),
        )

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            self.setup("fit")
        return self._loader(self._train, train=True)

    def val_dataloader(self) -> DataLoader:
        if self._val is None:
            self.setup("validate")
        return self._loader(self._val, train=False)

    def test_dataloader(self) -> DataLoader:
        if self._test is None:
            self.setup("test")
        return self._loader(self._test, train=False)

    def tokenize_dataset(self, split: str) -> ImageFolderSplit:
        """The items ``vqkit.tokenize`` encodes: every image of the split, center-cropped (training files too: no
        random crops, so a resumed run encodes the same pixels; ``augment=tencrop`` adds crops and flips)."""
        folders = {"train": self.train_split, "val": self.val_split, "test": self.test_split or self.val_split}
        if split not in folders:
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if not self.classes:
            self.setup("validate")
        return self._split(folders[split], eval_transform(self.image_size))


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``split_dir``; a ValueError if there are none."""
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir} has no class sub-folders; expected {split_dir}/<class>/<image>. {HOW_TO}")
    return classes
