"""ImageFolderDataModule on a tiny ImageNet-layout tree."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from PIL import Image

from vqkit.data import ImageFolderDataModule

CONF = Path(__file__).resolve().parents[2] / "conf" / "data" / "imagenet.yaml"
LOGGER = "vqkit.data.image_folder"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{train,val}/{cat,dog}/: 3 train and 1 val images per class, JPEG and PNG."""
    root = tmp_path / "imagenet"
    for split, count in (("train", 3), ("val", 1)):
        for c, cls in enumerate(("cat", "dog")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                image = Image.new("RGB", (40 + 4 * i, 36), (120 * c, 40 * i, 200))
                image.save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


def at(path: Path) -> str:
    """``path`` as a regex literal."""
    return re.escape(str(path))


def write_corrupt(path: Path) -> str:
    path.write_bytes(os.urandom(300))
    return str(path)


def make(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), **{"image_size": 32, "batch_size": 2, "num_workers": 0, **kwargs})
    dm.setup()
    return dm


def test_batches_have_images_and_labels(tree: Path) -> None:
    dm = make(tree)
    assert dm.image_size == 32 and dm.classes == ["cat", "dog"] and dm.num_classes == 2
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
        assert batch["label"].shape == (2,) and batch["label"].dtype == torch.int64
    val_labels = torch.cat([b["label"] for b in dm.val_dataloader()])
    assert val_labels.tolist() == [0, 1]
    assert len(dm.test_dataloader().dataset) == 2  # test_split=None -> the val split


def test_missing_root_says_what_to_pass(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"data.root='{at(missing)}'.*data.root=/path/to/imagenet.*train/"):
        ImageFolderDataModule(str(missing))


def test_missing_split_folder_is_named(tree: Path) -> None:
    shutil.rmtree(tree / "val")
    with pytest.raises(FileNotFoundError, match=rf"{at(tree / 'val')}.*does not exist.*data.root="):
        ImageFolderDataModule(str(tree))


def test_split_without_images_is_reported(tree: Path) -> None:
    for image in (tree / "val").rglob("*.*"):
        image.unlink()
    with pytest.raises(ValueError, match=rf"no images .* in the class folders of {at(tree / 'val')}.*data.root="):
        make(tree)


def test_split_without_class_folders_is_reported(tree: Path) -> None:
    shutil.rmtree(tree / "val")
    (tree / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tree / "val" / "loose.png")
    with pytest.raises(ValueError, match=rf"{at(tree / 'val')} has no class sub-folders"):
        make(tree)


def test_corrupt_file_is_skipped_reported_and_counted(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = write_corrupt(tree / "train" / "cat" / "broken.jpg")
    dm = make(tree, batch_size=7, max_corrupt=1)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(2):  # two epochs: the file is reported once and never retried
        batches = list(dm.train_dataloader())
        assert len(batches) == 1 and batches[0]["image"].shape == (7, 3, 32, 32)  # the batch stays full
    reports = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(reports) == 1 and bad in reports[0] and "1 unreadable" in reports[0]
    assert dm.corrupt_files == {"train": [bad], "val": []}


def test_too_many_corrupt_files_stop_the_run(tree: Path) -> None:
    bad = [write_corrupt(tree / "train" / cls / "broken.jpg") for cls in ("cat", "dog")]
    dm = make(tree, batch_size=8, max_corrupt=1)
    with pytest.raises(RuntimeError, match="more than data.max_corrupt=1") as err:
        list(dm.train_dataloader())
    assert all(path in str(err.value) for path in bad)


def test_corrupt_files_with_worker_processes(tree: Path) -> None:
    bad = write_corrupt(tree / "train" / "dog" / "broken.jpg")
    dm = make(tree, batch_size=7, num_workers=2, max_corrupt=1)  # one batch: every file is visited
    images = torch.cat([b["image"] for b in dm.train_dataloader()])
    assert images.shape == (7, 3, 32, 32)
    assert dm.corrupt_files["train"] == [bad]  # marked in a worker, seen by the main process
    write_corrupt(tree / "train" / "cat" / "broken.jpg")
    batches = iter(make(tree, batch_size=2, num_workers=2, max_corrupt=1).train_dataloader())
    with pytest.raises(RuntimeError, match="more than data.max_corrupt=1"):
        list(batches)
    # torch's re-raise of a worker error leaves the iterator in a reference cycle; if the cyclic GC frees it,
    # its queues may be closed first and each worker is only killed after a 5 s join timeout. Stop them now.
    batches._shutdown_workers()


def test_yaml_requires_root_and_instantiates_with_it(tree: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONF)
    with pytest.raises(MissingMandatoryValue, match="root"):
        instantiate(cfg)
    cfg.root = str(tmp_path / "wrong")
    with pytest.raises(Exception, match="data.root=/path/to/imagenet"):
        instantiate(cfg)
    cfg.root = str(tree)
    dm = instantiate(cfg)
    assert isinstance(dm, ImageFolderDataModule) and dm.image_size == 256 and dm.num_workers == "auto"
