"""EmbeddedPhotosDataModule: crops of the photos inside the scikit-image wheel."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from vqkit.data import EmbeddedPhotosDataModule
from vqkit.data.photos import DEFAULT_TRAIN_PHOTOS, DEFAULT_VAL_PHOTOS, skimage_data_dir

CONF = Path(__file__).resolve().parents[2] / "conf" / "data" / "photos.yaml"
SMALL = {"image_size": 32, "batch_size": 8, "train_samples": 16, "val_samples": 8}


def train_batches(dm: EmbeddedPhotosDataModule | DataLoader) -> torch.Tensor:
    """One pass over a training loader (a new one from ``dm``): (train_samples, 3, S, S)."""
    loader = dm.train_dataloader() if isinstance(dm, EmbeddedPhotosDataModule) else dm
    return torch.cat([batch["image"] for batch in loader])


@pytest.fixture(scope="module")
def photos() -> EmbeddedPhotosDataModule:
    dm = EmbeddedPhotosDataModule(**SMALL)
    dm.setup("fit")
    return dm


def test_batches_have_the_contract_shape_dtype_and_range(photos: EmbeddedPhotosDataModule) -> None:
    assert photos.image_size == 32
    for loader in (photos.train_dataloader(), photos.val_dataloader(), photos.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image"}
        image = batch["image"]
        assert image.shape == (8, 3, 32, 32) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image.std() > 0.01  # real content, not a constant
    assert len(photos.train_dataloader()) == 2 and len(photos.val_dataloader()) == 1


def test_default_photos_exist_and_splits_are_disjoint() -> None:
    data_dir = skimage_data_dir()
    assert all((data_dir / name).is_file() for name in DEFAULT_TRAIN_PHOTOS + DEFAULT_VAL_PHOTOS)
    assert not set(DEFAULT_TRAIN_PHOTOS) & set(DEFAULT_VAL_PHOTOS)
    with pytest.raises(ValueError, match="chelsea.png"):
        EmbeddedPhotosDataModule(train_photos=["chelsea.png", "rocket.jpg"], val_photos=["chelsea.png"])
    with pytest.raises(ValueError, match="same scene"):
        EmbeddedPhotosDataModule(train_photos=["motorcycle_left.png"], val_photos=["motorcycle_right.png"])


def test_validation_is_identical_every_pass_and_for_any_seed(photos: EmbeddedPhotosDataModule) -> None:
    first = torch.cat([b["image"] for b in photos.val_dataloader()])
    second = torch.cat([b["image"] for b in photos.val_dataloader()])
    other_seed = EmbeddedPhotosDataModule(**SMALL, seed=7)
    other_seed.setup("validate")
    assert first.shape == (8, 3, 32, 32)
    assert torch.equal(first, second)
    assert torch.equal(first, torch.cat([b["image"] for b in other_seed.val_dataloader()]))


def test_training_crops_are_reproducible_given_the_seed() -> None:
    a, b, c = (EmbeddedPhotosDataModule(**SMALL, seed=s) for s in (3, 3, 4))
    loader = a.train_dataloader()
    epoch0 = train_batches(loader)
    assert torch.equal(epoch0, train_batches(b))
    assert not torch.equal(epoch0, train_batches(c))
    assert not torch.equal(epoch0, train_batches(loader))  # the next pass is a new epoch: fresh crops
    loader.sampler.set_epoch(0)  # what Lightning does each epoch (also after resuming)
    assert torch.equal(epoch0, train_batches(loader))


def test_training_crops_do_not_depend_on_num_workers() -> None:
    in_process = EmbeddedPhotosDataModule(**SMALL, seed=5)
    workers = EmbeddedPhotosDataModule(**SMALL, seed=5, num_workers=2)
    assert torch.equal(train_batches(in_process), train_batches(workers))


def test_missing_scikit_image_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    no_skimage = lambda name, *args: None if name == "skimage" else real_find_spec(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", no_skimage)
    with pytest.raises(ModuleNotFoundError, match=r"pip install scikit-image==0\.26\.0"):
        EmbeddedPhotosDataModule(**SMALL)


def test_missing_photo_file_is_named() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_photo.png.*scikit-image"):
        EmbeddedPhotosDataModule(**SMALL, train_photos=["no_such_photo.png"])


def test_yaml_instantiates_with_the_class_defaults() -> None:
    cfg = OmegaConf.load(CONF)
    dm = instantiate(cfg)
    assert isinstance(dm, EmbeddedPhotosDataModule) and dm.image_size == 48
    defaults = inspect.signature(EmbeddedPhotosDataModule).parameters
    for key, value in OmegaConf.to_container(cfg).items():
        if key != "_target_":
            expected = defaults[key].default
            assert value == (list(expected) if isinstance(expected, tuple) else expected), key
