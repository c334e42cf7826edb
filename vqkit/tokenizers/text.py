"""GQTokenizer: a trained GQ-VAE as a lossless, deterministic text tokenizer (drop-in for BPE).

Vocabulary (exported once from a checkpoint, ``vqkit.tokenizers.text_vocab``): ids 0..255 are the
single bytes (the fallback that makes any bytes encodable); ids 256.. are the distinct multi-byte
strings the codes stand for: by default each code decoded alone with the length head choosing how many
bytes it stands for (codes that decode to a single byte or to a string already listed add nothing);
optionally pruned to a chosen vocabulary size by the tokens each string saves on training text.
Decoding is concatenation.

Encoding, two modes (``mode``), both lossless for every str without lone surrogates (``encode`` refuses
those, which UTF-8 cannot hold) and for any bytes (``encode_bytes``):

``vocab`` (default): the text is cut into GPT-2 pre-tokens (or kept whole for a tokenizer trained
    ``across`` pre-tokens); each is segmented into the fewest vocabulary entries (dynamic programming;
    ties go to the longest first piece). No network runs, results are cached per pre-token. This is
    exactly a Unigram model with equal piece scores, so it exports to a Hugging Face ``tokenizers``
    file (``to_hf_tokenizer``) that gives the same number of tokens.
``model``: the trained network segments the bytes (gate > 0.5, row ends, cuts at the max token
    length), as during training; each segment becomes its vocabulary entry, or the fewest entries
    when the segment's string is not in the vocabulary (then bytes at worst). Costs a network forward
    pass per row of bytes.

Artifact: ``config.json`` (format header, settings), ``vocab.json`` (hex strings by id),
``model.safetensors`` (only with the network, needed for ``mode="model"``) and ``tokenizer.json``
(the Hugging Face export). Nothing is pickled. The network is a ``vqkit.models.TextTokenizer``; its
config subtree is ``config["model"]`` (``_target_: vqkit.models.TextTokenizer``), rebuilt by the safe
builder (``TokenizerModel.from_config``). Artifacts of format version 1 (the network's parts at the top of
``config["model"]``, the gate beside the quantizer) are read too: their config and weight names are
converted on load (``legacy_model_config``, ``legacy_state_dict``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from vqkit.modalities.text_bytes import SEGMENTATIONS, byte_pieces, rows_from_pieces
from vqkit.models.artifact import artifact_build, artifact_file, resolve_target, vqkit_version
from vqkit.models.text import TextTokenizer
from vqkit.tokenizers.artifact import (
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    register_tokenizer,
    write_atomically,
)
from vqkit.tokenizers.text_vocab import fewest_pieces, model_vocabulary, network_segments, sample_rows

VOCAB_NAME = "vocab.json"
HF_NAME = "tokenizer.json"
ENCODE_MODES = ("vocab", "model")
LEGACY_PARTS = ("encoder", "decoder", "quantizer", "gate")  # format version 1: the network's parts, gate apart
LEGACY_MODULE_TARGETS = ("vqkit.lit.GQModule", "vqkit.lit.gq_module.GQModule")  # vqkit 0.1 training checkpoints


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (what HF ``ByteLevel`` uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int):
    """The BPE baseline: a Hugging Face ``tokenizers`` byte-level BPE (GPT-2 pre-tokenizer, 256-byte alphabet,
    no special tokens) trained on ``texts`` with at most ``vocab_size`` entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


