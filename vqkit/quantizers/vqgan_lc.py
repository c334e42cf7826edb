"""VQGAN-LC: a frozen codebook of pretrained features, mapped to the latent space by a trained projector.

Zhu et al., "Scaling the Codebook Size of VQ-GAN to 100,000 with a Utilization Rate of 99%"
(arXiv 2406.11837). The K x F codebook (k-means centres of image features, built beforehand by
``python -m vqkit.tools.codebook`` or the run's ``prepare:`` step) never changes; a projector
(Linear F -> D, or an MLP) maps all K codes to the search space every training forward, the
latents are matched by exact L2
search over all projected codes, and only the projector (and the encoder) learn. Because
every code moves through the shared projector, codes the batch never selects still follow
the latent distribution, which keeps usage near 100% at very large K.

The quantizer is ``vq``'s forward over ``generate_codebook() = projector(features)``
(``generated_codebook.FrozenProjectedQuantizer``, shared with simvq). Building the codebook file is a separate
preparation step: the constructor only reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from vqkit.quantizers.codebook_file import BUILD_HINT, load_codebook
from vqkit.quantizers.generated_codebook import FrozenProjectedQuantizer, random_frozen_codebook
from vqkit.quantizers.registry import register_quantizer
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, DEFAULT_ROW_CHUNK

log = logging.getLogger(__name__)

PROJECTORS = ("linear", "mlp")
FEATURE_NORMS = ("center_rms", "standardize", "none")


def normalize_features(features: Tensor, mode: str) -> Tensor:
    """The frozen (K, F) codebook brought to a scale the projector can start from.

    ``center_rms``: subtract the mean code and divide by the root-mean-square row norm, so the codes are
    centred with E||f||^2 = 1. It is an affine map of the whole codebook (an exact change of the linear
    projector's bias and scale), so the k-means geometry is unchanged; only the starting point is: with
    N(0, D^-1/2) projector weights the projected codes then have E||e||^2 = 1, the scale of freshly
    initialised latents. ``standardize``: zero mean and unit variance per feature, then / sqrt(F) (the
    same E||f||^2 = 1, but every feature weighs the same). ``none``: the file as it is.
    """
    if mode not in FEATURE_NORMS:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {mode!r}")
    if mode == "none":
        return features
    features = features.float()
    centred = features - features.mean(0, keepdim=True)
    if mode == "standardize":
        centred = centred / centred.std(0, keepdim=True).clamp_min(1e-6) / features.shape[1] ** 0.5
        return centred
    rms = centred.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
    return centred / rms


@register_quantizer("vqgan_lc")
class VQGANLCQuantizer(FrozenProjectedQuantizer):
    """Straight-through VQ over ``projector(frozen_features)``.

    Args:
        dim: width D of the latents and of the projected codes (the paper: 8).
        codebook_size: number of codes K; must equal the file's K.
        codebook_path: safetensors file holding (K, F) features, built beforehand by
            ``python -m vqkit.tools.codebook`` (or the run's ``prepare:`` step); a missing file is a
            FileNotFoundError naming that command. None: a random Gaussian (K, feature_dim) codebook drawn
            from ``seed`` is used instead and a warning is logged - for tests and for the
            random-frozen-codebook ablation of the paper.
        feature_dim: F; checked against the file when given, required width of the random codebook
            otherwise (defaults to ``dim``).
        projector: ``linear`` (the paper's default) or ``mlp`` (Linear F->hidden, ReLU, Linear hidden->D).
        projector_hidden: hidden width of the MLP projector (the paper: 256).
        projector_init: ``normal`` (the official code: weights N(0, D^-1/2), PyTorch's default bias) or
            ``identity`` (linear projector with F == D only, zero bias: starts as the file's codebook itself,
            e.g. codes built from the tokenizer's own latents by ``python -m vqkit.tools.codebook --source
            tokenizer``).
        feature_norm: how the frozen features are scaled before projection (``normalize_features``):
            ``center_rms`` (centred, unit RMS row norm), ``standardize`` or ``none`` (the file as is);
            ``auto``: ``none`` with ``projector_init='identity'`` (the codes start as the file's), else ``center_rms``.
        seed: seed of the random codebook when no file is given. None (with no file): no codebook is drawn; a
            zero placeholder of (codebook_size, feature_dim) waits for a state dict to fill it. Exported artifacts
            are built so (``self_contained_arguments``): their weights hold the codebook. Training a placeholder
            that was never filled is an error.
        codebook_weight, commit_weight, swap_loss_weights: as ``vq``; VQGAN-LC's own loss is
            commit 1.0 + 0.33 codebook, i.e. ``codebook_weight=1.0, commit_weight=0.33, swap_loss_weights=True``.
        code_chunk, row_chunk: tile sizes of the nearest-code search.
        check_finite: raise on NaN/Inf latents.
        estimator: gradient estimator of the hard step (``vqkit.quantizers.estimators``): ``ste`` | ``rotation``.

    Raises:
        FileNotFoundError: ``codebook_path`` does not exist (the message says how to build it).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_path: str | None = None,
        feature_dim: int | None = None,
        projector: str = "linear",
        projector_hidden: int = 256,
        projector_init: str = "normal",
        feature_norm: str = "auto",
        seed: int | None = 0,
        codebook_weight: float = 1.0,
        commit_weight: float = 0.33,
        swap_loss_weights: bool = True,
        code_chunk: int = DEFAULT_CODE_CHUNK,
        row_chunk: int = DEFAULT_ROW_CHUNK,
        check_finite: bool = True,
        estimator: str = "ste",
    ) -> None:
        super().__init__(
            dim, codebook_size, codebook_weight, commit_weight, swap_loss_weights, code_chunk, row_chunk, check_finite,
            estimator,
        )
        if projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {projector!r}")
        if codebook_path and not Path(codebook_path).is_file():
            raise FileNotFoundError(
                f"vqgan_lc: the codebook file {codebook_path} does not exist; build it first with "
                f"`python -m vqkit.tools.codebook --out {codebook_path} --num-codes {codebook_size} ...` "
                "(or the run's `prepare:` step), or point quantizer.codebook_path at an existing file"
            )
        if codebook_path:
            features, metadata = load_codebook(codebook_path, expected_size=codebook_size)
            if feature_dim is not None and features.shape[1] != feature_dim:
                raise ValueError(
                    f"{codebook_path} holds {features.shape[1]}-dim features but feature_dim={feature_dim}; "
                    f"set quantizer.feature_dim={features.shape[1]} (or null)"
                )
            self.source = f"{codebook_path} ({metadata.get('source', 'unknown source')})"
        elif seed is None:  # filled by load_state_dict (an artifact's weights)
            features = torch.zeros(codebook_size, feature_dim or dim)
            self.source = "placeholder for the codebook of a state dict"
        else:
            width = feature_dim or dim
            log.warning(
                "vqgan_lc: no codebook_path given: using a RANDOM frozen %d x %d Gaussian codebook (seed %d), "
                "not pretrained features; %s",
                codebook_size,
                width,
                seed,
                BUILD_HINT,
            )
            features = random_frozen_codebook(codebook_size, width, seed, std=1.0)
            self.source = f"random (seed {seed})"
        self.codebook_path = codebook_path
        self.placeholder = not codebook_path and seed is None
        if feature_norm == "auto":
            feature_norm = "none" if projector_init == "identity" else "center_rms"
        self.feature_norm = feature_norm
        features = normalize_features(features, feature_norm)
        self._set_frozen_codebook(features, build_projector(projector, int(features.shape[1]), dim, projector_hidden))
        if projector_init == "identity":
            if projector != "linear" or self.feature_dim != dim:
                raise ValueError(
                    f"projector_init='identity' needs projector='linear' and feature_dim == dim, got {projector!r} "
                    f"with {self.feature_dim} -> {dim}; use projector_init='normal'"
                )
            with torch.no_grad():
                self.projector.weight.copy_(torch.eye(dim))
                self.projector.bias.zero_()
        elif projector_init != "normal":
            raise ValueError(f"projector_init must be 'normal' or 'identity', got {projector_init!r}")

    @classmethod
    def self_contained_arguments(cls, config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
        """Build without the codebook file, for weights that hold the codebook (``features``: (K, F))."""
        return {"codebook_path": None, "feature_dim": int(shapes["features"][1]), "seed": None}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "features" in state_dict:
            self.placeholder = False
            self.source = "loaded with the weights"

    def generate_codebook(self) -> Tensor:
        if self.placeholder and self.training:
            raise RuntimeError(
                "vqgan_lc: built with codebook_path=null and seed=null (a placeholder for the codebook of a state "
                "dict) but no state dict was loaded; set quantizer.codebook_path to a codebook file, or seed to a "
                "number for a random frozen codebook"
            )
        return super().generate_codebook()

    def extra_repr(self) -> str:
        return f"K={self.codebook_size}, features={self.feature_dim} -> {self.dim}, codebook={self.source}"


def build_projector(kind: str, in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    """The VQGAN-LC projector: Linear with N(0, out_dim^-1/2) weights (bias: PyTorch's default), or a ReLU MLP."""
    if kind == "linear":
        linear = nn.Linear(in_dim, out_dim)
        nn.init.normal_(linear.weight, std=out_dim**-0.5)
        return linear
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
