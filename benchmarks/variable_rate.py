"""Variable-rate (gq) against fixed-rate speech tokens at equal bitrate: quality vs kbps on held-out speech.

Every cell trains the same CPU speech codec (``recipe=audio_gq_speech_cpu``'s encoder, decoder, losses, optimizer
and steps; 8 kHz, 200 frames/s) with only the quantizer changed:

- ``fixed``: one EMA-VQ codebook of K codes per frame (``recipe=audio_rvq_speech_cpu`` with one stage, the same
  model): log2(K) bits x 200 frames/s, K = 16 / 64 / 256 / 1,024 -> 0.8 / 1.2 / 1.6 / 2.0 kbps;
- ``gq``: the gated quantizer over one EMA-VQ codebook of 1,024 codes, tokens of at most 8 frames, held at a
  target rate r tokens per frame by its rate controller (``quantizer.target_rate``): 13 bits a token (code
  and length), r = 0.25 / 0.375 / 0.5 / 0.75 -> 0.65 / 0.975 / 1.3 / 1.95 kbps at the target;
- ``gq_budget``: the same with ``quantizer.rate_control=budget``: every clip gets round(r x frames) tokens where
  the gate's logits are highest, and ``quantizer.expansion=straight_through`` (the hard hold in the forward of
  training too; with the soft hold the per-clip threshold leaves many gates near 0.5 and the decoder trains on
  expansions that eval never gives) (cells ``gqb_<r>``).

Each cell is trained in its own capped subprocess, exported as a tokenizer artifact and evaluated through it on
the test split of the embedded speech (or ``--root``, any audio folder): clips of ``--segment`` s, SI-SNR (dB) and
log-mel distance (``vqkit.metrics.audio``), and the bitrate each clip's ids really cost
(``AudioTokenizer.realised_bitrate``: tokens x bits / seconds), its mean and its spread over clips (the
target is met when the mean lies within 5%). A cell is skipped on a re-run when its ``cell.json`` holds the same
settings. Writes ``variable_rate.csv`` / ``.md`` (one row a cell), ``variable_rate.png`` (SI-SNR and mel
distance vs kbps, one curve per method) and ``variable_rate_boundaries.png`` (one clip's waveform with the
token ends of one gq cell drawn on it) to ``--out-dir``.

    python benchmarks/variable_rate.py                          # every cell (about 3 min each on 2 cores)
    python benchmarks/variable_rate.py --cells gq_0.5 fixed_256 # a part
    python benchmarks/variable_rate.py --finished-only          # tables and plots of the finished cells
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capped_cell import run_capped, run_script  # noqa: E402  (a sibling script module)
from result_files import fmt, write_csv  # noqa: E402

SCRIPT = Path(__file__).resolve()
RESULT_TAG = "VARIABLE_RATE_RESULT "
CELL_FILE = "cell.json"
FIXED_SIZES = (16, 64, 256, 1024)
GQ_RATES = (0.25, 0.375, 0.5, 0.75)
GQ_CODES, GQ_MAX_LEN = 1024, 8
BOUNDARY_CELL = "gq_0.5"


def cells() -> dict[str, dict[str, Any]]:
    """name -> {method, overrides}: the grid of the module docstring."""
    grid: dict[str, dict[str, Any]] = {}
    for k in FIXED_SIZES:
        grid[f"fixed_{k}"] = {"method": "fixed", "overrides": [
            "recipe=audio_rvq_speech_cpu", "quantizer.num_stages=1", f"quantizer.codebook_size={k}",
            "quantizer.dropout_prob=0.0"]}
    for r in GQ_RATES:
        grid[f"gq_{r:g}"] = {"method": "gq", "overrides": [
            "recipe=audio_gq_speech_cpu", f"quantizer.codebook_size={GQ_CODES}",
            f"quantizer.max_token_len={GQ_MAX_LEN}", f"quantizer.target_rate={r:g}"], "target_rate": r}
        grid[f"gqb_{r:g}"] = {"method": "gq_budget", "overrides": [
            *grid[f"gq_{r:g}"]["overrides"], "quantizer.rate_control=budget", "quantizer.expansion=straight_through"],
            "target_rate": r}
    return grid


COLUMNS = ("cell", "method", "status", "target_kbps", "kbps", "kbps_min", "kbps_max", "tokens_per_s",
           "target_tokens_per_s", "rate_error", "si_snr_db", "mel_distance", "clips", "steps", "train_s", "note")


# --- child: one cell ----------------------------------------------------------------------------------------------
def _data(tok: Any, spec: dict[str, Any]) -> Any:
    from vqkit.data.audio import AudioFolderDataModule, EmbeddedSpeechDataModule

    options = dict(sample_rate=tok.sample_rate, segment_seconds=spec["segment"], batch_size=16, num_workers=0,
                   max_eval_segments=spec["max_segments"])
    if spec["root"] is None:  # the split of conf/data/speech.yaml, which the cells train on
        data = EmbeddedSpeechDataModule(val_fraction=0.08, test_fraction=0.08, **options)
    else:
        data = AudioFolderDataModule(spec["root"], **options)
    data.setup()
    return data


def _child_cell(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from vqkit.config import compose_train_config
    from vqkit.export import export_tokenizer
    from vqkit.metrics.audio import MelDistance, ScaleInvariantSNR
    from vqkit.tokenizers import load_tokenizer
    from vqkit.train import train

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    overrides = [*spec["overrides"], f"trainer.max_steps={spec['steps']}", "callbacks.progress_bar.refresh_rate=0"]
    started = time.perf_counter()
    result = train(compose_train_config(overrides, run_dir / "run"))
    train_s = time.perf_counter() - started
    export_tokenizer(result["checkpoint"], run_dir / "artifact")
    tok = load_tokenizer(run_dir / "artifact")
    si_snr, mel = ScaleInvariantSNR(), MelDistance(tok.sample_rate, n_fft=512, n_mels=64)
    clip_kbps: list[float] = []
    tokens = frames = 0
    boundary_clip: dict[str, Any] | None = None
    with torch.no_grad():
        for batch in _data(tok, spec).test_dataloader():
            x = batch["audio"]
            ids = tok.encode(x)
            x_hat = tok.decode(ids, length=x.shape[-1])
            si_snr.update(x_hat, x)
            mel.update(x_hat, x)
            clip_kbps += [tok.realised_bitrate(ids[i:i + 1]) / 1000 for i in range(ids.shape[0])]
            tokens += int((ids >= 0).sum())
            frames += ids.shape[0] * ids.shape[1]
            if boundary_clip is None:  # the clip of the first batch with the widest loudness range
                frame_energy = x[:, 0, : ids.shape[1] * tok.hop_length].reshape(x.shape[0], ids.shape[1], -1)
                level = 10 * torch.log10(frame_energy.square().mean(-1) + 1e-8)
                i = int((level.amax(1) - level.amin(1)).argmax())
                boundary_clip = {"wave": x[i, 0].tolist(), "token_ends": (ids[i] >= 0).nonzero()[:, 0].tolist(),
                                 "hop": tok.hop_length, "sample_rate": tok.sample_rate}
    (run_dir / "boundaries.json").write_text(json.dumps(boundary_clip))
    tokens_per_s = tokens / (frames / tok.frame_rate)
    return {
        "target_kbps": tok.bitrate() / 1000, "kbps": sum(clip_kbps) / len(clip_kbps), "kbps_min": min(clip_kbps),
        "kbps_max": max(clip_kbps), "tokens_per_s": tokens_per_s, "target_tokens_per_s": tok.token_rate,
        "rate_error": tokens_per_s / tok.token_rate - 1, "si_snr_db": float(si_snr.compute()),
        "mel_distance": float(mel.compute()), "clips": len(clip_kbps), "train_s": train_s,
    }


# --- parent ---------------------------------------------------------------------------------------------------------
def composed_quantizer(overrides: list[str]) -> dict[str, Any]:
    """The cell's resolved ``model.quantizer`` config: a stored cell is stale when a recipe it uses changed."""
    import tempfile

    from omegaconf import OmegaConf

    from vqkit.config import compose_train_config

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(overrides, Path(tmp))
        return OmegaConf.to_container(cfg.model.quantizer, resolve=True)


