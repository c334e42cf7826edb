"""SimVQ: a frozen random codebook C and one trained linear map W; the codes are C W.

Zhu et al., "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer"
(arXiv 2411.02038), official code youngsheen/SimVQ (``taming/modules/vqvae/quantize.py``, class ``SimVQ``).
The K x F codebook C is drawn once from N(0, 1/F) and never trained; a Linear F -> D (with bias, PyTorch's
default initialisation, as the official code) maps all K codes every training forward. A gradient step on
W moves every code, also those the batch never selected, so the codebook does not collapse onto a few rows.

The quantizer is ``vq``'s forward over ``generate_codebook() = W(C)``: the same frozen-buffer-plus-projector
base as VQGAN-LC (``generated_codebook.FrozenProjectedQuantizer``), with a random C instead of pretrained
features. Losses as the official ``legacy=False``: codebook ||sg(z) - e||^2 (trains W) at 1.0 and commit
||z - sg(e)||^2 at 0.25.
"""

from __future__ import annotations

from torch import nn

from vqkit.quantizers.generated_codebook import FrozenProjectedQuantizer, random_frozen_codebook
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK


@register_quantizer("simvq")
class SimVQQuantizer(FrozenProjectedQuantizer):
    """Straight-through VQ over ``projector(C)``, C a frozen N(0, 1/F) (K, F) buffer.

    Args:
        dim: width D of the latents (B, N, D) and of the codes.
        codebook_size: number of codes K.
        frozen_dim: width F of the frozen codebook C (the official code: F = D); None: ``dim``.
        projector_bias: the Linear F -> D has a bias (the official code: yes; vector-quantize-pytorch: no).
        seed: seed of C's own generator, so every rank (and a rebuilt artifact, before its weights are
            loaded) draws the same C whatever the global seed. The weights store C as the buffer ``features``.
        codebook_weight: weight of ``codebook`` = ||sg(z) - e||^2 (trains W; official 1.0).
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2 (moves the encoder; official beta = 0.25).
        swap_loss_weights: apply ``codebook_weight`` to ``commit`` and vice versa (the official ``legacy=True``).
        code_chunk, row_chunk: tile sizes of the nearest-code search.
        check_finite: raise on NaN/Inf latents, and on a NaN/Inf generated codebook in training.
        estimator: gradient estimator of the hard step (``vqkit.quantizers.estimators``): ``ste`` | ``rotation``.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        frozen_dim: int | None = None,
        projector_bias: bool = True,
        seed: int = 0,
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
        width = frozen_dim or dim
        if width <= 0:
            raise ValueError(f"simvq: frozen_dim must be positive (or null for dim), got {frozen_dim}")
        self.seed = seed
        self._set_frozen_codebook(random_frozen_codebook(codebook_size, width, seed, std=width**-0.5),
                                  nn.Linear(width, dim, bias=projector_bias))

    def extra_repr(self) -> str:
        return f"K={self.codebook_size}, frozen N(0, 1/{self.feature_dim}) codebook (seed {self.seed}) -> {self.dim}"
