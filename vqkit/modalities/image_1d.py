"""1-D (TiTok-style) transformer image tokenizer, the encoder/decoder of SoftVQ-VAE.

The encoder runs a ViT over the image patches plus ``num_latent_tokens`` learnable
latent tokens and keeps only the latent tokens, so the number of tokens does not
depend on the image size. The decoder runs a ViT over one mask token per patch
position plus the (projected) latent tokens and turns the patch positions back into
pixels. Both follow the ``ConvImageEncoder``/``ConvImageDecoder`` interface:
``encoder(images) -> (tokens (B, N, D), (H, W))`` and ``decoder(tokens, (H, W)) -> images``.

Sizes: ``size`` picks a preset of :data:`SIZES` (width / depth / heads); ``width``,
``depth`` and ``num_heads`` given explicitly win over the preset. The positional
embeddings are learned for one ``image_size``; other input sizes are rejected (no
interpolation). Images are expected in [-1, 1].

Options for small data / CPU runs (the defaults are the paper's plain ViT):

- ``patch_pos_init="sincos"`` starts the patch positional embeddings (still learned) from a
  2-D sine-cosine table instead of N(0, 0.02). The decoder's mask tokens differ only by their
  positional embedding, so with tiny random embeddings every patch position first reads the
  same mixture of latent tokens and the output stays at the mean colour for hundreds of steps;
  distinct positions from step 0 shorten that phase.
- ``stem="conv"`` (encoder) replaces the p x p patch projection by log2(p) stride-2 3x3
  convolutions (Xiao et al., "Early convolutions help transformers see better", 2021).
- ``head="conv"`` (decoder) replaces the per-patch linear output by log2(p) stages of
  3x3 convolution + pixel shuffle (x2) and a 3x3 output convolution, so neighbouring patches
  are blended instead of drawn as independent p x p tiles.
- ``token_mixer=True`` adds a learned linear map along the sequence axis (:class:`SequenceMixer`):
  in the encoder each latent token also receives a weighted sum of all patch features
  (P -> L), in the decoder each patch position a weighted sum of all latent tokens (L -> P),
  before the transformer (MLP-Mixer-style token mixing, Tolstikhin et al., 2021). Attention
  still does the rest of the routing; the mixer is a direct path. Its output is multiplied by
  ``token_mixer_gain`` with the weights initialised that much smaller, so under Adam the mixer
  moves ``gain`` times faster than the transformer (whose learning rate cannot be raised
  that far without diverging) - on CPU budgets of a few hundred steps, this path is what
  gets the reconstructions past the image's mean colour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import Tensor, nn

from vqkit.layers.positions import sincos_positions
from vqkit.layers.pretrained import load_checked, read_state_dict, timm_filter

# Transformer sizes of TiTok (arXiv 2406.07550), shared by encoder and decoder. SoftVQ-VAE's
# B and L agree with timm's ViT-B / ViT-L; its S is timm's ViT-S (width 384, depth 12, 6 heads),
# reachable with explicit width/depth/num_heads. XS is not from a paper: a CPU-sized default.
SIZES: dict[str, dict[str, int]] = {
    "XS": {"width": 128, "depth": 3, "num_heads": 4},
    "S": {"width": 512, "depth": 8, "num_heads": 8},
    "B": {"width": 768, "depth": 12, "num_heads": 12},
    "L": {"width": 1024, "depth": 24, "num_heads": 16},
}


def resolve_size(
    size: str | None, width: int | None = None, depth: int | None = None, num_heads: int | None = None
) -> tuple[int, int, int]:
    """(width, depth, num_heads) from a :data:`SIZES` preset, explicit values winning.

    Raises:
        ValueError: unknown preset, a value neither given nor set by a preset, or a width
            that ``num_heads`` does not divide.
    """
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown transformer size {size!r}; known: {', '.join(SIZES)}")
    preset = SIZES[size] if size is not None else {}
    given = {"width": width, "depth": depth, "num_heads": num_heads}
    values = {k: v if v is not None else preset.get(k) for k, v in given.items()}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"set size (one of {', '.join(SIZES)}) or give {', '.join(missing)} explicitly")
    if values["width"] % values["num_heads"]:
        raise ValueError(f"width {values['width']} is not divisible by num_heads {values['num_heads']}")
    return values["width"], values["depth"], values["num_heads"]


def _image_hw(image_size: int | Sequence[int], patch_size: int) -> tuple[int, int]:
    """(H, W) of ``image_size`` (an int or an (H, W) pair), checked against ``patch_size``."""
    hw = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) <= 0 or patch_size <= 0:
        raise ValueError(
            f"image_size must be a positive int or (H, W) and patch_size a positive int, got {image_size} and "
            f"{patch_size}"
        )
    if hw[0] % patch_size or hw[1] % patch_size:
        raise ValueError(
            f"image size {hw[0]}x{hw[1]} is not divisible by the patch size {patch_size}; "
            "set data.image_size / model.encoder.image_size to a multiple of model.encoder.patch_size."
        )
    return hw


def sincos_2d(grid_size: tuple[int, int], width: int) -> Tensor:
    """Fixed 2-D sine-cosine positional table (1, gh * gw, width), row channels first.

    ``vqkit.layers.positions.sincos_positions`` with the rows in the first half of the channels.
    """
    return sincos_positions(grid_size, width, columns_first=False)


def _stages(patch_size: int, option: str) -> int:
    """Number of x2 stages of a conv stem/head for ``patch_size`` (a power of two)."""
    stages = int(round(math.log2(patch_size))) if patch_size > 0 else 0
    if patch_size < 2 or 2**stages != patch_size:
        raise ValueError(f"{option}='conv' needs a patch_size that is a power of two >= 2, got {patch_size}")
    return stages


def conv_stem(in_channels: int, width: int, patch_size: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, width, H/p, W/p): log2(p) stride-2 3x3 convs with GELU, then a 1x1 conv.

    Channels double towards ``width``: e.g. p=8, width=128 gives 32 -> 64 -> 128.
    """
    stages = _stages(patch_size, "stem")
    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(stages):
        out = max(width >> (stages - 1 - i), 8)
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
        channels = out
    layers.append(nn.Conv2d(channels, width, 1))
    return nn.Sequential(*layers)


