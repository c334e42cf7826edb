"""The default dataset: random crops of the colour photographs shipped inside the scikit-image wheel.

Nothing is downloaded: the photos are files in the installed ``skimage/data`` folder (the wheel
pinned in requirements.txt, scikit-image 0.26.0), read by path with PIL. The licence facts below
come from the docstrings of ``skimage/data/_fetchers.py`` in that wheel (``skimage/data/README.txt``
only says the folder holds a subset of the scikit-image data and how to download the rest).

Train photos (default ``train_photos``):

=====================  ==========  ===============================================================
file                   size (WxH)  content, source and licence
=====================  ==========  ===============================================================
astronaut.png          512x512     astronaut Eileen Collins, NASA Great Images; "no known copyright
                                   restrictions, released into the public domain"
rocket.jpg             640x427     Falcon 9 / DSCOVR launch, SpaceX Photos; released into the
                                   public domain by SpaceX
hubble_deep_field.jpg  1000x872    Hubble eXtreme Deep Field, NASA / HubbleSite; "may be freely
                                   used in the public domain"
retina.jpg             1411x1411   fundus photograph of a normal left eye, Wikimedia Commons
                                   (M. Haggstrom); CC0 1.0
ihc.png                512x512     immunohistochemistry micrograph of colonic glands, CMMI;
                                   "no known copyright restrictions"
=====================  ==========  ===============================================================

Validation photos (default ``val_photos``; the test split is the validation split):

=====================  ==========  ===============================================================
chelsea.png            451x300     Chelsea the cat; CC0 by the photographer (Stefan van der Walt)
coffee.png             600x400     coffee cup, Pikolo Espresso Bar; CC0 by the photographer
                                   (Rachel Michetti)
=====================  ==========  ===============================================================

Not used by default: ``motorcycle_left.png`` / ``motorcycle_right.png`` (741x500, a rectified
stereo pair of one scene from the Middlebury 2014 stereo benchmark, Scharstein et al.; the wheel
states no licence for them, only the citation) can be added to ``train_photos`` or ``val_photos``,
but both must go to the same side (they are the same scene). ``color.png`` (a synthetic colour
wheel), ``chessboard_RGB.png``, ``logo.png`` and ``horse.png`` (graphics) are not photographs; the
other files are greyscale.

Sampling: every photo is resized once so its short side is ``short_side`` pixels and kept in memory
as uint8. A training sample is a square crop whose side is a log-uniform fraction in
``[min_crop_scale, max_crop_scale]`` of the photo's short side, at a uniform position in a uniformly
chosen photo, optionally flipped left-right, and resized (antialiased) to ``image_size``. Sample
``key`` of the dataset is drawn from ``numpy.random.default_rng([seed, key])``, and the sampler
hands out keys ``epoch * train_samples + i``: crops are fresh every epoch, identical for a given
``seed`` and epoch whatever ``num_workers`` is, and a resumed run reproduces them (Lightning calls
``set_epoch``). Validation is ``val_samples`` crops (no flip) spread round-robin over the validation
photos, drawn once from a fixed seed that does not depend on ``seed``, so runs with different seeds
are evaluated on the same images.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as TF

from vqkit.data.workers import check_num_workers, loader_options
from vqkit.modalities.image_files import load_rgb

SKIMAGE_REQUIREMENT = "scikit-image==0.26.0"
DEFAULT_TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
DEFAULT_VAL_PHOTOS = ("chelsea.png", "coffee.png")
# Files showing the same scene: they must not be split between train and validation.
SAME_SCENE_GROUPS = (frozenset({"motorcycle_left.png", "motorcycle_right.png"}),)
# Validation crops do not depend on `seed`, so every run is scored on the same images.
VAL_CROP_SEED = 0


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "EmbeddedPhotosDataModule (data=photos) reads the sample photos shipped in the scikit-image wheel, "
            f"but scikit-image is not installed. Run `make train` (it installs requirements.txt) or "
            f"`pip install {SKIMAGE_REQUIREMENT}`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photo(path: Path, short_side: int | None) -> Tensor:
    """Read an image file as RGB (``load_rgb``: any PIL mode, EXIF orientation), short side resized to ``short_side``.

    ``short_side`` None keeps the size.

    Returns:
        uint8 tensor (3, H, W).
    """
    rgb = load_rgb(path)
    if short_side is not None:
        w, h = rgb.size
        ratio = short_side / min(w, h)
        rgb = rgb.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.LANCZOS)
    return TF.pil_to_tensor(rgb)


def random_square_crop(
    photo: Tensor,
    image_size: int,
    rng: np.random.Generator,
    crop_scale: tuple[float, float],
    hflip: bool,
) -> Tensor:
    """A square crop of ``photo`` (3, H, W) uint8, side log-uniform in ``crop_scale`` x min(H, W), resized.

    Returns:
        uint8 tensor (3, image_size, image_size).
    """
    h, w = photo.shape[-2:]
    low, high = np.log(crop_scale[0]), np.log(crop_scale[1])
    side = min(h, w, max(1, round(min(h, w) * float(np.exp(rng.uniform(low, high))))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    crop = TF.resized_crop(photo, top, left, side, side, [image_size, image_size], antialias=True)
    if hflip and rng.random() < 0.5:
        crop = TF.horizontal_flip(crop)
    return crop


class RandomPhotoCrops(Dataset):
    """Map-style dataset of random crops: any integer key -> a reproducible sample.

    Args:
        photos: uint8 tensors (3, H, W).
        image_size: output side.
        num_samples: ``len()`` of the dataset (samples per epoch).
        seed: base seed; key ``k`` uses ``numpy.random.default_rng([seed, k])``.
        crop_scale: (min, max) crop side as a fraction of the photo's short side.
        hflip: flip left-right with probability 0.5.
    """

    def __init__(
        self,
        photos: Sequence[Tensor],
        image_size: int,
        num_samples: int,
        seed: int,
        crop_scale: tuple[float, float],
        hflip: bool,
    ) -> None:
        self.photos = list(photos)
        self.image_size = image_size
        self.num_samples = num_samples
        self.seed = seed
        self.crop_scale = crop_scale
        self.hflip = hflip

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, int(key)])
        photo = self.photos[int(rng.integers(len(self.photos)))]
        crop = random_square_crop(photo, self.image_size, rng, self.crop_scale, self.hflip)
        return {"image": TF.to_dtype(crop, torch.float32, scale=True)}  # (3, S, S) in [0, 1]


class EpochKeySampler(Sampler[int]):
    """Yields keys ``epoch * n .. epoch * n + n - 1``: a fresh, reproducible set of samples per epoch.

    ``set_epoch`` (called by Lightning every epoch, also through its distributed wrapper) pins the
    epoch: every pass until the next ``set_epoch`` yields that epoch's keys (a resumed Lightning run
    may start iterating twice). Without ``set_epoch`` every pass advances to the next epoch.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.epoch = 0
        self._pinned = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._pinned = True

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.num_samples
        if not self._pinned:
            self.epoch += 1
        return iter(range(start, start + self.num_samples))