@register_tokenizer
class GQTokenizer:
    """Lossless byte-level tokenizer with a GQ-VAE vocabulary (see the module docstring).

    Args:
        vocab: id -> bytes; the first 256 entries must be the single bytes 0..255.
        segmentation: ``within`` (segments inside GPT-2 pre-tokens) or ``across`` (whole texts).
        max_token_len: the longest entry the model could produce (K).
        mode: ``vocab`` or ``model``.
        model: the trained ``vqkit.models.TextTokenizer`` (required for ``mode="model"``).
        row_len: bytes per network row in ``model`` mode (the training rows' width).
        config: extra artifact config (model ``_target_`` nodes, training info), kept by ``save``.
    """

    modality = "text"

    def __init__(
        self,
        vocab: Sequence[bytes],
        segmentation: str = "within",
        max_token_len: int = 10,
        mode: str = "vocab",
        model: TextTokenizer | None = None,
        row_len: int = 16,
        config: dict[str, Any] | None = None,
    ) -> None:
        if len(vocab) < 256 or any(vocab[b] != bytes([b]) for b in range(256)):
            raise ValueError("a GQTokenizer vocabulary starts with the 256 single bytes (ids 0..255)")
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary holds duplicate entries")
        if segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
        self.vocab = [bytes(v) for v in vocab]
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        self.segmentation = segmentation
        self.max_piece_len = max(len(v) for v in self.vocab)
        self.max_token_len = max_token_len
        self.row_len = row_len
        self.model = model.eval() if model is not None else None
        self.extra_config = dict(config or {})
        self._segment_cached = lru_cache(maxsize=1 << 18)(self._segment_bytes)
        self.mode = mode
        self.set_mode(mode)

    def set_mode(self, mode: str) -> GQTokenizer:
        """Choose the encoding mode (``vocab`` or ``model``); returns self."""
        if mode not in ENCODE_MODES:
            raise ValueError(f"mode must be one of {ENCODE_MODES}, got {mode!r}")
        if mode == "model" and self.model is None:
            raise ValueError("mode='model' needs the network: export with the model (the default) and load it")
        self.mode = mode
        return self

    # --- sizes -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vqkit_version": vqkit_version(),
            "modality": self.modality,
            "vocab_size": self.vocab_size,
            "segmentation": self.segmentation,
            "max_token_len": self.max_token_len,
            "row_len": self.row_len,
            "mode": self.mode,
            **self.extra_config,
        }

    # --- encoding ---------------------------------------------------------------------------------
    def _segment_bytes(self, data: bytes) -> tuple[int, ...]:
        """Fewest vocabulary ids whose bytes concatenate to ``data`` (ties: longest first piece)."""
        return fewest_pieces(data, self.ids, self.max_piece_len)

    def _model_segments(self, pieces: list[bytes]) -> list[bytes]:
        """Bytes of the segments the network makes of ``pieces`` (rows of ``row_len`` bytes per piece)."""
        rows = torch.from_numpy(rows_from_pieces(pieces, self.row_len).astype("int64"))
        return [piece for _, piece in network_segments(self.model, rows)]

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of arbitrary bytes (valid UTF-8 or not); ``decode_bytes`` gives ``data`` back."""
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"encode_bytes expects bytes, got {type(data).__name__}")
        pieces = byte_pieces(bytes(data), self.segmentation)
        if self.mode == "model":
            pieces = self._model_segments(pieces)
        ids: list[int] = []
        for piece in pieces:
            if self.segmentation == "across" and self.mode == "vocab" and len(piece) > 4096:
                for start in range(0, len(piece), 4096):  # bounded DP size; the cut costs at most one token
                    ids.extend(self._segment_bytes(piece[start : start + 4096]))
            else:
                ids.extend(self._segment_cached(piece))
        return ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; ``decode(encode(text)) == text`` for every str without lone surrogates.

        A lone surrogate (a code point U+D800..U+DFFF on its own, half of a UTF-16 pair) has no UTF-8 encoding
        and is refused; ``encode_bytes`` takes any bytes.

        Raises:
            TypeError: not a str.
            ValueError: the str holds lone surrogates: the message gives the first one, its index and the fixes.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__} (use encode_bytes for bytes)")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as err:
            lone = sum(0xD800 <= ord(c) <= 0xDFFF for c in text)
            first = text[err.start]
            raise ValueError(
                f"text holds {lone} lone surrogate(s), the first U+{ord(first):04X} at index {err.start}: half of a "
                "UTF-16 pair, which UTF-8 cannot encode, so encode refuses it (it is lossless for every str "
                "without lone surrogates). Join pairs split in two with "
                "text.encode('utf-16', 'surrogatepass').decode('utf-16'), replace them with "
                "text.encode('utf-8', 'replace').decode(), or, for text decoded with errors='surrogateescape' "
                "(undecodable bytes), tokenize its bytes: encode_bytes(text.encode('utf-8', 'surrogateescape'))"
            ) from err
        return self.encode_bytes(data)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    # --- decoding ---------------------------------------------------------------------------------
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of ``ids``.

        Raises:
            ValueError: an id is not an integer in [0, vocab_size).
        """
        out = []
        n = len(self.vocab)
        for i in ids:
            if isinstance(i, torch.Tensor):
                i = int(i)
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise ValueError(f"token id {i!r} is not an integer in [0, {n}) (vocab_size {n})")
            out.append(self.vocab[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; byte sequences that are not valid UTF-8 (arbitrary ids) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_batch(self, batch: Sequence[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def token_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id])

    # --- Hugging Face export ------------------------------------------------------------------------
    def to_hf_tokenizer(self):
        """A ``tokenizers.Tokenizer``: byte-level GPT-2 pre-tokenizer + Unigram with equal scores (= ``vocab`` mode).

        Token counts equal ``encode`` in ``vocab`` mode (both minimise the number of pieces per
        pre-token); ids may differ where several segmentations are equally short. ``model`` mode is
        not representable (it runs the network).
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        table = byte_to_unicode()
        pieces = [("".join(table[b] for b in piece), -1.0) for piece in self.vocab]
        tok = Tokenizer(models.Unigram(pieces, unk_id=None, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=self.segmentation == "within")
        tok.decoder = decoders.ByteLevel()
        return tok

    # --- artifact ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, with_model: bool = True) -> Path:
        """Write the artifact directory (see the module docstring); returns it.

        The network is stored when ``with_model`` and the tokenizer knows its config (``config["model"]``,
        set by ``export_text_checkpoint`` / ``from_model_config``); otherwise the artifact is vocabulary-only.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.config
        with_model = with_model and self.model is not None and isinstance(self.extra_config.get("model"), dict)
        config["mode"] = self.mode if with_model else "vocab"
        if with_model:
            state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            write_atomically(path / WEIGHTS_NAME, save(state))
        else:
            config.pop("model", None)
            (path / WEIGHTS_NAME).unlink(missing_ok=True)
        write_atomically(path / VOCAB_NAME, json.dumps([v.hex() for v in self.vocab]).encode())
        write_atomically(path / HF_NAME, self.to_hf_tokenizer().to_str().encode())
        write_atomically(path / CONFIG_NAME, json.dumps(config, indent=2).encode())
        return path

    @classmethod
    def from_artifact(cls, path: Path, config: dict[str, Any], device: str | torch.device = "cpu") -> GQTokenizer:
        vocab_file = artifact_file(Path(path), VOCAB_NAME)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{vocab_file} not found; a text tokenizer directory holds {VOCAB_NAME}")
        try:
            vocab = [bytes.fromhex(h) for h in json.loads(vocab_file.read_text())]
        except (ValueError, TypeError) as err:
            raise ValueError(f"{vocab_file} is not a list of hex strings: {err}") from err
        model = None
        if isinstance(config.get("model"), dict):
            weights = artifact_file(Path(path), WEIGHTS_NAME)
            if not weights.is_file():
                raise FileNotFoundError(f"{weights} not found but config.json describes a model")
            source = str(Path(path) / CONFIG_NAME)
            legacy = "_target_" not in config["model"]
            model_config = legacy_model_config(config["model"], source) if legacy else config["model"]
            with artifact_build(model_config, f"{source}: model", weights):  # no files, no builds, bounded sizes
                model = build_autoencoder(model_config, source=source)
            state = load_file(str(weights))
            if legacy:
                state = legacy_state_dict(state)
                config = {**config, "model": model.config}
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(f"the weights of {weights} do not fit the model in config.json: {err}") from err
            model = model.to(device)
        extra = {k: v for k, v in config.items() if k not in _HEADER_KEYS}
        return cls(vocab, config.get("segmentation", "within"), int(config.get("max_token_len", 10)),
                   config.get("mode", "vocab") if model is not None else "vocab", model,
                   int(config.get("row_len", 16)), extra)

    @classmethod
    def from_model(cls, model, segmentation: str = "within", row_len: int = 16, mode: str = "vocab",
                   config: dict[str, Any] | None = None, vocab_rows: torch.Tensor | None = None,
                   strings: str = "decoded", vocab_size: int | None = None, prune: str = "usage") -> GQTokenizer:
        """Export the vocabulary of a trained ``TextTokenizer`` (or of a ``TokenizerModule`` training one).

        Args:
            vocab_rows: training byte rows (R, row_len) to count the network's segments on; needed for
                ``strings="empirical"`` and ``vocab_size`` (``vqkit.tokenizers.text_vocab.sample_rows``).
            strings: ``decoded`` (default, the paper's export: each code decoded alone) or ``empirical``
                (each code's most frequent segment on ``vocab_rows``).
            vocab_size: None (default): every distinct code string. N: the 256 bytes and N - 256 of the code
                strings, those that save the most tokens on ``vocab_rows``.
            prune: ``usage`` (default: by the tokens each entry saves when the rows are encoded) or ``gates``
                (by how often the network's gates cut it); see ``vqkit.tokenizers.text_vocab``.
        """
        model = getattr(model, "model", model).eval()
        if not isinstance(model, TextTokenizer):
            raise TypeError(f"GQTokenizer.from_model needs a vqkit.models.TextTokenizer, got {type(model).__name__}")
        vocab = model_vocabulary(model, strings, vocab_rows, vocab_size, prune)
        return cls(vocab, segmentation, model.max_token_len, mode, model, row_len, config)


_HEADER_KEYS = ("format", "format_version", "vqkit_version", "modality", "vocab_size", "segmentation",
                "max_token_len", "row_len", "mode")


def tokenizer_from_model_config(model_config: dict[str, Any], segmentation: str = "within", row_len: int = 16,
                                 mode: str = "vocab", state_dict: dict[str, Any] | None = None,
                                 **vocab_options: Any) -> GQTokenizer:
    """The tokenizer of a ``TextTokenizer`` config subtree with ``state_dict`` (the model's own keys) loaded (strict).

    ``vocab_options`` (``vocab_rows``, ``strings``, ``vocab_size``, ``prune``) go to ``GQTokenizer.from_model``.

    Raises:
        UnsafeConfigError: the config names something other than vqkit modules.
        RuntimeError: the weights do not fit the model.
    """
    model = build_autoencoder(model_config, source="model config")
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return GQTokenizer.from_model(model, segmentation, row_len, mode, {"model": model.config}, **vocab_options)


def build_autoencoder(model_config: dict[str, Any], source: str) -> TextTokenizer:
    """A ``TextTokenizer`` (fresh weights) from its config subtree, by the safe builder.

    A format-version-1 config (``encoder``/``decoder``/``quantizer``/``gate`` parts without a ``_target_``
    of their own) is converted first (``legacy_model_config``).

    Raises:
        UnsafeConfigError: the config names something other than vqkit modules.
        ValueError: not a text model config.
    """
    if isinstance(model_config, dict) and "_target_" not in model_config and "encoder" in model_config:
        model_config = legacy_model_config(model_config, source)
    return TextTokenizer.from_config(model_config, source)


def legacy_model_config(config: dict[str, Any], source: str = "model config") -> dict[str, Any]:
    """A format-version-1 text model config (vqkit 0.1: parts and options of ``GatedTextAutoencoder``) as the
    ``TextTokenizer`` config of the same network: the quantizer becomes the gated quantizer's inner backend,
    the gate's options move into it. Training-only options (alpha, gamma, reservoir) are dropped."""
    parts = {name: config.get(name) for name in LEGACY_PARTS}
    for name in ("encoder", "decoder", "quantizer"):
        if not isinstance(parts[name], dict) or "_target_" not in parts[name]:
            raise ValueError(f"{source}: model.{name} must be an object with a _target_ (format version 1)")
    inner = dict(parts["quantizer"])
    inner_cls = resolve_target(inner.pop("_target_"), f"{source}: model.quantizer")
    gated = {
        "_target_": "vqkit.quantizers.GatedQuantizer",
        "dim": inner.pop("dim"),
        "codebook_size": inner.pop("codebook_size"),
        "inner": getattr(inner_cls, "registry_name", None),
        "inner_options": inner,
        "segmentation": config.get("segmentation", "learned"),
        "fixed_length": config.get("fixed_length", 8),
        "max_token_len": parts["decoder"].get("max_token_len", 10),
    }
    if gated["inner"] is None:
        raise ValueError(f"{source}: model.quantizer {inner_cls.__name__} is not a registered quantizer backend")
    gate = parts["gate"]
    if isinstance(gate, dict):
        gated.update({k: gate[k] for k in ("width", "depth", "num_heads", "kernel") if k in gate})
    return {"_target_": "vqkit.models.TextTokenizer", "encoder": parts["encoder"], "decoder": parts["decoder"],
            "quantizer": gated}


def legacy_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Weights of a format-version-1 text network renamed for ``TextTokenizer``: ``gate.*`` -> ``quantizer.gate.*``,
    ``quantizer.*`` -> ``quantizer.inner.*``; the old model's step counter ``steps`` is dropped."""
    renamed = {}
    for name, tensor in state.items():
        if name == "steps":
            continue
        if name.startswith("gate."):
            name = "quantizer." + name
        elif name.startswith("quantizer."):
            name = "quantizer.inner." + name[len("quantizer."):]
        renamed[name] = tensor
    return renamed


def vocabulary_shortfall(vocab_size: int, tokenizer: GQTokenizer, strings: str) -> str:
    """Why a vocabulary exported with ``vocab_size`` holds fewer entries, and what to do (config.json, export line)."""
    pieces = tokenizer.vocab_size - 256
    codes = tokenizer.model.codebook_size if tokenizer.model is not None else "its"
    source = "decode to" if strings == "decoded" else "end, on the vocabulary rows, as"
    return (
        f"vocab_size={vocab_size} asks for {vocab_size - 256} learned pieces beside the 256 bytes, but the model's "
        f"{codes} codes {source} only {pieces} distinct multi-byte strings, so the vocabulary holds "
        f"{tokenizer.vocab_size} entries; ask for vocab_size<={tokenizer.vocab_size}, or train longer or with a larger "
        "quantizer.codebook_size for more distinct pieces"
    )


def export_text_checkpoint(checkpoint: dict[str, Any], ckpt_path: Path, out: str | os.PathLike,
                           vocab_size: int | None = None, strings: str = "decoded", prune: str = "usage",
                           vocab_rows: int = 100_000, documents: Sequence[bytes] | None = None,
                           ) -> GQTokenizer:
    """Write the GQTokenizer artifact of a ``vqkit.train`` checkpoint of a text model into ``out``.

    The checkpoint's ``vqkit_config["model"]`` is the ``TextTokenizer`` config subtree and its ``state_dict``
    holds the model's weights as ``model.*`` (the ``TokenizerModule`` layout). Checkpoints of vqkit 0.1's
    ``GQModule`` are converted (``legacy_model_config``, ``legacy_state_dict``).

    Args:
        vocab_size, strings, prune: see ``GQTokenizer.from_model`` (defaults: the paper's export, no text needed).
        vocab_rows: how many training rows (a seeded random subset) to count segments on when needed.
        documents: the training text (bytes per document) to count segments on; needed for ``vocab_size``
            and ``strings="empirical"`` (``vqkit.export`` reads the run's own training split or ``vocab_text``).

    Raises:
        ValueError: the checkpoint's weights do not fit the model of its stored config, or the training
            text cannot be read.
    """
    run_config = checkpoint.get("vqkit_config") or {}
    data_config = run_config.get("data") or {}
    segmentation = data_config.get("segmentation", "within")
    row_len = int(data_config.get("row_len", 16))
    state = {k[len("model."):]: v for k, v in (checkpoint.get("state_dict") or {}).items() if k.startswith("model.")}
    model_config = dict(run_config.get("model") or {})
    if model_config.get("_target_") in LEGACY_MODULE_TARGETS:  # a vqkit 0.1 checkpoint of GQModule
        model_config = legacy_model_config({k: v for k, v in model_config.items() if k != "_target_"},
                                           f"{ckpt_path} (vqkit_config)")
        state = legacy_state_dict(state)
    vocab_options: dict[str, Any] = {}
    if vocab_size is not None or strings != "decoded":
        if documents is None:
            raise ValueError("vocab_size / vocab_strings=empirical count segments on training text: pass documents")
        rows = sample_rows(documents, row_len, segmentation, vocab_rows)
        vocab_options = {"vocab_rows": rows, "strings": strings, "vocab_size": vocab_size, "prune": prune}
    try:
        tokenizer = tokenizer_from_model_config(model_config, segmentation, row_len, "vocab", state, **vocab_options)
    except RuntimeError as err:
        raise ValueError(f"the weights of {ckpt_path} do not fit the model of its vqkit_config: {err}") from err
    if vocab_options:
        tokenizer.extra_config["vocabulary"] = {
            "strings": strings, "requested_size": vocab_size, "prune": prune,
            "rows": int(vocab_options["vocab_rows"].shape[0]),
        }
        if vocab_size is not None and tokenizer.vocab_size < vocab_size:
            tokenizer.extra_config["vocabulary"].update(
                available_size=tokenizer.vocab_size, note=vocabulary_shortfall(vocab_size, tokenizer, strings))
    tokenizer.extra_config["training"] = {
        "checkpoint": ckpt_path.name, "step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
    }
    tokenizer.save(out)
    return tokenizer
