"""Variable bitrate of a residual-VQ audio tokenizer: quality when decoding with the first s stages.

For each s = 1 .. S the test split of the embedded speech (or ``--root``, any audio folder, split as
``data=audio_folder`` splits it) is encoded with the tokenizer artifact, decoded from the first s
stages, and scored against the input: SI-SNR (dB, mean over clips) and log-mel distance
(``vqkit.metrics.audio``, n_fft 512, 64 mels), plus the bitrate in kbps. Clips are the evaluation
segments of the data module (``--segment`` seconds, up to ``--max-segments`` per file).

    python benchmarks/audio_bitrate.py --tokenizer artifacts/speech-rvq [--root DIR] [--out-dir DIR]

Writes ``audio_bitrate.csv`` and ``audio_bitrate.md`` to ``--out-dir`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from tqdm import tqdm

from vqkit.data.audio import AudioFolderDataModule, EmbeddedSpeechDataModule
from vqkit.metrics.audio import MelDistance, ScaleInvariantSNR
from vqkit.tokenizers import AudioTokenizer, load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="audio tokenizer artifact (python -m vqkit.export)")
    parser.add_argument("--root", default=None, help="audio folder (default: the embedded speech)")
    parser.add_argument("--segment", type=float, default=1.0, help="seconds per clip")
    parser.add_argument("--max-segments", type=int, default=3, help="clips per test file")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    tok = load_tokenizer(args.tokenizer)
    if not isinstance(tok, AudioTokenizer) or tok.quantizer.num_stages is None:
        raise SystemExit(f"{args.tokenizer} is not an audio tokenizer with a residual quantizer")
    options = dict(sample_rate=tok.sample_rate, segment_seconds=args.segment, batch_size=args.batch,
                   num_workers=0, max_eval_segments=args.max_segments)
    if args.root is None:  # the split of the speech data config (conf/data/speech.yaml)
        data = EmbeddedSpeechDataModule(val_fraction=0.08, test_fraction=0.08, **options)
    else:
        data = AudioFolderDataModule(args.root, **options)
    data.setup()
    stages = tok.num_stages
    si_snr = [ScaleInvariantSNR() for _ in range(stages)]
    mel = [MelDistance(tok.sample_rate, n_fft=512, n_mels=64) for _ in range(stages)]
    clips = 0
    for batch in tqdm(data.test_dataloader(), desc="test clips"):
        x = batch["audio"]
        codes = tok.encode(x)  # (B, N, S)
        clips += x.shape[0]
        for s in range(stages):
            x_hat = tok.decode(codes[..., : s + 1], length=x.shape[-1])
            si_snr[s].update(x_hat, x)
            mel[s].update(x_hat, x)
    rows = [
        {
            "stages": s + 1,
            "kbps": round(tok.bitrate(s + 1) / 1000, 3),
            "si_snr_db": round(float(si_snr[s].compute()), 3),
            "mel_distance": round(float(mel[s].compute()), 4),
            "clips": clips,
        }
        for s in range(stages)
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / "audio_bitrate.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| stages | kbps | SI-SNR (dB) | mel distance |", "|---|---|---|---|"]
    lines += [f"| {r['stages']} | {r['kbps']} | {r['si_snr_db']} | {r['mel_distance']} |" for r in rows]
    (args.out_dir / "audio_bitrate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{clips} test clips of {args.segment} s; wrote {args.out_dir / 'audio_bitrate.csv'}")


if __name__ == "__main__":
    main()
