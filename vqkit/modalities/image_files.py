"""Reading images: one loader for the image data modules and the image tokenizer (every PIL mode, EXIF orientation).

``load_rgb(path or PIL image)`` returns the picture as a viewer shows it, as an 8-bit RGB PIL image:

* EXIF orientation is applied first (a phone photo stored sideways comes out upright).
* ``RGB`` is kept; ``1`` (black/white), ``L``, ``RGBX``, ``CMYK``, ``YCbCr``, ``LAB`` and ``HSV`` are converted
  to RGB by PIL (ICC profiles are not applied).
* 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) is scaled by its full range: 8-bit value =
  round(v / 257), so 0..65535 maps onto 0..255 and an 8-bit picture saved x 257 reads back exactly.
  PIL's own ``convert`` clips these values at 255, which made a 16-bit PNG read as an all-white image.
* ``I`` (32-bit integers) holds what PIL decodes 16-bit PGM/PPM and 32-bit TIFF samples into: it is read as
  16-bit data (v / 257) and must lie in [0, 65535]; other values are refused, since no scale is known for them.
* ``F`` (32-bit float) is read as intensities in [0, 1] (round(v * 255)); values outside [0, 1] (by more than
  1e-3, a resampling overshoot) or NaN are refused rather than clipped, since 0..255 floats would clip to white.
* Transparency (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, a palette or single colour marked transparent)
  is composited onto a white background (``BACKGROUND``), as a browser shows it on a white page; dropping
  the alpha channel instead would bring back whatever colour the transparent pixels happen to hold.
* Any other mode is refused, naming the mode and the file.

Only the first frame of a multi-frame file (GIF, multi-page TIFF) is read. 16-bit precision is rounded to 8 bits:
the models take 8-bit-equivalent data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

BACKGROUND = (255, 255, 255)  # what transparent pixels become
_AS_RGB = frozenset({"RGB", "1", "L", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_WITH_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_CAN_BE_TRANSPARENT = frozenset({"1", "L", "P", "RGB"})  # a transparent index / colour in image.info
SUPPORTED_MODES = _AS_RGB | _WITH_ALPHA | _SIXTEEN_BIT | {"P", "I", "F"}
_F_TOLERANCE = 1e-3


def load_rgb(image: str | os.PathLike | Image.Image) -> Image.Image:
    """An image file or PIL image -> the upright 8-bit RGB picture it shows (see the module docstring).

    A caller's PIL image is not modified. A file is fully decoded and closed.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a mode or value range with no known mapping to RGB (the message names mode and file).
        OSError (PIL.UnidentifiedImageError, truncated files), PIL.Image.DecompressionBombError: from PIL.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image, getattr(image, "filename", "") or "the PIL image")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as opened:
        return to_rgb(opened, str(path))


def to_rgb(image: Image.Image, source: str) -> Image.Image:
    """``image`` -> a new upright 8-bit RGB image; ``source`` names it in errors."""
    mode = image.mode
    if mode not in SUPPORTED_MODES:
        raise ValueError(
            f"{source}: PIL image mode {mode!r} is not supported (vqkit reads {', '.join(sorted(SUPPORTED_MODES))}); "
            "convert the file to RGB (e.g. PIL's image.convert('RGB') after checking the result) and retry"
        )
    image = upright(image)
    if mode in _WITH_ALPHA or (mode in _CAN_BE_TRANSPARENT and "transparency" in image.info):
        if mode == "La":  # premultiplied: PIL converts it to LA only
            image = image.convert("LA")
        return _on_background(image.convert("RGBA"))
    if mode in _AS_RGB or mode == "P":
        return image.convert("RGB")
    values = np.asarray(image)
    if mode == "F":
        eight = _float_to_eight_bit(values, source)
    else:
        if mode == "I":
            low, high = int(values.min()), int(values.max())
            if low < 0 or high > 65535:
                raise ValueError(
                    f"{source}: mode 'I' (32-bit integer) samples span [{low}, {high}], outside the 16-bit range "
                    "[0, 65535] vqkit reads them in; rescale the image to 8 or 16 bits and save it again"
                )
        eight = np.rint(values.astype(np.float64) / 257).astype(np.uint8)
    return Image.fromarray(eight, "L").convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation tag says (the image itself when there is nothing to turn)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _float_to_eight_bit(values: np.ndarray, source: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{source}: mode 'F' (float) image holds NaN or Inf values")
    low, high = float(values.min()), float(values.max())
    if low < -_F_TOLERANCE or high > 1 + _F_TOLERANCE:
        raise ValueError(
            f"{source}: mode 'F' (float) samples span [{low:.4g}, {high:.4g}]; vqkit reads float images as "
            "intensities in [0, 1]. Divide by the data's white level (e.g. 255 or 65535) and save it again"
        )
    return np.rint(values.clip(0, 1).astype(np.float64) * 255).astype(np.uint8)