def run_cell(name: str, cell: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from vqkit.files import write_atomically

    run_dir = args.runs_dir / name
    overrides = [*cell["overrides"], *args.override]
    spec = {"overrides": overrides, "quantizer": composed_quantizer(overrides), "steps": args.steps,
            "segment": args.segment, "max_segments": args.max_segments, "root": args.root}
    stored = run_dir / CELL_FILE
    if stored.is_file():
        saved = json.loads(stored.read_text())
        if saved["spec"] == spec and (saved["row"]["status"] == "ok" or not args.retry_failed):
            return {**saved["row"], "cached": True}
    row: dict[str, Any] = {"cell": name, "method": cell["method"], "steps": args.steps, "note": ""}
    if args.finished_only:
        return {**row, "status": "not run yet"}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    result = run_capped(SCRIPT, {**spec, "run_dir": str(run_dir), "threads": args.threads}, args.mem_cap_gib,
                        args.timeout, RESULT_TAG, f"timeout (> {args.timeout:g} s)")
    row = {**row, **result}
    write_atomically(stored, json.dumps({"spec": spec, "row": row}, indent=2).encode())
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| cell | method | status | kbps (realised, mean) | kbps min-max over clips | target kbps | tokens/s | "
             "rate error | SI-SNR (dB) | mel distance | clips | train s |", "|" + "---|" * 12]
    for r in rows:
        ok = r["status"] == "ok"
        lines.append("| " + " | ".join([
            r["cell"], r["method"], r["status"], fmt(r.get("kbps"), 4),
            f"{r['kbps_min']:.3g}-{r['kbps_max']:.3g}" if ok else "", fmt(r.get("target_kbps"), 4),
            fmt(r.get("tokens_per_s"), 4), f"{100 * r['rate_error']:+.1f}%" if ok else "",
            fmt(r.get("si_snr_db"), 4), fmt(r.get("mel_distance"), 4), fmt(r.get("clips")),
            f"{r['train_s']:.0f}" if ok else ""]) + " |")
    return "\n".join(lines)


