"""Every PIL image mode and EXIF orientation read as the RGB picture it shows, by one loader
(``vqkit.modalities.image_files.load_rgb``) that the data modules and the image artifact share (issue 15).

Each case writes a file (or builds a PIL image) from one 8-bit RGB reference and checks the loaded pixels against
the reference as it should look: 16-bit samples scaled by 65535, transparency composited on white, EXIF orientation
applied. Lossless cases must match exactly, JPEG cases within a few grey levels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.artifacts import TINY_MODEL
from vqkit.data import ImageFolderDataModule
from vqkit.data.photos import load_photo
from vqkit.modalities.image_files import load_rgb
from vqkit.models import ImageTokenizer
from vqkit.tokenizers import load_tokenizer

H, W = 16, 24  # not square, so a missed EXIF rotation shows in the shape; multiples of the tiny model's f = 2


def reference() -> np.ndarray:
    """A smooth 8-bit RGB picture (H, W, 3) with a little noise: gradients in R and G, a wave in B."""
    y, x = np.mgrid[0:H, 0:W]
    noise = np.random.default_rng(0).integers(-6, 7, (H, W, 3))
    rgb = np.stack([40 + 8 * x, 30 + 12 * y, 128 + 90 * np.sin(x / 3 + y / 5)], -1) + noise
    return rgb.clip(0, 255).astype(np.uint8)


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def alpha() -> np.ndarray:
    """An alpha ramp from transparent (left) to opaque (right), (H, W) uint8."""
    return np.broadcast_to(np.linspace(0, 255, W).round().astype(np.uint8), (H, W)).copy()


def on_white(rgb: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Composite of straight-alpha colours on a white background, rounded like PIL's alpha_composite."""
    a = a.astype(np.float64)[..., None] / 255
    return (rgb.astype(np.float64) * a + 255 * (1 - a)).round().astype(np.uint8)


def as_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, -1) if values.ndim == 2 else values


# --- the cases: name -> (build(tmp) -> path or PIL image, expected RGB (H, W, 3), tolerance in grey levels) ----


def _png16(tmp: Path) -> Path:
    path = tmp / "grey16.png"
    Image.fromarray(grey(reference()).astype(np.uint16) * 257).save(path)  # PIL reads it back as mode I;16
    assert Image.open(path).mode == "I;16"
    return path


def _i16b(tmp: Path) -> Image.Image:
    return Image.frombytes("I;16B", (W, H), (grey(reference()).astype(">u2") * 257).tobytes())


def _pgm16(tmp: Path) -> Path:
    path = tmp / "grey16.pgm"
    Image.fromarray(grey(reference()).astype(np.uint16) * 257).save(path)  # PIL reads a 16-bit PGM as mode I
    assert Image.open(path).mode == "I"
    return path


def _int32_tiff(tmp: Path) -> Path:
    path = tmp / "grey32.tif"
    Image.fromarray(grey(reference()).astype(np.int32) * 257).save(path)  # mode I, 16-bit values in 32 bits
    assert Image.open(path).mode == "I"
    return path


def _float_tiff(tmp: Path) -> Path:
    path = tmp / "grey.tif"
    Image.fromarray(grey(reference()).astype(np.float32) / 255).save(path)
    assert Image.open(path).mode == "F"
    return path


def _palette(tmp: Path) -> Path:
    path = tmp / "palette.png"
    Image.fromarray(reference()).quantize(64).save(path)
    return path


def _palette_expected() -> np.ndarray:
    return np.asarray(Image.fromarray(reference()).quantize(64).convert("RGB"))


def _palette_transparent(tmp: Path) -> Path:
    image = Image.fromarray(reference()).quantize(64)
    image.info["transparency"] = int(np.asarray(image)[0, 0])
    path = tmp / "palette_trns.png"
    image.save(path, transparency=image.info["transparency"])
    return path


def _palette_transparent_expected() -> np.ndarray:
    image = Image.fromarray(reference()).quantize(64)
    index = np.asarray(image)
    rgb = np.asarray(image.convert("RGB")).copy()
    rgb[index == index[0, 0]] = 255
    return rgb


def _la(tmp: Path) -> Path:
    path = tmp / "grey_alpha.png"
    Image.fromarray(np.stack([grey(reference()), alpha()], -1), "LA").save(path)
    return path


def _rgba(tmp: Path) -> Path:
    path = tmp / "rgba.png"
    Image.fromarray(np.dstack([reference(), alpha()]), "RGBA").save(path)
    return path


def _pa(tmp: Path) -> Image.Image:
    image = Image.fromarray(reference()).quantize(64)
    pa = Image.new("PA", image.size)
    pa.putpalette(image.getpalette())
    pa.putdata(list(zip(image.getdata(), alpha().flatten().tolist(), strict=True)))
    return pa


def _cmyk_jpeg(tmp: Path) -> Path:
    path = tmp / "cmyk.jpg"
    Image.fromarray(reference()).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    return path


def _ycbcr(tmp: Path) -> Image.Image:
    return Image.fromarray(reference()).convert("YCbCr")


def _lab_tiff(tmp: Path) -> Path:
    path = tmp / "lab.tif"
    Image.fromarray(reference()).convert("LAB").save(path)
    return path


def _bilevel(tmp: Path) -> Path:
    path = tmp / "bilevel.png"
    Image.fromarray(grey(reference()) > 128).save(path)
    assert Image.open(path).mode == "1"
    return path


def _exif_rotated(tmp: Path) -> Path:
    """Pixels stored turned a quarter, with EXIF orientation 6 ("rotate 90 degrees clockwise to display")."""
    path = tmp / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(reference()).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path


