"""Audio files <-> codes with a trained tokenizer artifact.

    python -m vqkit.tools.audio encode speech.wav speech.codes.safetensors --tokenizer DIR [--stages S]
    python -m vqkit.tools.audio decode speech.codes.safetensors speech.recon.wav [--tokenizer DIR] [--stages S]
        [--force]
    python -m vqkit.tools.audio info --tokenizer DIR

A codes file is safetensors with one tensor ``codes`` (ids (N, S) for residual quantizers, (N,)
for single-stage ones (variable-length tokens: -1 at the frames inside a token), int16 when the codebook
has at most 32,768 codes, else int32; float (N, D) for soft quantizers) and metadata: ``sample_rate``,
``length`` (samples of the input), ``hop_length``, ``num_stages``, ``channels`` (1: the models are mono;
multi-channel files are mixed down), ``codebook_size``, ``tokenizer`` (the artifact directory, so ``decode``
finds it without ``--tokenizer``) and ``tokenizer_digest`` (``vqkit.models.identity.model_digest``: sha256 of
the tokenizer's config and weights). Nothing is pickled.

``decode`` refuses codes written by another tokenizer (a different digest, sample rate or hop), naming both;
``--force`` decodes them anyway. Files without a digest (written before vqkit recorded it) are decoded with a
warning, after the sample rate and hop they state are checked.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import soundfile as sf
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from vqkit.files import write_atomically
from vqkit.models.audio import AudioTokenizer
from vqkit.models.identity import model_digest
from vqkit.tokenizers import load_tokenizer


def _load(path: str | Path, device: str) -> AudioTokenizer:
    tokenizer = load_tokenizer(path, device=device)
    if not isinstance(tokenizer, AudioTokenizer):
        raise ValueError(f"{path} holds a {tokenizer.modality} tokenizer, not an audio one")
    return tokenizer


def describe(tokenizer: AudioTokenizer, stages: int | None = None) -> str:
    """One line: rates, stages, codebook and bitrate."""
    used = stages or tokenizer.num_stages
    head = f"{tokenizer.sample_rate} Hz audio, {tokenizer.frame_rate:g} frames/s (hop {tokenizer.hop_length}), "
    if tokenizer.variable_tokens:
        target = tokenizer.quantizer.target_rate
        rate = (f"target {tokenizer.token_rate:g} tokens/s: {tokenizer.bitrate() / 1000:.3g} kbps" if target
                else f"at most {tokenizer.token_rate:g} tokens/s: <= {tokenizer.bitrate() / 1000:.3g} kbps")
        return (f"{head}variable-length tokens of {tokenizer.codebook_size} codes x up to "
                f"{tokenizer.quantizer.max_token_len} frames ({tokenizer.token_bits:.3g} bits each), {rate}")
    return (f"{head}{used}/{tokenizer.num_stages} stage(s) x {tokenizer.codebook_size} codes: "
            f"{tokenizer.bitrate(used) / 1000:.3g} kbps")


def realised(tokenizer: AudioTokenizer, codes: torch.Tensor) -> str:
    """What one file's ids cost: tokens, tokens/s and kbps (fixed-rate ids: the nominal rate)."""
    if codes.is_floating_point():
        return f"{codes.shape[0]} continuous tokens"
    tokens = int((codes >= 0).sum())
    seconds = codes.shape[0] / tokenizer.frame_rate
    return (f"{tokens} tokens in {seconds:.3g} s: {tokens / seconds:.4g} tokens/s, "
            f"{tokenizer.realised_bitrate(codes[None]) / 1000:.4g} kbps realised")


def identity(tokenizer: AudioTokenizer) -> dict[str, str]:
    """What a codes file records of the tokenizer that wrote it (and ``decode`` compares)."""
    return {
        "tokenizer_digest": model_digest(tokenizer),
        "sample_rate": str(tokenizer.sample_rate),
        "hop_length": str(tokenizer.hop_length),
        "codebook_size": str(tokenizer.codebook_size),
    }


def _describe_identity(values: dict[str, str]) -> str:
    digest = values.get("tokenizer_digest", "no digest")
    return (
        f"{digest[:19]} ({values.get('sample_rate', '?')} Hz, hop {values.get('hop_length', '?')}, "
        f"{values.get('codebook_size', '?')} codes)"
    )


def check_identity(metadata: dict[str, str], tokenizer: AudioTokenizer, codes_path: Path, directory: str | Path,
                   force: bool = False) -> None:
    """Refuse (``force``: warn) when the codes file was written by a tokenizer other than ``tokenizer``.

    Raises:
        ValueError: the recorded digest, sample rate, hop or codebook size differs from the tokenizer's.
    """
    ours = identity(tokenizer)
    recorded = {key: metadata[key] for key in ours if key in metadata}
    differ = sorted(key for key, value in recorded.items() if value != ours[key])
    if differ:
        message = (
            f"{codes_path} was written by another tokenizer (different {', '.join(differ)}): the file records "
            f"{_describe_identity(recorded)}, {directory} is {_describe_identity(ours)}. Decode it with the "
            f"tokenizer that encoded it (--tokenizer DIR; the file names {metadata.get('tokenizer', 'none')}), "
            "or pass --force to decode anyway (the audio is garbage unless the two models agree)"
        )
        if not force:
            raise ValueError(message)
        warnings.warn(f"--force: {message}", UserWarning, stacklevel=2)
    elif "tokenizer_digest" not in recorded:
        warnings.warn(
            f"{codes_path} does not record its tokenizer's digest (written by an older vqkit): it cannot be checked "
            f"that {directory} encoded it; decoding anyway. Encode the audio again to record it",
            UserWarning,
            stacklevel=2,
        )


