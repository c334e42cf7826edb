"""VQBridge (FVQ): a trainable codebook passed through a small network before every search.

Chang et al., "Scalable Training for Vector-Quantized Networks with 100% Codebook Utilization"
(arXiv 2509.10140). The raw K x C codebook is laid out as a sqrt(K) x sqrt(K) grid; the bridge
compresses p x p patches of codes into tokens (patch embedding), mixes them with ViT blocks and
recovers the codes (LayerNorm + Linear, unpatchify). A K that is not a perfect square
uses the most square H x W grid. Every code's vector depends on many
parameters shared with other codes, so an unselected code still moves with the ones the batch
selects. The last layer starts at zero; with ``residual`` the bridged codebook then equals the raw
codebook at initialisation. ``bake()`` turns the bridged codebook into a plain ``vq`` quantizer.

The quantizer is ``vq``'s forward over ``generate_codebook() = bridge(raw_codebook)``
(``generated_codebook.GeneratedCodebookQuantizer``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vqkit.quantizers.codebook_file import load_codebook
from vqkit.quantizers.generated_codebook import GeneratedCodebookQuantizer, fp32_call
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK

BRIDGES = ("vit", "linear", "mlp")


@register_quantizer("vqbridge")
class VQBridgeQuantizer(GeneratedCodebookQuantizer):
    """Straight-through VQ over ``bridge(raw_codebook)``.

    Args:
        dim: width D of the latents and of the bridged codes.
        codebook_size: number of codes K; ``bridge="vit"`` lays them on a sqrt(K) x sqrt(K) grid (the
            paper), or on the most square H x W grid (aspect <= 4) when K is not a perfect square.
        codebook_dim: width C of the raw codebook (default D; must equal D when ``residual``).
        bridge: ``vit`` (compress / ViT blocks / recover), ``linear`` (per-code Linear C -> D) or
            ``mlp`` (per-code Linear, GELU, Linear).
        patch_size: p, codes per patch side of the ``vit`` bridge; must divide both grid sides. None picks the
            smallest one that leaves at most ``max_tokens`` patches.
        max_tokens: token budget of the automatic patch size.
        width: token width of the ``vit`` bridge and hidden width of ``mlp``.
        depth: ViT blocks (the paper: 2).
        num_heads: attention heads per block.
        mlp_ratio: MLP expansion of each block.
        pos_embed: learned positional embedding over the patch grid.
        residual: bridged = raw + bridge(raw) (the paper's release: off).
        init_codebook_path: safetensors file of (K, C) vectors (``python -m vqkit.tools.codebook``, e.g. k-means
            centres of the encoder's latents) to start the raw codebook from instead of N(0, 1/C). With
            ``residual`` the bridged codebook then starts exactly at those vectors. None: the paper's random init.
        codebook_weight, commit_weight, swap_loss_weights: as ``vq`` (the paper: 1.0 / 0.25, not swapped).
        code_chunk, row_chunk: tile sizes of the nearest-code search.
        check_finite: raise on NaN/Inf latents.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        bridge: str = "vit",
        patch_size: int | None = None,
        max_tokens: int = 1024,
        width: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_embed: bool = True,
        residual: bool = False,
        init_codebook_path: str | None = None,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.25,
        swap_loss_weights: bool = False,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
    ) -> None:
        super().__init__(
            dim, codebook_size, codebook_weight, commit_weight, swap_loss_weights, code_chunk, row_chunk, check_finite
        )
        if bridge not in BRIDGES:
            raise ValueError(f"bridge must be one of {BRIDGES}, got {bridge!r}")
        self.codebook_dim = codebook_dim or dim
        if residual and self.codebook_dim != dim:
            raise ValueError(
                f"residual=True adds the raw codebook ({self.codebook_dim} dims) to the bridge output ({dim} dims); "
                "set codebook_dim=null (= dim) or residual=false"
            )
        self.bridge_kind = bridge
        self.residual = residual
        self.raw_codebook = nn.Parameter(self._initial_codes(init_codebook_path))
        if bridge == "vit":
            height, grid_width = grid_shape(codebook_size)
            self.patch_size = patch_size if patch_size is not None else auto_patch_size(height, grid_width, max_tokens)
            check_patch_size(height, grid_width, self.patch_size)
            self.bridge = ViTBridge(self.codebook_dim, dim, (height, grid_width), self.patch_size, width, depth,
                                    num_heads, mlp_ratio, pos_embed)
        else:
            self.patch_size = None
            self.bridge = PerCodeBridge(self.codebook_dim, dim, width if bridge == "mlp" else None)

    def _initial_codes(self, path: str | None) -> Tensor:
        if path is None:
            return torch.randn(self.codebook_size, self.codebook_dim) / self.codebook_dim**0.5
        codes, _ = load_codebook(path, expected_size=self.codebook_size)
        if codes.shape[1] != self.codebook_dim:
            raise ValueError(
                f"vqbridge: {path} holds {codes.shape[1]}-dim vectors but the raw codebook is {self.codebook_dim}-dim; "
                f"set quantizer.codebook_dim={codes.shape[1]} (and dim too when residual=true) or rebuild the file"
            )
        return codes.float().clone()

    def generate_codebook(self) -> Tensor:
        bridged = fp32_call(self.bridge, self.raw_codebook)
        return bridged + self.raw_codebook.float() if self.residual else bridged

    def extra_repr(self) -> str:
        return (f"K={self.codebook_size}, raw {self.codebook_dim} -> {self.dim}, bridge={self.bridge_kind}, "
                f"patch={self.patch_size}, residual={self.residual}")


MAX_GRID_ASPECT = 4


def grid_shape(codebook_size: int) -> tuple[int, int]:
    """The most square grid (H, W), H <= W, H * W = K: sqrt(K) x sqrt(K) when K is a perfect square.

    Raises:
        ValueError: when the most square factorisation is more than ``MAX_GRID_ASPECT`` times wider than
            tall (e.g. K prime), naming the nearest square sizes.
    """
    side = math.isqrt(codebook_size)
    height = next(h for h in range(side, 0, -1) if codebook_size % h == 0)
    width = codebook_size // height
    if width > MAX_GRID_ASPECT * height:
        raise ValueError(
            f"vqbridge with bridge='vit' lays the codebook out on a grid, but codebook_size={codebook_size} is not "
            f"a perfect square and its most square grid is {height} x {width}; use a square size such as "
            f"{side * side} or {(side + 1) ** 2} (e.g. 16384 = 128^2, 65536 = 256^2, 262144 = 512^2), "
            "or bridge='linear' / 'mlp'"
        )
    return height, width


def auto_patch_size(height: int, width: int, max_tokens: int) -> int:
    """Smallest common divisor p of the grid sides with (H / p) * (W / p) <= max_tokens."""
    for p in range(1, height + 1):
        if height % p == 0 and width % p == 0 and (height // p) * (width // p) <= max_tokens:
            return p
    return math.gcd(height, width)


def check_patch_size(height: int, width: int, patch_size: int) -> None:
    if patch_size <= 0 or height % patch_size or width % patch_size:
        divisors = [p for p in range(1, height + 1) if height % p == 0 and width % p == 0]
        raise ValueError(
            f"vqbridge: the {height} x {width} code grid is not divisible by patch_size={patch_size}; "
            f"set quantizer.patch_size to one of {divisors} or null for the automatic choice"
        )


class ViTBridge(nn.Module):
    """(K, C) raw codes -> (K, D): patch-embed p x p codes, ViT blocks, LayerNorm + Linear, unpatchify.

    The final Linear is zero-initialised (the bridge outputs zeros at initialisation).
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], patch: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, pos_embed: bool) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"vqbridge: width={width} must be divisible by num_heads={num_heads}")
        self.in_dim, self.out_dim, self.grid, self.patch = in_dim, out_dim, grid, patch
        tokens = (grid[0] // patch) * (grid[1] // patch)
        self.compress = nn.Conv2d(in_dim, width, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, width) * 0.02) if pos_embed else None
        from timm.models.vision_transformer import Block  # here: keeps timm (~2 s) out of `import vqkit`

        self.blocks = nn.Sequential(*[Block(width, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.recover = nn.Linear(width, patch * patch * out_dim)
        nn.init.zeros_(self.recover.weight)
        nn.init.zeros_(self.recover.bias)

    def forward(self, codes: Tensor) -> Tensor:
        (h, w), p = self.grid, self.patch
        grid = codes.reshape(1, h, w, self.in_dim).permute(0, 3, 1, 2)  # (1, C, H, W)
        tokens = self.compress(grid).flatten(2).transpose(1, 2)  # (1, H/p * W/p, width)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        out = self.recover(self.norm(self.blocks(tokens)))  # (1, H/p * W/p, p*p*D)
        out = out.reshape(h // p, w // p, p, p, self.out_dim).permute(0, 2, 1, 3, 4)  # (H/p, p, W/p, p, D)
        return out.reshape(h * w, self.out_dim)


class PerCodeBridge(nn.Module):
    """(K, C) -> (K, D) applied to each code alone: Linear, or Linear-GELU-Linear; last layer zero-init."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None) -> None:
        super().__init__()
        last = nn.Linear(hidden or in_dim, out_dim)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = last if hidden is None else nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), last)

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes)