CASES: dict[str, tuple[Callable[[Path], Path | Image.Image], Callable[[], np.ndarray], float]] = {
    "16-bit grey PNG (I;16)": (_png16, lambda: as_rgb(grey(reference())), 0),
    "16-bit big-endian (I;16B)": (_i16b, lambda: as_rgb(grey(reference())), 0),
    "16-bit PGM (I)": (_pgm16, lambda: as_rgb(grey(reference())), 0),
    "32-bit int TIFF (I)": (_int32_tiff, lambda: as_rgb(grey(reference())), 0),
    "float TIFF (F)": (_float_tiff, lambda: as_rgb(grey(reference())), 0),
    "palette (P)": (_palette, _palette_expected, 0),
    "palette with a transparent index (P)": (_palette_transparent, _palette_transparent_expected, 0),
    "grey + alpha (LA)": (_la, lambda: as_rgb(on_white(grey(reference())[..., None], alpha())[..., 0]), 1),
    "RGBA": (_rgba, lambda: on_white(reference(), alpha()), 1),
    "palette + alpha (PA)": (_pa, lambda: on_white(_palette_expected(), alpha()), 1),
    "CMYK JPEG": (_cmyk_jpeg, reference, 4),
    "YCbCr": (_ycbcr, reference, 2),
    "LAB TIFF": (_lab_tiff, reference, 2),
    "1-bit (1)": (_bilevel, lambda: as_rgb(np.where(grey(reference()) > 128, 255, 0).astype(np.uint8)), 0),
    "EXIF-rotated JPEG": (_exif_rotated, reference, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_mode_loads_as_the_picture_it_shows(case: str, tmp_path: Path) -> None:
    build, expected, tolerance = CASES[case]
    source = build(tmp_path)
    image = load_rgb(source)
    assert image.mode == "RGB" and image.size == (W, H), (image.mode, image.size)
    diff = np.abs(np.asarray(image).astype(int) - expected().astype(int))
    assert diff.mean() <= tolerance and (tolerance or diff.max() == 0), f"mean abs diff {diff.mean():.3g}"


def test_out_of_range_and_unknown_modes_are_refused_naming_the_file(tmp_path: Path) -> None:
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((H, W), 70000, np.int32)).save(wide)
    with pytest.raises(ValueError, match=r"wide\.tif.*mode 'I'.*70000.*0, 65535"):
        load_rgb(wide)
    hdr = tmp_path / "hdr.tif"
    Image.fromarray(np.full((H, W), 3.5, np.float32)).save(hdr)
    with pytest.raises(ValueError, match=r"hdr\.tif.*mode 'F'.*3\.5.*\[0, 1\]"):
        load_rgb(hdr)
    odd = Image.new("L", (W, H))
    odd._mode = "XYZ"  # a mode this loader has never heard of (Pillow 13 has none left to spare)
    with pytest.raises(ValueError, match=r"PIL image mode 'XYZ' is not supported"):
        load_rgb(odd)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_load_rgb_leaves_a_callers_image_alone(tmp_path: Path) -> None:
    image = Image.fromarray(np.dstack([reference(), alpha()]), "RGBA")
    load_rgb(image)
    assert image.mode == "RGBA" and np.array_equal(np.asarray(image)[..., 3], alpha())


# --- the data modules and the artifact read images through the loader ----------------------------------------


def _sixteen_and_eight(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sixteen, eight = folder / "a_16bit.png", folder / "b_8bit.png"
    Image.fromarray(grey(reference()).astype(np.uint16) * 257).save(sixteen)
    Image.fromarray(grey(reference())).save(eight)
    return sixteen, eight


def test_image_folder_reads_a_16_bit_png_like_its_8_bit_copy(tmp_path: Path) -> None:
    _sixteen_and_eight(tmp_path / "train" / "cls")
    _sixteen_and_eight(tmp_path / "val" / "cls")
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=2, num_workers=0)
    batch = next(iter(dm.val_dataloader()))
    assert dm.corrupt_files == {"val": []}
    sixteen, eight = batch["image"]
    assert 0.3 < float(eight.mean()) < 0.7
    assert torch.equal(sixteen, eight), f"16-bit mean {float(sixteen.mean()):.4f}, 8-bit {float(eight.mean()):.4f}"


def test_photos_reads_a_16_bit_png_like_its_8_bit_copy(tmp_path: Path) -> None:
    sixteen, eight = _sixteen_and_eight(tmp_path)
    assert torch.equal(load_photo(sixteen, None), load_photo(eight, None))


@pytest.fixture
def tokenizer(tmp_path: Path) -> ImageTokenizer:
    torch.manual_seed(0)
    ImageTokenizer.from_config(TINY_MODEL).save_pretrained(tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def test_artifact_encodes_16_bit_and_exif_rotated_files_like_the_8_bit_picture(tokenizer, tmp_path: Path) -> None:
    sixteen, eight = _sixteen_and_eight(tmp_path)
    codes = tokenizer.encode(eight)
    assert codes.shape == (1, H // 2, W // 2)
    assert torch.equal(tokenizer.encode(sixteen), codes), "a 16-bit PNG encodes differently from its 8-bit copy"
    assert torch.equal(tokenizer.encode(Image.open(sixteen)), codes)
    assert tokenizer.encode(_exif_rotated(tmp_path)).shape == (1, H // 2, W // 2)
    rgba = _rgba(tmp_path)
    assert torch.equal(tokenizer.encode(rgba), tokenizer.encode(Image.fromarray(on_white(reference(), alpha()))))


def test_artifact_refuses_empty_batches_naming_the_fix(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\).*at least one image"):
        tokenizer.encode(torch.zeros(0, 3, H, W))
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\).*at least one image"):
        tokenizer.decode(torch.zeros(0, H // 2, W // 2, dtype=torch.long))