def conv_head(width: int, out_channels: int, patch_size: int) -> nn.Sequential:
    """(B, width, H/p, W/p) -> (B, C, H, W): log2(p) stages of 3x3 conv + pixel shuffle (x2) + GELU,
    then a 3x3 output conv. Channels halve per stage (not below 16): e.g. p=8, width=128 gives 64 -> 32 -> 16.
    """
    stages = _stages(patch_size, "head")
    layers: list[nn.Module] = []
    channels = width
    for _ in range(stages):
        out = max(channels // 2, 16)
        layers += [nn.Conv2d(channels, out * 4, 3, padding=1), nn.PixelShuffle(2), nn.GELU()]
        channels = out
    layers.append(nn.Conv2d(channels, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class SequenceMixer(nn.Module):
    """A learned linear map along the sequence axis: (B, N_in, width) -> (B, N_out, width).

    ``y[:, o] = gain * (sum_i W[o, i] x[:, i] + b[o])``, with W drawn from N(0, 0.02 / gain) and b = 0, so the
    output starts like an N(0, 0.02) layer but Adam steps (about ``lr`` per weight) move it ``gain`` times faster.
    """

    def __init__(self, in_tokens: int, out_tokens: int, gain: float = 1.0) -> None:
        super().__init__()
        if gain <= 0:
            raise ValueError(f"token_mixer_gain must be > 0, got {gain}")
        self.gain = float(gain)
        self.weight = nn.Parameter(torch.empty(out_tokens, in_tokens))
        self.bias = nn.Parameter(torch.zeros(out_tokens))
        trunc_normal_(self.weight, std=0.02 / self.gain)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("oi,biw->bow", self.weight.to(x.dtype), x) + self.bias.to(x.dtype)[:, None]
        return y * self.gain

    def extra_repr(self) -> str:
        return f"in_tokens={self.weight.shape[1]}, out_tokens={self.weight.shape[0]}, gain={self.gain}"


def _vit(width: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float,
         layer_scale: float | None = None) -> nn.Sequential:
    """Pre-norm ViT blocks (drop path rising linearly to ``drop_path_rate``, LayerScale starting at
    ``layer_scale`` when set) and a final LayerNorm."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist()
    blocks = [Block(width, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=r, init_values=layer_scale)
              for r in rates]
    return nn.Sequential(*blocks, LayerNorm(width))


class _LatentTokenTransformer(nn.Module):
    """What encoder and decoder share: patch geometry, size preset, positional embeddings, the ViT."""

    def __init__(
        self,
        latent_dim: int,
        image_size: int | Sequence[int],
        patch_size: int,
        num_latent_tokens: int,
        size: str | None,
        width: int | None,
        depth: int | None,
        num_heads: int | None,
        mlp_ratio: float,
        drop_path_rate: float,
        patch_pos_init: str,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if patch_pos_init not in ("normal", "sincos"):
            raise ValueError(f"patch_pos_init must be 'normal' or 'sincos', got {patch_pos_init!r}")
        self.patch_pos_init = patch_pos_init
        self.width, self.depth, self.num_heads = resolve_size(size, width, depth, num_heads)
        self.image_size = _image_hw(image_size, patch_size)
        self.patch_size = patch_size
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_latent_tokens = num_latent_tokens
        self.latent_dim = latent_dim
        self.patch_pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, self.width))
        self.latent_pos_embed = nn.Parameter(torch.zeros(1, num_latent_tokens, self.width))
        self.transformer = _vit(self.width, self.depth, self.num_heads, mlp_ratio, drop_path_rate, layer_scale)

    def _init_embeddings(self, *normal: nn.Parameter) -> None:
        """N(0, 0.02) for ``normal`` and the patch positional embeddings, unless those start from sincos."""
        for p in normal:
            trunc_normal_(p, std=0.02)
        if self.patch_pos_init == "sincos":
            with torch.no_grad():
                self.patch_pos_embed.copy_(sincos_2d(self.grid_size, self.width))
        else:
            trunc_normal_(self.patch_pos_embed, std=0.02)


class TransformerImageEncoder(_LatentTokenTransformer):
    """Images (B, C, H, W) -> tokens (B, num_latent_tokens, latent_dim).

    Args:
        latent_dim: width of each output token.
        image_size: the (square int or (H, W)) input size the positional embeddings are learned for.
        patch_size: side of the square patches; must divide both image sides.
        num_latent_tokens: number of output tokens.
        size: preset of :data:`SIZES` (XS, S, B, L); None needs width, depth and num_heads.
        width: transformer width; overrides the preset.
        depth: number of transformer blocks; overrides the preset.
        num_heads: attention heads; overrides the preset.
        mlp_ratio: MLP hidden width over ``width``.
        drop_path_rate: stochastic depth of the last block (0 = off).
        in_channels: image channels.
        stem: ``"patch"`` (one p x p stride-p convolution, the paper's) or ``"conv"`` (:func:`conv_stem`).
        patch_pos_init: ``"normal"`` (N(0, 0.02)) or ``"sincos"`` (:func:`sincos_2d`, still learned).
        token_mixer: add a :class:`SequenceMixer` (P -> L) of the patch features to the latent tokens.
        token_mixer_gain: its output gain (its effective learning-rate multiplier).
        layer_scale: initial LayerScale of every block (timm's ``init_values``); None: no LayerScale. A
            DINOv2 initialisation (:func:`init_encoder_from_timm_vit`) needs it set (e.g. 1e-5) to carry over
            the blocks' ``ls1`` / ``ls2`` scales.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        image_size: int | Sequence[int] = 256,
        patch_size: int = 16,
        num_latent_tokens: int = 32,
        size: str | None = "B",
        width: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
        stem: str = "patch",
        patch_pos_init: str = "normal",
        token_mixer: bool = False,
        token_mixer_gain: float = 10.0,
        layer_scale: float | None = None,
    ) -> None:
        super().__init__(latent_dim, image_size, patch_size, num_latent_tokens, size, width, depth, num_heads,
                         mlp_ratio, drop_path_rate, patch_pos_init, layer_scale)
        if stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.in_channels = in_channels
        self.stem = stem
        if stem == "conv":
            self.patch_embed = conv_stem(in_channels, self.width, patch_size)
        else:
            self.patch_embed = nn.Conv2d(in_channels, self.width, patch_size, stride=patch_size)
        self.latent_tokens = nn.Parameter(torch.zeros(1, num_latent_tokens, self.width))
        self.token_mixer = SequenceMixer(self.num_patches, num_latent_tokens, token_mixer_gain) if token_mixer else None
        self.proj = nn.Linear(self.width, latent_dim)

        self.apply(init_weights_vit_timm)
        self._init_embeddings(self.latent_tokens, self.latent_pos_embed)

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Returns tokens (B, num_latent_tokens, latent_dim) and the image size (H, W) the decoder needs."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        hw = (images.shape[-2], images.shape[-1])
        if hw != self.image_size:
            raise ValueError(
                f"image size {hw[0]}x{hw[1]} differs from the encoder's image_size "
                f"{self.image_size[0]}x{self.image_size[1]} (its positional embeddings are learned for it); "
                "set model.encoder.image_size to the data's image size."
            )
        b = images.shape[0]
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, P, width), P = H/p * W/p
        patches = patches + self.patch_pos_embed
        latents = (self.latent_tokens + self.latent_pos_embed).expand(b, -1, -1)  # (B, L, width)
        if self.token_mixer is not None:
            latents = latents + self.token_mixer(patches)  # (B, L, width)
        x = self.transformer(torch.cat([patches, latents], dim=1))  # (B, P + L, width)
        return self.proj(x[:, self.num_patches :]), hw  # (B, L, latent_dim)


class TransformerImageDecoder(_LatentTokenTransformer):
    """Tokens (B, num_latent_tokens, latent_dim) -> images (B, C, H, W).

    Args:
        latent_dim: width of each input token.
        image_size: the (square int or (H, W)) output size the positional embeddings are learned for.
        patch_size: side of the square patches; must divide both image sides.
        num_latent_tokens: number of input tokens.
        size: preset of :data:`SIZES` (XS, S, B, L); None needs width, depth and num_heads.
        width: transformer width; overrides the preset.
        depth: number of transformer blocks; overrides the preset.
        num_heads: attention heads; overrides the preset.
        mlp_ratio: MLP hidden width over ``width``.
        drop_path_rate: stochastic depth of the last block (0 = off).
        out_channels: image channels.
        head: ``"linear"`` (a p*p*C linear map per patch, the paper's) or ``"conv"`` (:func:`conv_head`).
        patch_pos_init: ``"normal"`` (N(0, 0.02)) or ``"sincos"`` (:func:`sincos_2d`, still learned).
        token_mixer: add a :class:`SequenceMixer` (L -> P) of the latent tokens to the mask tokens.
        token_mixer_gain: its output gain (its effective learning-rate multiplier).
    """

    def __init__(
        self,
        latent_dim: int = 32,
        image_size: int | Sequence[int] = 256,
        patch_size: int = 16,
        num_latent_tokens: int = 32,
        size: str | None = "B",
        width: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        out_channels: int = 3,
        head: str = "linear",
        patch_pos_init: str = "normal",
        token_mixer: bool = False,
        token_mixer_gain: float = 10.0,
    ) -> None:
        super().__init__(latent_dim, image_size, patch_size, num_latent_tokens, size, width, depth, num_heads,
                         mlp_ratio, drop_path_rate, patch_pos_init)
        if head not in ("linear", "conv"):
            raise ValueError(f"head must be 'linear' or 'conv', got {head!r}")
        self.out_channels = out_channels
        self.head = head
        self.embed = nn.Linear(latent_dim, self.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.width))
        self.token_mixer = SequenceMixer(num_latent_tokens, self.num_patches, token_mixer_gain) if token_mixer else None
        if head == "conv":
            self.to_pixels = conv_head(self.width, out_channels, patch_size)
        else:
            self.to_pixels = nn.Linear(self.width, patch_size * patch_size * out_channels)

        self.apply(init_weights_vit_timm)
        self._init_embeddings(self.latent_pos_embed, self.mask_token)

    def forward(self, tokens: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Tokens (B, L, latent_dim) and the encoder's (H, W) -> images (B, C, H, W)."""
        b, n, d = tokens.shape
        if n != self.num_latent_tokens or d != self.latent_dim:
            raise ValueError(
                f"expected tokens (B, {self.num_latent_tokens}, {self.latent_dim}), got {tuple(tokens.shape)}"
            )
        hw = (int(image_size[0]), int(image_size[1]))
        if hw != self.image_size:
            raise ValueError(
                f"image size {hw[0]}x{hw[1]} differs from the decoder's image_size "
                f"{self.image_size[0]}x{self.image_size[1]} (its positional embeddings are learned for it)"
            )
        masks = (self.mask_token + self.patch_pos_embed).expand(b, -1, -1)  # (B, P, width)
        latents = self.embed(tokens) + self.latent_pos_embed  # (B, L, width)
        if self.token_mixer is not None:
            masks = masks + self.token_mixer(latents)  # (B, P, width)
        x = self.transformer(torch.cat([masks, latents], dim=1))  # (B, P + L, width)
        x = x[:, : self.num_patches]  # (B, P, width)
        (gh, gw), p = self.grid_size, self.patch_size
        if self.head == "conv":
            return self.to_pixels(x.transpose(1, 2).reshape(b, self.width, gh, gw))  # (B, C, H, W)
        x = self.to_pixels(x)  # (B, P, p*p*C)
        x = x.reshape(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(b, self.out_channels, gh * p, gw * p)


@dataclass
class EncoderInitReport:
    """What :func:`init_encoder_from_timm_vit` did.

    Attributes:
        loaded: encoder tensors overwritten (encoder names).
        not_initialised: encoder tensors left at their own init (no source tensor of that role/shape).
        unused: source tensors with no place in the encoder (e.g. ``cls_token``, the classifier).
        mismatched: ``encoder name: source shape vs encoder shape`` for roles that exist on both sides.
    """

    loaded: list[str] = field(default_factory=list)
    not_initialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors; kept own init: {self.not_initialised}; "
                f"unused from the source: {self.unused}; shape mismatches: {self.mismatched}")


def encoder_name_of(timm_name: str, depth: int) -> str | None:
    """The :class:`TransformerImageEncoder` name of a timm ``VisionTransformer`` tensor, None if it has none.

    ``blocks.i.*`` -> ``transformer.i.*``, ``norm.*`` -> ``transformer.<depth>.*`` (the final LayerNorm),
    ``patch_embed.proj.*`` -> ``patch_embed.*``, ``pos_embed`` -> ``patch_pos_embed`` (prefix rows removed
    by the caller).
    """
    if timm_name.startswith("blocks."):
        return "transformer." + timm_name[len("blocks."):]
    if timm_name in ("norm.weight", "norm.bias"):
        return f"transformer.{depth}.{timm_name[len('norm.'):]}"
    if timm_name.startswith("patch_embed.proj."):
        return "patch_embed." + timm_name[len("patch_embed.proj."):]
    if timm_name == "pos_embed":
        return "patch_pos_embed"
    return None


def init_encoder_from_timm_vit(encoder: TransformerImageEncoder, model_name: str,
                               weights_path: str | Path | None) -> EncoderInitReport:
    """Copy a pretrained timm ViT into ``encoder`` wherever a tensor's role and shape match.

    The ViT is built as ``timm.create_model(model_name, img_size=encoder.image_size,
    patch_size=encoder.patch_size, num_classes=0)`` and loaded from the local ``weights_path`` (timm's
    checkpoint filter resamples the file's position and patch embeddings to that geometry, as SoftVQ-VAE's
    ``create_model(..., pretrained=True, img_size=256, patch_size=16)`` does). Its patch projection, patch
    position embeddings (prefix-token rows dropped), blocks and final norm are copied (:func:`encoder_name_of`);
    the latent tokens, their positions and the output projection keep their own init; a class token has no
    place in this encoder and is reported as unused.

    Raises:
        ValueError: no tensor could be copied (wrong architecture), or the file does not fit ``model_name``.
    """
    import timm  # noqa: PLC0415 - only needed at the start of a training run

    option = "module.encoder_init.weights_path"
    if weights_path is None:
        raise ValueError(f"encoder initialisation from {model_name!r} needs {option}=/path/to/weights")
    try:
        vit = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=encoder.image_size,
                                patch_size=encoder.patch_size)
    except TypeError as err:
        raise ValueError(f"{model_name!r} is not a timm ViT that takes img_size/patch_size: {err}") from err
    state = timm_filter(vit, read_state_dict(weights_path, option))
    load_checked(vit, {k: v for k, v in state.items() if not k.startswith("head.")}, weights_path, option)
    prefix = 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 0))
    own = encoder.state_dict()
    report = EncoderInitReport()
    copy: dict[str, Tensor] = {}
    for timm_name, value in vit.state_dict().items():
        name = encoder_name_of(timm_name, encoder.depth)
        if name is None or name not in own:
            report.unused.append(timm_name)
            continue
        if name == "patch_pos_embed":
            value = value[:, prefix:]
        if own[name].shape != value.shape:
            report.mismatched.append(f"{name}: {tuple(value.shape)} vs {tuple(own[name].shape)}")
        else:
            copy[name] = value
    if not copy:
        raise ValueError(
            f"no tensor of {model_name} ({weights_path}) fits the encoder (width {encoder.width}, depth "
            f"{encoder.depth}, patch {encoder.patch_size}): {report.mismatched[:4]}; pick a ViT of the encoder's size"
        )
    with torch.no_grad():
        for name, value in copy.items():
            own[name].copy_(value)
    report.loaded = sorted(copy)
    report.not_initialised = sorted(k for k in own if k not in copy)
    return report
