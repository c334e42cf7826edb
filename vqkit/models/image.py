"""The image tokenizer model: 2-D (grid) and 1-D (sequence) image models, with images <-> tokens."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vqkit.modalities.image_files import load_rgb
from vqkit.models.base import TokenizerModel
from vqkit.quantizers.base import Quantizer

ImageInput = Tensor | Image.Image | str | os.PathLike


class ImageTokenizer(TokenizerModel):
    """Images <-> tokens, for 2-D (grid) and 1-D (sequence) image models.

    Images are float RGB in [0, 1]: a batch (B, 3, H, W), one image (3, H, W) (treated as
    a batch of one, outputs keep the batch dim), a PIL image or the path of an image file.
    Values outside [0, 1] raise a ValueError rather than being clamped, since they usually
    mean a wrong normalization (map [-1, 1] data with ``(x + 1) / 2``; clamp resampling
    overshoot with ``x.clamp(0, 1)``). H and W must be multiples of the encoder's
    ``downsample_factor`` (or ``patch_size``) f.

    Two token layouts, told apart by the decoder: one with a fixed ``image_size`` attribute
    is a 1-D model (``image_size`` is then also the only input size); otherwise the encoder
    returns the token grid (h, w) = (H/f, W/f) and any multiple of f works.

    Shapes (D = ``token_dim``, S = ``num_stages`` of residual quantizers):
        - ``encode(images)``: hard quantizers -> ids, int64 (B, h, w) for grid models and
          (B, N) for 1-D models, with a last stage axis for residual quantizers: (B, h, w, S)
          or (B, N, S); soft quantizers -> float tokens (B, h, w, D) or (B, N, D), the soft
          mixes the decoder was trained on.
        - ``encode_ids(images)``: the ids, for soft quantizers the argmax code of each token.
        - ``decode(codes)``: ids or tokens shaped as ``encode`` returns them -> images
          (B, 3, H, W) in the config's data range ([0, 1]); residual ids may keep only their
          first s <= S stages (``ids[..., :s]``). A grid model also decodes flat ids (B, h*w)
          (residual: (B, h*w, s)) or tokens (B, h*w, D), as an autoregressive model emits
          them, given ``grid=(h, w)``: ``decode(ids.flatten(1, 2), grid=(h, w))``.

    Args:
        encoder: image encoder ``images (B, 3, H, W) -> (tokens (B, N, D), shape)``.
        decoder: image decoder ``(tokens (B, N, D), shape) -> images``.
        quantizer: any backend of the quantizer contract.
        normalization: ``{mean, std, range}``; images in [0, 1] are mapped to [-1, 1] by default.
    """

    modality = "image"
    data_key = "image"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, quantizer: Quantizer,
                 normalization: dict[str, Any] | None = None) -> None:
        normalization = {"mean": 0.5, "std": 0.5, "range": (0.0, 1.0), **dict(normalization or {})}
        super().__init__(encoder, decoder, quantizer, normalization)
        self.downsample_factor = int(getattr(encoder, "downsample_factor", getattr(encoder, "patch_size", 1)))
        fixed = getattr(decoder, "image_size", None)
        self.image_size: tuple[int, int] | None = (int(fixed[0]), int(fixed[1])) if fixed is not None else None

    @property
    def num_stages(self) -> int | None:
        """Ids per token of residual (multi-stage) quantizers, on the ids' last axis; None for one id per token."""
        return self.quantizer.num_stages

    @property
    def _stage_tail(self) -> str:
        return f", s<={self.num_stages}" if self.num_stages is not None else ""

    @torch.no_grad()
    def encode(self, images: ImageInput) -> Tensor:
        """Images -> ids (B, h, w) / (B, N) int64 (residual: + S) for hard quantizers, tokens (..., D) for soft ones."""
        return self._encode(images, ids=not self.soft)

    @torch.no_grad()
    def encode_ids(self, images: ImageInput) -> Tensor:
        """Images -> ids (B, h, w) or (B, N) int64 (residual: + S); soft quantizers: the argmax code of each token."""
        return self._encode(images, ids=True)

    @torch.no_grad()
    def decode(self, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Ids or tokens, shaped as ``encode`` returns them -> images (B, 3, H, W) in the data range.

        Args:
            codes: integer ids or float tokens, on any device.
            grid: (h, w) of flat codes, ids (B, h*w) (residual: (B, h*w, s)) or tokens (B, h*w, D); grid models only.

        Raises:
            ValueError: wrong shape, or ids outside [0, codebook_size) (from the quantizer).
        """
        if not isinstance(codes, Tensor):
            raise TypeError(f"decode expects a torch.Tensor of ids or tokens, got {type(codes).__name__}")
        if codes.dim() > 0 and codes.shape[0] == 0:
            raise ValueError(
                f"decode got an empty batch (B = 0) of codes, shape {tuple(codes.shape)}; pass the codes of at least "
                "one image (one image's ids (h, w): codes[None])"
            )
        if codes.is_floating_point():
            per_token, tail = (self.token_dim,), ", D"
        elif self.num_stages is not None:  # residual ids: the first s <= S stages on a last axis (checked in decode)
            per_token, tail = (codes.shape[-1] if codes.dim() else 0,), self._stage_tail
        else:
            per_token, tail = (), ""
        if self.image_size is not None:
            if grid is not None:
                raise ValueError("grid is for 2-D tokenizers; this 1-D tokenizer decodes (B, N) ids as they are")
            if codes.dim() != 2 + len(per_token) or tuple(codes.shape[2:]) != per_token:
                raise ValueError(
                    f"this 1-D tokenizer decodes ids (B, N{self._stage_tail}) or tokens (B, N, {self.token_dim}), "
                    f"got {codes.dtype} {tuple(codes.shape)}"
                )
            shape = self.image_size
        else:
            if grid is not None:
                h, w = grid
                if codes.dim() != 2 + len(per_token) or codes.shape[1] != h * w:
                    raise ValueError(
                        f"grid={tuple(grid)} needs flat codes (B, {h * w}{tail}), got {tuple(codes.shape)}"
                    )
                codes = codes.reshape(codes.shape[0], h, w, *per_token)
            if codes.dim() != 3 + len(per_token) or tuple(codes.shape[3:]) != per_token:
                raise ValueError(
                    f"decode expects ids (B, h, w{self._stage_tail}) or tokens (B, h, w, {self.token_dim}), got "
                    f"{codes.dtype} {tuple(codes.shape)}; pass flat codes (B, h*w{tail}) as decode(codes, grid=(h, w))"
                )
            shape = tuple(codes.shape[1:3])
        codes = codes.to(self.device).reshape(codes.shape[0], -1, *per_token)
        tokens = codes if codes.is_floating_point() else self.tokens_of_ids(codes)
        return self.denormalize(self.decoder(tokens, shape))

    def _encode(self, images: ImageInput, ids: bool) -> Tensor:
        x = as_image_batch(images)
        height, width = x.shape[-2:]
        f = self.downsample_factor
        if self.image_size is not None and (height, width) != self.image_size:
            raise ValueError(
                f"this tokenizer takes images of {self.image_size[0]}x{self.image_size[1]} only (a 1-D model with "
                f"positional embeddings learned for that size), got {height}x{width}; resize or crop them"
            )
        if height % f or width % f:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the tokenizer's downsampling factor {f}; "
                f"resize or crop to a multiple of {f}"
            )
        tokens, shape = self.encoder(self.normalize(x.to(self.device)))
        b, n, d = tokens.shape
        if self.image_size is None:
            token_shape = tuple(int(s) for s in shape)
            if len(token_shape) != 2 or n != token_shape[0] * token_shape[1]:
                raise ValueError(
                    f"{type(self.encoder).__name__} returned {n} tokens with shape {token_shape}: a grid model's "
                    "encoder must return (tokens, (h, w)), a 1-D model's decoder must have a fixed image_size"
                )
        else:
            token_shape = (n,)
        if ids:
            codes = self.quantizer.encode(tokens)  # (B, N), or (B, N, S) for residual quantizers
            return codes.reshape(b, *token_shape, *codes.shape[2:])
        return self.decoder_tokens(self.quantizer(tokens)).reshape(b, *token_shape, d)


def as_image_batch(images: ImageInput) -> Tensor:
    """A float batch (B, 3, H, W) in [0, 1] from a batch, one image (3, H, W), a PIL image or an image path.

    Files and PIL images are read by ``vqkit.modalities.image_files.load_rgb``, as the data modules read them:
    EXIF orientation applied, every PIL mode mapped by its real range (16-bit / 65535), transparency on white.

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: not an image, or integer pixels (convert with ``x.float() / 255``).
        ValueError: wrong shape or channel count, an empty batch, NaN/Inf, values outside [0, 1], or an image
            mode with no known mapping to RGB.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = _pil_to_tensor(load_rgb(images))
    if not isinstance(images, Tensor):
        raise TypeError(f"expected a tensor, a PIL image or an image path, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected images (B, 3, H, W) or one image (3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"got an empty batch (B = 0) of images, shape {tuple(images.shape)}; pass at least one image")
    if images.numel() == 0:
        raise ValueError(f"got images without pixels, shape {tuple(images.shape)}; H and W must be at least 1")
    if images.shape[1] != 3:
        hint = " (channels last? use images.permute(0, 3, 1, 2))" if images.shape[-1] == 3 else ""
        raise ValueError(f"expected RGB images with 3 channels in dim 1, got shape {tuple(images.shape)}{hint}")
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {images.dtype}; convert with images.float() / 255")
    if not torch.isfinite(images).all():
        raise ValueError("images hold NaN or Inf values")
    low, high = (float(v) for v in images.aminmax())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"images must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; map [-1, 1] data with "
            "(x + 1) / 2, clamp resampling overshoot with x.clamp(0, 1)"
        )
    return images.float()


def _pil_to_tensor(image: Image.Image) -> Tensor:
    """An 8-bit RGB PIL image -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
