"""The tokenizer model: one ``nn.Module`` that training, evaluation and the artifact share.

A model is an encoder, a quantizer and a decoder plus the normalization of its data and a declared
modality. ``forward`` runs the whole autoencoder on data in the model's input space and returns a
``ModelOutput``; modality subclasses (``ImageTokenizer``, ``AudioTokenizer``, ``TextTokenizer``) add
``encode`` / ``decode`` in their users' data formats. The Lightning module trains it as
``self.model``; the exported artifact is this model's tensors plus its config subtree
(``save_pretrained`` / ``from_pretrained``, the Hugging Face Hub conventions: a folder with
``config.json`` and ``model.safetensors``; a local folder works offline).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelHubMixin
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from vqkit.files import write_atomically
from vqkit.models.artifact import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    UnsafeConfigError,
    artifact_build,
    artifact_file,
    build_module,
    check_self_contained,
    read_config,
    self_contained_config,
    vqkit_version,
)
from vqkit.models.compat import check_pair
from vqkit.quantizers.base import Quantizer, QuantizerOutput


@dataclass
class ModelOutput:
    """What ``TokenizerModel.forward`` returns.

    Attributes:
        reconstruction: the decoder's output in the model's input space (normalized images or waveforms;
            text models: per-position byte logits).
        quantized: the quantizer's output (``z_q``, ``indices``, its own weighted ``loss``, ...).
        latents: (B, N, D) the encoder's tokens before quantization.
        extras: modality-specific tensors the loss terms and metrics read (text: length logits, targets, ...).
    """

    reconstruction: Tensor
    quantized: QuantizerOutput
    latents: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class Normalization(nn.Module):
    """``(x - mean) / std`` into the model, the inverse (clamped to ``range``) out of it.

    Args:
        mean: subtracted from the data.
        std: the data is divided by it (images: 0.5 / 0.5 map [0, 1] to [-1, 1]).
        range: clamp range of outputs in the natural scale; None for no clamp.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, range: tuple[float, float] | None = None) -> None:  # noqa: A002
        super().__init__()
        if not std:
            raise ValueError("normalization.std must not be 0")
        self.mean = float(mean)
        self.std = float(std)
        self.range = (float(range[0]), float(range[1])) if range is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        x = x.float() * self.std + self.mean
        return x.clamp(*self.range) if self.range is not None else x

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}, range={self.range}"