def _save_png(img: Any, path: Path) -> None:
    from vqkit.files import write_atomically

    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_atomically(path, buffer.getvalue())


def plot_quality(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels, SI-SNR and mel distance against realised kbps, one polyline per method (Pillow)."""
    from PIL import Image, ImageDraw

    ok = [r for r in rows if r["status"] == "ok"]
    colours = {"fixed": "#1f77b4", "gq": "#d62728", "gq_budget": "#2ca02c"}
    width, height, margin = 1200, 480, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 10), "held-out speech: quality vs realised bitrate (blue: fixed-rate EMA-VQ, red: gq at "
              "target rates, threshold control; green: gq, per-clip budget)", fill="black")
    if not ok:
        _save_png(img, path)
        return
    kbps = [r["kbps"] for r in ok]
    x_lo, x_hi = 0.0, max(kbps) * 1.1
    panel_w = (width - 3 * margin) / 2
    for p, (key, label) in enumerate((("si_snr_db", "SI-SNR (dB, higher is better)"),
                                      ("mel_distance", "mel distance (lower is better)"))):
        values = [r[key] for r in ok]
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
        x0 = margin + p * (panel_w + margin)
        x1, y0, y1 = x0 + panel_w, margin, height - margin

        def at(x: float, y: float, x0: float = x0, x1: float = x1, y0: float = y0, y1: float = y1,
               lo: float = lo, hi: float = hi) -> tuple[float, float]:
            return x0 + (x - x_lo) / (x_hi - x_lo) * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0)

        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, y0 - 18), label, fill="black")
        draw.text((x1 - 40, y1 + 22), "kbps", fill="black")
        for t in range(6):
            xv, yv = x_lo + (x_hi - x_lo) * t / 5, lo + (hi - lo) * t / 5
            draw.text((at(xv, lo)[0] - 10, y1 + 5), f"{xv:.2g}", fill="black")
            draw.text((x0 - 45, at(x_lo, yv)[1] - 6), f"{yv:.3g}", fill="black")
        for method, colour in colours.items():
            points = sorted((r["kbps"], r[key]) for r in ok if r["method"] == method)
            xy = [at(x, y) for x, y in points]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for x, y in xy:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    _save_png(img, path)


def plot_boundaries(clip: dict[str, Any], title: str, path: Path) -> None:
    """The waveform of one clip (min/max per pixel column) with a red line at the end of each token."""
    from PIL import Image, ImageDraw

    wave, hop, sr = clip["wave"], clip["hop"], clip["sample_rate"]
    width, height, margin = 1400, 360, 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = margin, width - margin, margin, height - margin
    mid, half = (y0 + y1) / 2, (y1 - y0) / 2
    peak = max(max(abs(v) for v in wave), 1e-6)
    per_px = len(wave) / (x1 - x0)
    for t in clip["token_ends"]:
        x = x0 + (t + 1) * hop / per_px
        draw.line([x, y0, x, y1], fill="#f4a0a0")
    for px in range(int(x1 - x0)):
        chunk = wave[int(px * per_px): max(int((px + 1) * per_px), int(px * per_px) + 1)]
        draw.line([x0 + px, mid - max(chunk) / peak * half, x0 + px, mid - min(chunk) / peak * half], fill="#1f1f1f")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    seconds = len(wave) / sr
    draw.text((x0, 10), f"{title}: {len(clip['token_ends'])} tokens in {seconds:.2g} s "
              f"({len(clip['token_ends']) / seconds:.0f} tokens/s); red = end of a token", fill="black")
    for t in range(11):
        draw.text((x0 + (x1 - x0) * t / 10 - 10, y1 + 8), f"{seconds * t / 10:.2f}s", fill="black")
    _save_png(img, path)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", choices=list(cells()), default=list(cells()))
    p.add_argument("--steps", type=int, default=700, help="training steps per cell (the recipes' 700)")
    p.add_argument("--root", default=None, help="an audio folder to test on (default: the embedded speech)")
    p.add_argument("--segment", type=float, default=1.0, help="seconds per test clip")
    p.add_argument("--max-segments", type=int, default=3, help="test clips per file")
    p.add_argument("--runs-dir", type=Path, default=Path("outputs") / "variable_rate")
    p.add_argument("--out-dir", type=Path, default=SCRIPT.parent / "results")
    p.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    p.add_argument("--mem-cap-gib", type=float, default=8.0)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of every cell (last wins)")
    p.add_argument("--finished-only", action="store_true", help="train nothing: tables of the finished cells")
    p.add_argument("--retry-failed", action="store_true")
    args = p.parse_args(argv)
    if args.root is not None and not Path(args.root).is_dir():
        p.error(f"--root {args.root}: no such folder (give a folder of wav/flac/ogg files)")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from vqkit.files import write_atomically

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    args.runs_dir = args.runs_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    grid = cells()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name in tqdm(args.cells, desc="variable rate", unit="cell"):
        row = run_cell(name, grid[name], args)
        rows.append(row)
        tqdm.write(f"{name:<10} " + (f"{row['kbps']:.3g} kbps, SI-SNR {row['si_snr_db']:.2f} dB, mel "
                                     f"{row['mel_distance']:.3f}" if row["status"] == "ok" else row["status"]))
        stem = args.out_dir / "variable_rate"
        write_csv(stem.with_suffix(".csv"), rows, COLUMNS)
        plot_quality(rows, stem.with_suffix(".png"))
        md = "\n".join([
            "# Variable-rate (gq) vs fixed-rate speech tokens (CPU)", "",
            f"- Command: `{shlex.join(['python', 'benchmarks/variable_rate.py', *argv])}`",
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; wall of this invocation "
            f"{(time.perf_counter() - started) / 60:.1f} min; {args.threads} torch thread(s) per cell; "
            f"{args.steps} training steps per cell",
            f"- Test: {'the embedded speech' if args.root is None else args.root} test split, clips of "
            f"{args.segment:g} s (up to {args.max_segments} per file); kbps = what each clip's ids cost "
            "(tokens x bits / s), rate error = realised tokens/s vs the target", "",
            markdown_table(rows), ""])
        write_atomically(stem.with_suffix(".md"), md.encode())
    boundary = args.runs_dir / BOUNDARY_CELL / "boundaries.json"
    shown = next((r for r in rows if r["cell"] == BOUNDARY_CELL and r["status"] == "ok"), None)
    if boundary.is_file() and shown is not None:
        plot_boundaries(json.loads(boundary.read_text()),
                        f"{BOUNDARY_CELL} (target {shown['target_tokens_per_s']:g} tokens/s)",
                        args.out_dir / "variable_rate_boundaries.png")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    run_script(RESULT_TAG, _child_cell, main)