def encode_file(
    audio_path: str | Path, codes_path: str | Path, tokenizer_dir: str | Path, stages: int | None = None,
    device: str = "cpu",
) -> dict[str, str]:
    """Tokenize one audio file into a codes file; returns the metadata written."""
    tokenizer = _load(tokenizer_dir, device)
    wave = tokenizer.as_waveform_batch(audio_path)
    codes = tokenizer.encode(wave, num_stages=stages)[0].cpu().contiguous()
    if not codes.is_floating_point():  # ids fit the narrowest integer type of the codebook
        codes = codes.to(torch.int16 if tokenizer.codebook_size <= 2**15 else torch.int32)
    metadata = {
        **identity(tokenizer),
        "length": str(wave.shape[-1]),
        "num_stages": str(stages or tokenizer.num_stages),
        "channels": "1",
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "source": Path(audio_path).name,
    }
    write_atomically(codes_path, save({"codes": codes}, metadata=metadata))
    return {**metadata, "description": describe(tokenizer, stages), "frames": str(codes.shape[0]),
            "realised": realised(tokenizer, codes)}


def decode_file(
    codes_path: str | Path, audio_path: str | Path, tokenizer_dir: str | Path | None = None,
    stages: int | None = None, device: str = "cpu", force: bool = False,
) -> dict[str, str]:
    """Reconstruct a 16-bit WAV from a codes file (``stages``: decode the first S stages only).

    The tokenizer must be the one that wrote the file (``check_identity``); ``force`` decodes with another.
    """
    codes_path = Path(codes_path)
    if not codes_path.is_file():
        raise FileNotFoundError(f"codes file not found: {codes_path}")
    try:
        with safe_open(str(codes_path), framework="pt") as f:
            metadata = f.metadata() or {}
        codes = load_file(str(codes_path))["codes"]
    except (SafetensorError, KeyError) as err:
        raise ValueError(
            f"{codes_path} is not a codes file written by `python -m vqkit.tools.audio encode`: {err}"
        ) from err
    directory = tokenizer_dir or metadata.get("tokenizer")
    if not directory:
        raise ValueError(f"{codes_path} does not name its tokenizer; pass --tokenizer DIR")
    tokenizer = _load(directory, device)
    check_identity(metadata, tokenizer, codes_path, directory, force)
    if stages is not None:
        if codes.dim() != 2 or not 1 <= stages <= codes.shape[-1]:
            raise ValueError(f"--stages {stages}: the file holds ids {tuple(codes.shape)} (frames, stages)")
        codes = codes[:, :stages]
    length = int(metadata["length"]) if "length" in metadata else None
    wave = tokenizer.decode(codes.unsqueeze(0), length=length)[0, 0].cpu().numpy()
    Path(audio_path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(audio_path), wave, tokenizer.sample_rate, subtype="PCM_16")
    used = codes.shape[-1] if codes.dim() == 2 and not codes.is_floating_point() else None
    return {"description": describe(tokenizer, used), "samples": str(wave.shape[0]),
            "realised": realised(tokenizer, codes)}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (1 on errors)."""
    parser = argparse.ArgumentParser(prog="python -m vqkit.tools.audio", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    enc = commands.add_parser("encode", help="audio file -> codes (.safetensors)")
    enc.add_argument("audio")
    enc.add_argument("codes")
    enc.add_argument("--tokenizer", required=True, help="tokenizer artifact directory (python -m vqkit.export)")
    enc.add_argument("--stages", type=int, default=None, help="keep the first S residual stages (lower bitrate)")
    dec = commands.add_parser("decode", help="codes (.safetensors) -> 16-bit WAV")
    dec.add_argument("codes")
    dec.add_argument("audio")
    dec.add_argument("--tokenizer", default=None, help="artifact directory (default: the one the codes file names)")
    dec.add_argument("--stages", type=int, default=None, help="decode the first S stages only")
    dec.add_argument("--force", action="store_true", help="decode codes written by another tokenizer anyway")
    info = commands.add_parser("info", help="print rates and bitrate of a tokenizer")
    info.add_argument("--tokenizer", required=True)
    for sub in (enc, dec, info):
        sub.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        status = _run(args)
    for warning in caught:
        print(f"vqkit.tools.audio: warning: {warning.message}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "encode":
            meta = encode_file(args.audio, args.codes, args.tokenizer, args.stages, args.device)
            print(f"vqkit.tools.audio: {args.audio} -> {args.codes}: {meta['frames']} frames, {meta['realised']} | "
                  f"{meta['description']}")
        elif args.command == "decode":
            meta = decode_file(args.codes, args.audio, args.tokenizer, args.stages, args.device, args.force)
            print(f"vqkit.tools.audio: {args.codes} -> {args.audio}: {meta['samples']} samples from "
                  f"{meta['realised']} | {meta['description']}")
        else:
            print(f"vqkit.tools.audio: {args.tokenizer}: {describe(_load(args.tokenizer, args.device))}")
    except (OSError, ValueError, TypeError) as err:
        print(f"vqkit.tools.audio: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