class TokenizerModel(nn.Module, ModelHubMixin):
    """Encoder -> quantizer -> decoder with the normalization of its data.

    The encoder maps normalized data to tokens ``(B, N, D)`` plus whatever shape information its
    decoder needs (``encoder(x) -> (tokens, shape)``, ``decoder(tokens, shape) -> x_hat``).

    Args:
        encoder: modality encoder; its ``latent_dim`` must equal the quantizer's ``dim``.
        decoder: modality decoder.
        quantizer: any backend of the quantizer contract.
        normalization: ``{mean, std, range}`` of the data (see ``Normalization``).

    Raises:
        IncompatibleQuantizerError: a quantizer this model cannot decode (``vqkit.models.compat``).
        ValueError: the encoder's width differs from the quantizer's.
    """

    modality: ClassVar[str]
    data_key: ClassVar[str]  # the batch entry of the data modules that holds this modality's data
    # True: the decoder reads a token vector at every position. A variable-length-token quantizer (``gq``) then
    # hands it the vector of the token covering each position (``hold_tokens`` / ``expand``) plus a learned
    # embedding of the position inside that token (``token_offsets``). False: the model reads the tokens itself.
    decodes_every_position: ClassVar[bool] = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        quantizer: Quantizer,
        normalization: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_pair(type(self), type(quantizer))
        latent_dim = getattr(encoder, "latent_dim", quantizer.dim)
        if latent_dim != quantizer.dim:
            raise ValueError(
                f"the encoder's latent_dim ({latent_dim}) differs from the quantizer's dim ({quantizer.dim}); "
                "set quantizer.dim=${model.encoder.latent_dim} (the default) or make them equal."
            )
        self.encoder = encoder
        self.decoder = decoder
        self.quantizer = quantizer
        self.normalization = Normalization(**dict(normalization or {}))
        self.config: dict[str, Any] | None = None  # the config subtree that builds this model (set by its builder)
        self.token_offsets: nn.Embedding | None = None
        if quantizer.variable_tokens and self.decodes_every_position:
            self.token_offsets = nn.Embedding(quantizer.max_token_len, quantizer.dim)
            nn.init.zeros_(self.token_offsets.weight)  # the decoder starts from the held token vectors alone

    # --- sizes ------------------------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """Number of codes K (per stage for multi-stage quantizers); ids lie in [0, K)."""
        return self.quantizer.codebook_size

    @property
    def token_dim(self) -> int:
        """Width D of the continuous tokens the decoder takes."""
        return self.quantizer.dim

    @property
    def soft(self) -> bool:
        """True when the decoder was trained on soft mixes of codes rather than hard codes."""
        return bool(getattr(self.quantizer, "soft", False))

    @property
    def device(self) -> torch.device:
        """Where the weights live; move them with ``.to(device)``."""
        return next(self.parameters()).device

    # --- the autoencoder -------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Data in its natural range -> the model's input space."""
        return self.normalization(x)

    def denormalize(self, x: Tensor) -> Tensor:
        """The model's output space -> the data's natural range (fp32, clamped to the range)."""
        return self.normalization.inverse(x)

    def forward(self, inputs: Tensor) -> ModelOutput:
        """Normalized data -> ``ModelOutput`` (reconstruction in the same space, quantizer output, latents)."""
        tokens, shape = self.encoder(inputs)
        q = self.quantizer(tokens)
        return ModelOutput(reconstruction=self.decoder(self.decoder_tokens(q), shape), quantized=q, latents=tokens)

    def decoder_tokens(self, q: QuantizerOutput) -> Tensor:
        """(B, N, D) what the decoder reads at every position: ``q.z_q``, or for variable-length tokens the
        vector of the token covering each position plus the embedding of the position inside it."""
        if self.token_offsets is None:
            return q.z_q
        return self._with_offsets(*self.quantizer.hold_tokens(q))

    def tokens_of_ids(self, ids: Tensor) -> Tensor:
        """(B, N, D) decoder tokens of ids (B, N) (residual: (B, N, s)); variable-length tokens: -1 inside each."""
        if self.token_offsets is None:
            return self.quantizer.decode(ids)
        return self._with_offsets(*self.quantizer.expand(ids))

    def _with_offsets(self, held: Tensor, weights: Tensor) -> Tensor:
        """Held token vectors (B, N, D) plus the position-in-token embedding their weights (B, N, L) select."""
        return held + weights.to(held.dtype) @ self.token_offsets.weight.to(held.dtype)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Data in its natural range -> reconstruction in the same range (eval mode not forced)."""
        return self.denormalize(self(self.normalize(x)).reconstruction)

    def encode(self, data: Any) -> Tensor:
        """Data -> ids (hard quantizers) or continuous tokens (soft quantizers); modalities override it."""
        raise NotImplementedError(f"{type(self).__name__} does not define encode")

    def decode(self, codes: Tensor) -> Tensor:
        """Ids or tokens -> data; modalities override it."""
        raise NotImplementedError(f"{type(self).__name__} does not define decode")

    # --- the artifact -----------------------------------------------------------------------------
    def artifact_config(self, **info: Any) -> dict[str, Any]:
        """``config.json`` of this model: the format header, derived sizes, ``model`` (its config subtree), ``info``.

        ``model`` is self-contained (``vqkit.models.artifact.self_contained_config``): file arguments such as
        vqgan_lc's ``codebook_path`` are replaced (the weights hold the codebook), so the artifact loads anywhere.

        Raises:
            ValueError: the model does not know its config (it was not built from one), or its config names a
                file no module class can do without.
        """
        if self.config is None:
            raise ValueError(
                f"this {type(self).__name__} was built in Python and does not know its config: build it with "
                "TokenizerModel.from_config({...}) or load it with from_pretrained / vqkit.load_tokenizer"
            )
        shapes = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        model = self_contained_config(self.config, shapes)
        try:
            check_self_contained(model, "model", shapes)
        except UnsafeConfigError as err:
            raise ValueError(f"this model cannot be written as a self-contained artifact: {err}") from None
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vqkit_version": vqkit_version(),
            "modality": self.modality,
            "codebook_size": self.codebook_size,
            "token_dim": self.token_dim,
            "soft": self.soft,
            "model": model,
            **copy.deepcopy(info),
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (atomically; nothing pickled)."""
        tensors = {
            name: t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for name, t in self.state_dict().items()
        }
        config = self.artifact_config(**getattr(self, "_artifact_info", {}))
        write_atomically(save_directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
        write_atomically(save_directory / CONFIG_NAME, (json.dumps(config, indent=2, allow_nan=False) + "\n").encode())

    def save_pretrained(self, save_directory: str | os.PathLike, *, info: Mapping[str, Any] | None = None,
                        **kwargs: Any) -> Any:
        """Write the artifact folder (``config.json`` + ``model.safetensors`` + a model card ``README.md``).

        Args:
            save_directory: the folder (created; its files are replaced atomically).
            info: extra plain data stored in ``config.json`` (e.g. ``{"training": {...}}``).
            **kwargs: ``huggingface_hub.ModelHubMixin.save_pretrained`` options (``push_to_hub``, ``repo_id``...).
        """
        self._artifact_info = dict(info or {})
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            del self._artifact_info

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: str | None = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         map_location: str | torch.device = "cpu", **_config_values: Any) -> TokenizerModel:
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                                            force_download=force_download, local_files_only=local_files_only,
                                            token=token, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
        model = load_model(folder, map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{folder} holds a {type(model).__name__} ({model.modality}), not a {cls.__name__}")
        return model

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config") -> TokenizerModel:
        """Build a model (fresh weights) from its config subtree; only vqkit ``nn.Module`` targets are allowed."""
        model = build_module(dict(config), source)
        if not isinstance(model, cls):
            raise ValueError(f"{source}: _target_ {config.get('_target_')!r} is not a {cls.__name__}")
        model.config = copy.deepcopy(dict(config))
        return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> TokenizerModel:
    """Load an image/audio artifact folder (``config.json`` + ``model.safetensors``) in eval mode, without unpickling.

    Reads those two files only (``artifact_build``: no file arguments, no builds, no sizes beyond the weights).

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        UnsafeConfigError: the config names something other than vqkit modules, a file, or a build, or sizes its
            weights cannot fill; or a file is a link out of the folder.
        ValueError: unreadable files, a config the quantizer contradicts, or weights that do not fit.
    """
    folder, config = read_config(path)
    source = str(folder / CONFIG_NAME)
    model_config = config.get("model")
    if not isinstance(model_config, dict):
        raise ValueError(f"{source} has no `model` object with the model's config")
    weights_file = artifact_file(folder, WEIGHTS_NAME)
    if not weights_file.is_file():
        raise FileNotFoundError(
            f"{weights_file} not found; a tokenizer directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    with artifact_build(model_config, f"{source}: model", weights_file):  # no files, no builds, sizes bounded
        model = TokenizerModel.from_config(model_config, f"{source}: model")
    derived = {"modality": model.modality, "codebook_size": model.codebook_size, "token_dim": model.token_dim,
               "soft": model.soft}
    stale = {key: config[key] for key in derived if key in config and config[key] != derived[key]}
    if stale:
        raise ValueError(f"{source} states {stale} but its model has {derived}; was the config edited by hand?")
    try:
        state = load_file(weights_file)
    except SafetensorError as err:
        raise ValueError(f"{weights_file} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights_file} does not fit the model of {source}: {err}") from err
    model.info = {k: v for k, v in config.items() if k not in ("model",)}
    return model.to(device).eval()
