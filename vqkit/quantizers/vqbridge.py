"""VQBridge (FVQ): a trainable codebook passed through a small network before every search.

Chang et al., "Scalable Training for Vector-Quantized Networks with 100% Codebook Utilization"
(arXiv 2509.10140), official code yfChang-cv/FVQ. The raw K x C codebook is laid out as a
sqrt(K) x sqrt(K) grid; the bridge (``vqkit.layers.bridge.PatchBridge``) compresses p x p patches of
codes into tokens, processes them with transformer blocks and recovers the codes (LayerNorm + Linear,
unpatchify). ``bridge="dit"`` is what the official training scripts run (``qbridge.py``: adaLN-Zero
blocks from one learned condition vector, fixed sin-cos positions); ``bridge="vit"`` is the release's
``qbridge_ViT.py`` (plain blocks, no positions). A K that is not a perfect square uses the most square
H x W grid. Every code's vector depends on parameters shared with other codes, so an unselected code
still moves with the ones the batch selects. The output Linear starts at zero, so the bridged codebook
starts at all zeros (with ``residual``: at the raw codebook). ``bake()`` turns the bridged codebook into
a plain ``vq`` quantizer.

The quantizer is ``vq``'s forward over ``generate_codebook() = bridge(raw_codebook)``
(``generated_codebook.GeneratedCodebookQuantizer``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vqkit.layers.bridge import PatchBridge, PerCodeBridge
from vqkit.quantizers.codebook_file import load_codebook
from vqkit.quantizers.generated_codebook import GeneratedCodebookQuantizer, fp32_call
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK

BRIDGES = ("dit", "vit", "linear", "mlp")
GRID_BRIDGES = ("dit", "vit")
INITS = ("uniform", "normal")
# Positions each grid bridge has in the official code: sin-cos in qbridge.py (DiT), none in qbridge_ViT.py.
OFFICIAL_POSITIONS = {"dit": "sincos", "vit": "none"}


@register_quantizer("vqbridge")
class VQBridgeQuantizer(GeneratedCodebookQuantizer):
    """Straight-through VQ over ``bridge(raw_codebook)``.

    Args:
        dim: width D of the latents and of the bridged codes.
        codebook_size: number of codes K; the ``dit`` / ``vit`` bridges lay them on a sqrt(K) x sqrt(K)
            grid (the paper), or on the most square H x W grid (aspect <= 4) when K is not a perfect square.
        codebook_dim: width C of the raw codebook (default D; must equal D when ``residual``).
        bridge: ``dit`` (FVQ's ``qbridge.py``, run by its scripts: adaLN-Zero blocks, fixed sin-cos positions),
            ``vit`` (FVQ's ``qbridge_ViT.py``: plain blocks, no positions), ``linear`` (per-code Linear C -> D)
            or ``mlp`` (per-code Linear, GELU, Linear).
        patch_size: p, codes per patch side of a grid bridge; must divide both grid sides. None: the smallest
            common divisor leaving at most ``max_tokens`` patches, capped at ``max_patch``. With the defaults
            (1024, 8) that is the official choice at the paper's sizes: p=4 at 16,384 (32 x 32 tokens),
            p=8 at 65,536 (32 x 32) and at 262,144 (64 x 64).
        max_tokens: token budget of the automatic patch size.
        max_patch: largest automatic patch side (None: no cap); the cap wins over ``max_tokens``.
        width: token width of a grid bridge (official 256 = 4 heads x 64) and hidden width of ``mlp``.
        depth: blocks of a grid bridge (official 2).
        num_heads: attention heads per block (official 4).
        mlp_ratio: MLP expansion of each block (official 2.0).
        pos_embed: positions of a grid bridge: ``sincos`` (fixed), ``learned`` (N(0, 0.02)), ``none``;
            None: the official choice of the bridge (``dit``: sincos, ``vit``: none).
        residual: bridged = raw + bridge(raw) (the official code: off).
        init: start of the raw codes: ``uniform`` (U(-1/K, 1/K), the official ``VectorQuantizer``) or
            ``normal`` (N(0, 1/C)).
        init_codebook_path: safetensors file of (K, C) vectors (``python -m vqkit.tools.codebook``, e.g. k-means
            centres of the encoder's latents) to start the raw codebook from instead of ``init``. With
            ``residual`` the bridged codebook then starts exactly at those vectors.
        codebook_weight, commit_weight, swap_loss_weights: as ``vq`` (the official code: 1.0 / 0.25, not swapped).
        code_chunk, row_chunk: tile sizes of the nearest-code search.
        check_finite: raise on NaN/Inf latents.
        estimator: gradient estimator of the hard step (``vqkit.quantizers.estimators``): ``ste`` | ``rotation``.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        bridge: str = "dit",
        patch_size: int | None = None,
        max_tokens: int = 1024,
        max_patch: int | None = 8,
        width: int = 256,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        pos_embed: str | None = None,
        residual: bool = False,
        init: str = "uniform",
        init_codebook_path: str | None = None,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.25,
        swap_loss_weights: bool = False,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
        estimator: str = "ste",
    ) -> None:
        super().__init__(
            dim, codebook_size, codebook_weight, commit_weight, swap_loss_weights, code_chunk, row_chunk, check_finite,
            estimator,
        )
        if bridge not in BRIDGES:
            raise ValueError(f"bridge must be one of {BRIDGES}, got {bridge!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.codebook_dim = codebook_dim or dim
        if residual and self.codebook_dim != dim:
            raise ValueError(
                f"residual=True adds the raw codebook ({self.codebook_dim} dims) to the bridge output ({dim} dims); "
                "set codebook_dim=null (= dim) or residual=false"
            )
        self.bridge_kind = bridge
        self.residual = residual
        self.raw_codebook = nn.Parameter(self._initial_codes(init, init_codebook_path))
        if bridge in GRID_BRIDGES:
            height, grid_width = grid_shape(codebook_size)
            self.patch_size = (patch_size if patch_size is not None
                               else auto_patch_size(height, grid_width, max_tokens, max_patch))
            check_patch_size(height, grid_width, self.patch_size)
            if width % num_heads:
                raise ValueError(f"vqbridge: width={width} must be divisible by num_heads={num_heads}")
            self.bridge = PatchBridge(self.codebook_dim, dim, (height, grid_width), self.patch_size, width, depth,
                                      num_heads, mlp_ratio, adaptive=bridge == "dit",
                                      positions=pos_embed or OFFICIAL_POSITIONS[bridge])
        else:
            self.patch_size = None
            self.bridge = PerCodeBridge(self.codebook_dim, dim, width if bridge == "mlp" else None)

    @classmethod
    def self_contained_arguments(cls, config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
        """The start file only seeds ``raw_codebook``, a parameter of the weights: build without it."""
        return {"init_codebook_path": None}

    def _initial_codes(self, init: str, path: str | None) -> Tensor:
        if path is None:
            if init == "uniform":
                k = self.codebook_size
                return torch.empty(k, self.codebook_dim).uniform_(-1.0 / k, 1.0 / k)
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
            f"vqbridge with bridge='dit' or 'vit' lays the codebook out on a grid, but codebook_size={codebook_size} "
            f"is not a perfect square and its most square grid is {height} x {width}; use a square size such as "
            f"{side * side} or {(side + 1) ** 2} (e.g. 16384 = 128^2, 65536 = 256^2, 262144 = 512^2), "
            "or bridge='linear' / 'mlp'"
        )
    return height, width


def auto_patch_size(height: int, width: int, max_tokens: int, max_patch: int | None = None) -> int:
    """Smallest common divisor p of the grid sides with (H / p) * (W / p) <= max_tokens, at most ``max_patch``.

    When the token budget needs a patch above ``max_patch``, the largest common divisor <= ``max_patch`` is
    taken (more tokens than ``max_tokens``). The defaults (1024, 8) give FVQ's scripts: p=4 at K=16,384,
    p=8 at 65,536 and 262,144.
    """
    divisors = [p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0]
    p = next((p for p in divisors if (height // p) * (width // p) <= max_tokens), divisors[-1])
    if max_patch is not None and p > max_patch:
        p = max(d for d in divisors if d <= max_patch)
    return p


def check_patch_size(height: int, width: int, patch_size: int) -> None:
    if patch_size <= 0 or height % patch_size or width % patch_size:
        divisors = [p for p in range(1, height + 1) if height % p == 0 and width % p == 0]
        raise ValueError(
            f"vqbridge: the {height} x {width} code grid is not divisible by patch_size={patch_size}; "
            f"set quantizer.patch_size to one of {divisors} or null for the automatic choice"
        )