class FixedImages(Dataset):
    """Precomputed images (N, 3, S, S) float in [0, 1] -> ``{"image": (3, S, S)}``."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index]}


class EmbeddedPhotosDataModule(L.LightningDataModule):
    """Crops of the CC0 / public-domain colour photos inside the scikit-image wheel (see module docstring).

    Batches are ``{"image": (B, 3, image_size, image_size) float32 in [0, 1]}`` (no labels).

    Args:
        image_size: side of the square crops.
        batch_size: batch size of every split.
        num_workers: DataLoader workers for training (validation crops are precomputed, read in-process).
        train_samples: training samples per epoch.
        val_samples: number of fixed validation (= test) crops.
        seed: seed of the training crops; validation does not depend on it.
        short_side: every photo is first resized so its short side has this many pixels (None: native size).
        min_crop_scale: smallest crop side, as a fraction of the (resized) photo's short side.
        max_crop_scale: largest crop side, same unit; at 1.0 a crop can span the whole short side.
        hflip: random left-right flips of training crops.
        train_photos: file names in ``skimage/data`` used for training.
        val_photos: file names used for validation and test; must not overlap ``train_photos``.
    """

    modality = "image"  # vqkit.train refuses a model of another modality (TokenizerModel.modality)

    def __init__(
        self,
        image_size: int = 48,
        batch_size: int = 16,
        num_workers: int | str = 0,
        train_samples: int = 1600,
        val_samples: int = 128,
        seed: int = 0,
        short_side: int | None = 256,
        min_crop_scale: float = 0.25,
        max_crop_scale: float = 1.0,
        hflip: bool = True,
        train_photos: Sequence[str] = DEFAULT_TRAIN_PHOTOS,
        val_photos: Sequence[str] = DEFAULT_VAL_PHOTOS,
    ) -> None:
        super().__init__()
        _check_positive(
            image_size=image_size, batch_size=batch_size, train_samples=train_samples, val_samples=val_samples
        )
        if seed < 0:
            raise ValueError(f"data.seed must be >= 0, got {seed}")
        if not 0.0 < min_crop_scale <= max_crop_scale <= 1.0:
            raise ValueError(
                f"need 0 < data.min_crop_scale <= data.max_crop_scale <= 1, got {min_crop_scale}, {max_crop_scale}"
            )
        self.train_photos = list(train_photos)
        self.val_photos = list(val_photos)
        _check_split(self.train_photos, self.val_photos)
        # Fail at instantiation, before training starts, if scikit-image or a photo is missing.
        data_dir = skimage_data_dir()
        self._train_paths = [_photo_path(data_dir, name) for name in self.train_photos]
        self._val_paths = [_photo_path(data_dir, name) for name in self.val_photos]
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = check_num_workers(num_workers)
        self.train_samples = train_samples
        self.val_samples = val_samples
        self.seed = seed
        self.short_side = short_side
        self.crop_scale = (min_crop_scale, max_crop_scale)
        self.hflip = hflip
        self._train: RandomPhotoCrops | None = None
        self._val: FixedImages | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load the photos (once) and build the training crops and the fixed validation crops."""
        if self._train is not None:
            return
        train = [load_photo(path, self.short_side) for path in self._train_paths]
        val = [load_photo(path, self.short_side) for path in self._val_paths]
        self._train = RandomPhotoCrops(
            train, self.image_size, self.train_samples, self.seed, self.crop_scale, self.hflip
        )
        rng = np.random.default_rng(VAL_CROP_SEED)
        crops = [
            random_square_crop(val[k % len(val)], self.image_size, rng, self.crop_scale, hflip=False)
            for k in range(self.val_samples)
        ]
        self._val = FixedImages(TF.to_dtype(torch.stack(crops), torch.float32, scale=True))  # (N, 3, S, S)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self._train,
            batch_size=self.batch_size,
            sampler=EpochKeySampler(self.train_samples),
            **loader_options(self.num_workers),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._val, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def tokenize_dataset(self, split: str) -> Dataset:
        """The items ``vqkit.tokenize`` encodes: ``train`` the first epoch's crops (keys 0..train_samples-1, the
        same every time), ``val`` / ``test`` the fixed validation crops."""
        self.setup()
        if split == "train":
            return self._train
        if split in ("val", "test"):
            return self._val
        raise ValueError(f"split must be train, val or test, got {split!r}")


def _photo_path(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        try:
            version = importlib.metadata.version("scikit-image")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        raise FileNotFoundError(
            f"photo {path} not found in the installed scikit-image (version {version}). Reinstall it with "
            f"`pip install --force-reinstall {SKIMAGE_REQUIREMENT}` (or `make clean train`), or choose "
            f"files that exist in {data_dir} via data.train_photos / data.val_photos."
        )
    return path


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"data.{name} must be >= 1, got {value}")


def _check_split(train: list[str], val: list[str]) -> None:
    if not train or not val:
        raise ValueError("data.train_photos and data.val_photos must each name at least one photo")
    shared = sorted(set(train) & set(val))
    if shared:
        raise ValueError(f"photos {shared} are in both data.train_photos and data.val_photos; keep the splits disjoint")
    for group in SAME_SCENE_GROUPS:
        if group & set(train) and group & set(val):
            raise ValueError(
                f"{sorted(group)} show the same scene; put all of them in data.train_photos or all in data.val_photos"
            )
