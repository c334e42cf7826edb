"""What is specific to hard VQ over a codebook that a trainable network produces (vqgan_lc, vqbridge, simvq).

The forward is ``VectorQuantizer``'s. What differs is where the codebook comes from: the subclass's
``generate_codebook()`` recomputes the whole (K, D) codebook from parameters, in fp32 (``fp32_call``),
every training forward; in eval mode it is cached until a parameter or buffer changes. A generated
code is not a row, so k-means initialisation, code_dim/normalize and dead-code revival are not
offered; ``bake()`` turns the current codebook into a plain ``vq`` quantizer that has all of them.
``FrozenProjectedQuantizer`` is the common case of vqgan_lc and simvq: a frozen (K, F) buffer mapped to the
codes by one trained projector, so every code moves with the projector's parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK
from vqkit.quantizers.vq import VectorQuantizer


def fp32_call(module: nn.Module, *args: Tensor) -> Tensor:
    """Run ``module`` with fp32 copies of its parameters and buffers, autocast off.

    Gradients flow back to the original (possibly bf16) parameters through the casts, so the
    generated codebook is fp32 whatever dtype the module was cast to.
    """
    state = {name: t.float() if t.is_floating_point() else t for name, t in module.named_parameters()}
    state.update({name: t.float() if t.is_floating_point() else t for name, t in module.named_buffers()})
    with torch.autocast(device_type=args[0].device.type, enabled=False):
        return functional_call(module, state, tuple(a.float() for a in args)).float()


class GeneratedCodebookQuantizer(VectorQuantizer):
    """``VectorQuantizer`` whose codebook is ``generate_codebook()``, recomputed in training, cached in eval.

    Args:
        dim: width D of the latents (B, N, D) and of the generated codes.
        codebook_size: number of codes K.
        codebook_weight: weight of ``codebook`` = ||sg(z) - e||^2 (trains the generator).
        commit_weight: weight of ``commit`` = ||z - sg(e)||^2 (moves the encoder).
        swap_loss_weights: apply ``codebook_weight`` to ``commit`` and vice versa (VQGAN-LC / taming legacy).
        code_chunk: codes per tile of the nearest-code search.
        row_chunk: latents per tile of the nearest-code search.
        check_finite: raise on NaN/Inf latents, and on a NaN/Inf generated codebook in training.
        estimator: gradient estimator of the hard step (``vqkit.quantizers.estimators``): ``ste`` | ``rotation``.
    """

    writable_codebook = False

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.25,
        swap_loss_weights: bool = False,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
        estimator: str = "ste",
    ) -> None:
        super().__init__(
            dim,
            codebook_size,
            codebook_weight=codebook_weight,
            commit_weight=commit_weight,
            swap_loss_weights=swap_loss_weights,
            code_chunk=code_chunk,
            row_chunk=row_chunk,
            check_finite=check_finite,
            estimator=estimator,
        )
        self._cache: tuple[tuple, Tensor] | None = None

    def _init_codebook_storage(self) -> None:
        """Nothing: the subclass builds its generator after ``super().__init__`` (which draws no random numbers)."""

    def generate_codebook(self) -> Tensor:
        """(K, D) fp32 codebook computed from the current parameters, differentiable."""
        raise NotImplementedError(f"{type(self).__name__} must implement generate_codebook()")

    # --- codebook with an eval-mode cache ------------------------------------------------
    def _state_key(self) -> tuple:
        tensors = [*self.parameters(), *self.buffers()]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    @property
    def codebook(self) -> Tensor:
        """(K, D) fp32 generated codebook; recomputed every call in training, cached in eval."""
        if self.training:
            self._cache = None
            codes = self.generate_codebook()
            if self.check_finite and torch.compiler.is_compiling():  # in-graph assertion: no Python branch
                torch._assert_async(torch.isfinite(codes).all(), "the generated codebook holds NaN/Inf")
            elif self.check_finite and not torch.isfinite(codes).all():
                raise FloatingPointError(
                    f"{type(self).__name__}: the generated codebook holds NaN/Inf; lower the learning rate."
                )
            return codes
        key = self._state_key()
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.generate_codebook().detach())
        return self._cache[1]

    def train(self, mode: bool = True) -> GeneratedCodebookQuantizer:
        self._cache = None
        return super().train(mode)

    def replace_codes(self, rows: Tensor, vectors: Tensor) -> None:
        """Refused: a generated code is the output of a network, not a row that can be overwritten."""
        raise TypeError(
            f"{type(self).__name__} generates its codebook from parameters; its codes cannot be overwritten "
            "(no k-means init, no dead-code revival). bake() it into a plain vq quantizer to edit codes."
        )

    @torch.no_grad()
    def bake(self) -> VectorQuantizer:
        """A plain ``vq`` quantizer (eval mode) holding the generated codebook, for inference and export.

        Its ``encode``/``decode`` equal this quantizer's in eval mode; it carries the same loss weights,
        so it can also be fine-tuned as an ordinary codebook.
        """
        codes = self.generate_codebook().detach()
        plain = VectorQuantizer(
            self.dim,
            self.codebook_size,
            codebook_weight=self.codebook_weight,
            commit_weight=self.commit_weight,
            swap_loss_weights=self.swap_loss_weights,
            code_chunk=self.code_chunk,
            row_chunk=self.row_chunk,
            check_finite=self.check_finite,
        ).to(codes.device)
        plain.embedding.data.copy_(codes)
        return plain.eval()


def random_frozen_codebook(codebook_size: int, width: int, seed: int, std: float) -> Tensor:
    """(K, F) N(0, std^2) codes drawn from their own generator: the same on every rank whatever the global seed."""
    return torch.randn(codebook_size, width, generator=torch.Generator().manual_seed(seed)) * std


class FrozenProjectedQuantizer(GeneratedCodebookQuantizer):
    """``GeneratedCodebookQuantizer`` whose codes are ``projector(features)``: a frozen buffer through a trained map.

    Subclasses call ``_set_frozen_codebook`` once in ``__init__``: ``features`` (K, F) becomes a buffer (saved with
    the weights, never a parameter, so no optimizer moves it) and ``projector`` (F -> D) the only trained part.
    """

    features: Tensor
    projector: nn.Module

    def _set_frozen_codebook(self, features: Tensor, projector: nn.Module) -> None:
        if features.dim() != 2 or features.shape[0] != self.codebook_size:
            raise ValueError(
                f"{type(self).__name__}: the frozen codebook must be ({self.codebook_size}, F), "
                f"got {tuple(features.shape)}"
            )
        self.feature_dim = int(features.shape[1])
        self.register_buffer("features", features)  # (K, F), frozen
        self.projector = projector

    def generate_codebook(self) -> Tensor:
        """(K, D) fp32 ``projector(features)``, differentiable in the projector's parameters only."""
        return fp32_call(self.projector, self.features)
