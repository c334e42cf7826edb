"""The quantizer zoo: the default image tokenizer trained with every backend at K ~ 1,024, 16,384 and 262,144.

Every cell is ``make train`` with only the quantizer changed: the same composed ``conf/train.yaml`` (model
``image_conv``, the embedded photos, ``trainer.max_steps`` steps, seed, schedule), trained in-process by
``vqkit.train.train`` exactly as ``python -m vqkit.train`` composes it, plus the overrides of the backend's row
in ``SETTINGS`` (below: one small explicit table, name -> quantizer and its Hydra overrides per K). The run
then goes through ``vqkit.eval`` on the held-out test split (the held-out photos, as ``make train``'s test)
for PSNR, SSIM, LPIPS (offline VGG weights; rFID only with ``--fid``), codebook usage / perplexity / dead
codes over the whole split. Train step time is the mean of the steps after the first two (the first holds
the k-means init), timed from batch start to batch end by ``step_timer.StepTimer``.

Each cell runs in its own subprocess (address-space cap, timeout; out-of-memory / timed-out / failed cells
keep their status) in its own run folder ``<runs-dir>/<backend>_<K>/``. A re-run skips every cell whose
``zoo_metrics.json`` matches its settings; a cell without one (killed mid-run) is started again from an empty
folder. A backend that is not registered (or lacks an option its row sets) gets status ``missing-backend``.
Writes ``quantizer_zoo.csv``, ``.md`` and ``.png`` (PSNR per backend, grouped by K, usage on each bar) to
``--out-dir``, after every cell.

    python benchmarks/quantizer_zoo.py                                   # the whole grid
    python benchmarks/quantizer_zoo.py --backends vq fsq --sizes 1024    # a part of it
    python benchmarks/quantizer_zoo.py --finished-only                   # tables of what is finished, nothing run

Usage is bounded by the test tokens (column ``max usage``). The test split is ``make train``'s 128 held-out crops
(144 tokens each) at K = 1,024; at larger K more crops of the same held-out photos are drawn, up to 16 tokens per
code (``--test-tokens-per-code``) and at most 8,192 crops (``--max-test-crops``): 1,821 crops at 16,384, 8,192
at 262,144 (4.5 tokens per code, max usage 98.9%).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capped_cell import proc_status_kib, report_child_result, run_capped  # noqa: E402  (a sibling script module)
from result_files import fmt, write_csv  # noqa: E402

SCRIPT = Path(__file__).resolve()
BENCH_DIR = SCRIPT.parent
REPO = BENCH_DIR.parent
CONF_QUANTIZERS = REPO / "conf" / "quantizer"
RESULT_TAG = "QUANTIZER_ZOO_RESULT "
METRICS_FILE = "zoo_metrics.json"
MISSING = "missing-backend"
SIZES = (1024, 16384, 262144)
TOKENS_PER_IMAGE = 144  # (48 / 4)^2: the default model's f4 grid on the default 48 px crops
DEFAULT_TEST_CROPS = 128  # conf/data/photos.yaml val_samples: make train's test split


@dataclass(frozen=True)
class Backend:
    """One row of the zoo: which quantizer config, at which sizes, with which overrides.

    Attributes:
        quantizer: ``conf/quantizer/<quantizer>.yaml`` and its registry name.
        overrides: Hydra overrides of every cell of this row; ``{K}`` is replaced by the cell's codebook size
            and ``{codebooks}`` by the folder of shared codebook files (``<runs-dir>/codebooks``).
        levels: FSQ-style rows: nominal K -> per-dimension levels (K = their product), set as
            ``quantizer.levels``; other rows set ``quantizer.codebook_size=K``.
        skip: nominal K -> why this row is not run at that K (recorded as the cell's status).
    """

    quantizer: str
    overrides: tuple[str, ...] = ()
    levels: dict[int, tuple[int, ...]] | None = None
    skip: dict[int, str] = field(default_factory=dict)


# vqgan_lc's frozen codebook: k-means of EfficientNet-Lite0 features of the training crops, built once per K by
# the run's `prepare:` step (as conf/recipe/vqgan_lc_photos_cpu.yaml) into a folder shared by the re-runs.
_VQGAN_LC_CODEBOOK = (
    "quantizer.codebook_path={codebooks}/vqgan_lc_K{K}.safetensors",
    "prepare=[{_target_:vqkit.tools.codebook.ensure_codebook,path:${quantizer.codebook_path},"
    "num_codes:${quantizer.codebook_size},source:efficientnet_lite0,data:auto,num_images:${data.train_samples},"
    "image_size:128,encoder_size:128,iters:30}]",
)
# The settings of every backend (adjust after merging the new backends). Defaults of each conf/quantizer file
# unless a row says otherwise.
SETTINGS: dict[str, Backend] = {
    "vq": Backend("vq"),
    "ema_vq": Backend("ema_vq"),
    "softvq": Backend("softvq", skip={262144: "not run: soft assignments are N x K (2,304 x 262,144 floats = "
                                               "2.4 GB per step, x3 with backward)"}),
    "vqgan_lc": Backend("vqgan_lc", _VQGAN_LC_CODEBOOK,
                        skip={262144: "not run: its k-means pool (1,600 crops x 16 features = 25,600 vectors) "
                                      "is smaller than K"}),
    "vqbridge": Backend("vqbridge"),
    "fsq": Backend("fsq", levels={1024: (8, 5, 5, 5), 16384: (8, 8, 8, 6, 5), 262144: (8, 8, 8, 8, 8, 8)}),
    "lfq": Backend("lfq"),
    "bsq": Backend("bsq"),
    "simvq": Backend("simvq"),
    "ibq": Backend("ibq"),
    "vq_rotation": Backend("vq", ("quantizer.estimator=rotation",)),
}

COLUMNS = (
    "backend", "size", "K", "status", "psnr", "ssim", "lpips", "rfid", "usage", "max_usage", "test_crops", "perplexity",
    "dead", "step_s", "train_s", "total_s", "peak_rss_mib", "steps", "note", "run_dir",
)


# --- the cells --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One (backend, nominal size) of the grid: its overrides, its real K, or why it cannot run."""

    backend: str
    size: int
    codebook_size: int | None
    overrides: tuple[str, ...]
    status: str | None = None  # None: to run; else why not ("missing-backend", "not run: ...")
    note: str = ""


def _conf_keys(quantizer: str) -> set[str] | None:
    """Top-level keys of ``conf/quantizer/<quantizer>.yaml``, or None when there is no such file."""
    from omegaconf import OmegaConf

    path = CONF_QUANTIZERS / f"{quantizer}.yaml"
    return set(OmegaConf.load(path).keys()) if path.is_file() else None


def make_cell(name: str, size: int, codebooks: Path, registered: Sequence[str]) -> Cell:
    """The cell of row ``name`` of ``SETTINGS`` at nominal ``size``; a backend that is not registered, has no
    config or lacks an option the row sets is a ``missing-backend`` cell (its ``note`` says which)."""
    backend = SETTINGS[name]
    levels = backend.levels.get(size) if backend.levels is not None else None
    k = math.prod(levels) if levels is not None else None if backend.levels is not None else size
    sized = ([f"quantizer.levels=[{','.join(map(str, levels))}]"] if levels is not None
             else [f"quantizer.codebook_size={size}"])
    overrides = (f"quantizer={backend.quantizer}", *sized,
                 *(o.replace("{K}", str(k)).replace("{codebooks}", str(codebooks)) for o in backend.overrides))
    keys = _conf_keys(backend.quantizer)
    if backend.quantizer not in registered or keys is None:
        where = "not registered" if keys is not None else f"no conf/quantizer/{backend.quantizer}.yaml"
        return Cell(name, size, k, overrides, MISSING, f"{backend.quantizer}: {where}")
    unknown = [o.split("=")[0] for o in overrides
               if o.startswith("quantizer.") and o.split("=")[0].split(".")[1] not in keys]
    if unknown:
        return Cell(name, size, k, overrides, MISSING, f"{backend.quantizer} has no option {', '.join(unknown)}")
    if k is None:
        return Cell(name, size, None, overrides, f"not run: no levels for K ~ {size} in SETTINGS[{name!r}]")
    if size in backend.skip:
        return Cell(name, size, k, overrides, backend.skip[size])
    return Cell(name, size, k, overrides)


# --- child: one cell ----------------------------------------------------------------------------------------------
def _child_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate and summarise one cell in this (capped) process."""
    import torch

    from vqkit.config import compose_train_config
    from vqkit.eval import evaluate
    from vqkit.train import train

    torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    timer_file = run_dir / "step_times.json"
    overrides = [*spec["overrides"], f"trainer.max_steps={spec['steps']}", "callbacks.progress_bar.refresh_rate=0",
                 "+callbacks.step_timer._target_=step_timer.StepTimer", f"+callbacks.step_timer.path={timer_file}",
                 *spec["extra"]]
    started = time.perf_counter()
    result = train(compose_train_config(overrides, run_dir))
    train_s = time.perf_counter() - started
    more_crops = {"val_samples": spec["test_crops"]} if spec["test_crops"] else None
    report = evaluate(result["checkpoint"], more_crops, split="test",
                      out=str(run_dir / "eval_test"), lpips=spec["lpips"], fid=spec["fid"], latent_stats=False)
    m = report["metrics"]
    step_s = json.loads(timer_file.read_text())["step_s"]
    timed = step_s[2:] or step_s
    nan = float("nan")
    return {
        "psnr": m["psnr"], "ssim": m["ssim"], "lpips": m.get("lpips", nan), "rfid": m.get("rfid", nan),
        "usage": m["codebook/usage"], "perplexity": m["codebook/perplexity"], "dead": m["codebook/dead"],
        "max_usage": min(1.0, m["num_samples"] * spec["tokens_per_image"] / spec["codebook_size"]),
        "test_crops": int(m["num_samples"]),
        "step_s": sum(timed) / len(timed), "train_s": train_s, "total_s": time.perf_counter() - started,
        "peak_rss_mib": proc_status_kib("VmHWM") / 1024,
    }


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    report_child_result(RESULT_TAG, lambda: _child_cell(spec))


# --- parent ---------------------------------------------------------------------------------------------------------
def _finished(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The stored row of a cell finished with the same settings, else None."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return stored["row"] if stored.get("spec") == spec else None


def run_cell(cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    """The row of one cell: measured in a capped subprocess, read back from its run folder, or why not run."""
    from vqkit.files import write_atomically

    row: dict[str, Any] = {"backend": cell.backend, "size": cell.size, "K": cell.codebook_size, "steps": args.steps,
                           "note": cell.note}
    if cell.status is not None:
        return {**row, "status": cell.status}
    run_dir = args.runs_dir / f"{cell.backend}_{cell.codebook_size}"
    spec = {"overrides": list(cell.overrides), "extra": list(args.override), "steps": args.steps,
            "lpips": not args.no_lpips, "fid": args.fid, "test_crops": test_crops(cell.codebook_size, args)}
    done = _finished(run_dir, spec)
    if done is not None and (done["status"] == "ok" or not args.retry_failed):
        return {**done, "cached": True}
    if args.finished_only:
        return {**row, "status": "not run yet"}
    if run_dir.exists():  # killed mid-run, other settings, or a failure to retry: start from an empty folder
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    child = {**spec, "run_dir": str(run_dir), "threads": args.threads, "codebook_size": cell.codebook_size,
             "tokens_per_image": TOKENS_PER_IMAGE}
    result = run_capped(SCRIPT, child, args.mem_cap_gib, args.timeout, RESULT_TAG, f"timeout (> {args.timeout:g} s)")
    row = {**row, **result, "run_dir": str(run_dir)}
    write_atomically(run_dir / METRICS_FILE, json.dumps({"spec": spec, "row": row}, indent=2).encode())
    return row


def test_crops(codebook_size: int, args: argparse.Namespace) -> int | None:
    """Held-out crops of a cell's test: None (the run's own split, ``make train``'s 128 crops) where that gives
    ``--test-tokens-per-code`` tokens per code; at larger K more crops of the same held-out photos (at most
    ``--max-test-crops``), so that usage is not bounded by how few tokens the test has."""
    wanted = math.ceil(args.test_tokens_per_code * codebook_size / TOKENS_PER_IMAGE)
    return min(args.max_test_crops, wanted) if wanted > DEFAULT_TEST_CROPS else None


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| backend | K | status | PSNR | SSIM | LPIPS | usage | max usage | perplexity | dead | s / step "
            "| train s | total s | peak RSS MiB | note |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        ok = r["status"] == "ok"
        pct = (lambda v: f"{100 * v:.1f}%") if ok else (lambda v: "")
        cells = [r["backend"], fmt(r.get("K")), r["status"], fmt(r.get("psnr"), 4), fmt(r.get("ssim"), 3),
                 fmt(r.get("lpips"), 3), pct(r.get("usage")), pct(r.get("max_usage")),
                 fmt(r.get("perplexity"), 5), fmt(r.get("dead")), fmt(r.get("step_s"), 3),
                 f"{r['train_s']:.0f}" if ok else "", f"{r['total_s']:.0f}" if ok else "",
                 f"{r['peak_rss_mib']:.0f}" if ok else "", r.get("note") or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Test PSNR per backend, one group of bars per nominal K, usage printed on each bar; drawn with Pillow."""
    from PIL import Image, ImageDraw

    from vqkit.files import write_atomically

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#e377c2",
               "#bcbd22", "#393b79"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    ok = {(r["backend"], r["size"]): r for r in rows if r["status"] == "ok"}
    psnrs = [r["psnr"] for r in ok.values()]
    lo = math.floor(min(psnrs) - 1) if psnrs else 0.0
    hi = math.ceil(max(psnrs) + 0.5) if psnrs else 1.0
    width, height, margin, legend = 1400, 620, 70, 190
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = margin, width - legend - 20, margin, height - margin
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, y0 - 45), "quantizer zoo: test PSNR (dB) of the default image tokenizer per backend, grouped by "
              "K; label = test codebook usage; x = not ok (see table)", fill="black")
    for t in range(6):
        v = lo + (hi - lo) * t / 5
        y = y1 - (y1 - y0) * t / 5
        draw.line([x0 - 5, y, x0, y], fill="black")
        draw.text((x0 - 45, y - 6), f"{v:.1f}", fill="black")
    group_w = (x1 - x0) / max(len(sizes), 1)
    bar_w = group_w * 0.8 / max(len(backends), 1)
    for g, size in enumerate(sizes):
        gx = x0 + g * group_w + group_w * 0.1
        draw.text((gx + group_w * 0.3, y1 + 10), f"K ~ {size:,}", fill="black")
        for b, name in enumerate(backends):
            bx = gx + b * bar_w
            row = ok.get((name, size))
            colour = colours[b % len(colours)]
            if row is None:
                if any(r["backend"] == name and r["size"] == size for r in rows):
                    draw.text((bx + bar_w / 2 - 3, y1 - 14), "x", fill=colour)
                continue
            top = y1 - (min(max(row["psnr"], lo), hi) - lo) / (hi - lo) * (y1 - y0)
            draw.rectangle([bx + 1, top, bx + bar_w - 1, y1], fill=colour)
            draw.text((bx, top - 14), f"{100 * row['usage']:.0f}%", fill="black")
    for b, name in enumerate(backends):
        y = margin + 22 * b
        draw.rectangle([width - legend, y, width - legend + 15, y + 12], fill=colours[b % len(colours)])
        draw.text((width - legend + 22, y), name, fill="black")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    write_atomically(path, buffer.getvalue())


def _default_steps() -> int:
    """``trainer.max_steps`` of the composed ``conf/train.yaml``: what ``make train`` trains."""
    from vqkit.config import compose_config

    return int(compose_config("train", []).trainer.max_steps)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), help="rows of SETTINGS")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="nominal codebook sizes K")
    p.add_argument("--steps", type=int, default=None, help="training steps per cell (default: make train's)")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results", help="where the CSV / MD / PNG go")
    p.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("VQKIT_OUTPUTS", "outputs")) / "quantizer_zoo",
                   help="run folders <runs-dir>/<backend>_<K>/ (default: outputs/quantizer_zoo)")
    p.add_argument("--fid", action="store_true", help="also rFID (Inception v3; slower)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (VGG16)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: the tables and plot from the cells already finished, the others 'not run yet'")
    p.add_argument("--retry-failed", action="store_true", help="run again the cells stored with a status other than ok")
    p.add_argument("--test-tokens-per-code", type=float, default=16.0,
                   help="test crops are raised above make train's 128 until K x this many tokens are searched")
    p.add_argument("--max-test-crops", type=int, default=8192, help="cap on the test crops of one cell")
    p.add_argument("--threads", type=int, default=2, help="torch threads per cell")
    p.add_argument("--mem-cap-gib", type=float, default=16.0, help="address-space cap of each cell")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds before a cell counts as too slow")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides of every cell (last wins)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run (or read back) every cell of the grid; write CSV / Markdown / PNG after each; return the rows."""
    from tqdm import tqdm

    import vqkit.quantizers
    from vqkit.files import write_atomically

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    args.steps = args.steps or _default_steps()
    args.runs_dir = args.runs_dir.resolve()
    stem = args.out_dir / "quantizer_zoo"
    registered = vqkit.quantizers.list_quantizers()
    cells = [make_cell(b, s, args.runs_dir / "codebooks", registered) for s in args.sizes for b in args.backends]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tqdm(cells, desc="quantizer zoo", unit="cell", dynamic_ncols=True) as bar:
        for cell in bar:
            bar.set_postfix_str(f"{cell.backend} K~{cell.size}")
            row = run_cell(cell, args)
            rows.append(row)
            summary = (f"PSNR {row['psnr']:.2f} usage {100 * row['usage']:.1f}% {row['step_s']:.3g} s/step"
                       if row["status"] == "ok" else row["status"])
            cached = " (stored result, not re-run)" if row.get("cached") else ""
            bar.write(f"{cell.backend:<12} K={fmt(cell.codebook_size):<7} {summary}{cached} {row.get('note') or ''}")
            write_csv(stem.with_suffix(".csv"), rows, COLUMNS)
            plot(rows, stem.with_suffix(".png"))
            command = shlex.join(["python", "benchmarks/quantizer_zoo.py", *argv])
            md = "\n".join([
                "# Quantizer zoo: the default image tokenizer with every backend (CPU)",
                "",
                f"- Command: `{command}`",
                f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; wall of this "
                f"invocation {(time.perf_counter() - started) / 60:.1f} min (cached cells cost nothing); torch "
                f"{importlib.metadata.version('torch')}, {args.threads} torch thread(s) per cell",
                f"- Training: `python -m vqkit.train` defaults (model image_conv, the embedded photos, {args.steps} "
                "steps) with only the quantizer overrides of SETTINGS in benchmarks/quantizer_zoo.py"
                + (f", plus `{' '.join(args.override)}`" if args.override else ""),
                "- Test: `vqkit.eval` on the held-out photos (the test split of `make train`): PSNR, SSIM, "
                + ("LPIPS, " if not args.no_lpips else "") + ("rFID, " if args.fid else "")
                + "usage / perplexity / dead codes over the whole split; max usage = min(1, test tokens / K)",
                "- s / step: mean training step (forward, backward, optimizer) after the first two; train s: the "
                "whole `vqkit.train` run (incl. validation, test, checkpoints); total s: + the evaluation",
                f"- Each cell in its own process, address space capped at {args.mem_cap_gib:g} GiB, timeout "
                f"{args.timeout:g} s; run folders under `{args.runs_dir}`",
                "",
                markdown_table(rows),
                "",
            ])
            write_atomically(stem.with_suffix(".md"), md.encode())
    print(markdown_table(rows))
    print(f"\nwrote {stem}.csv, .md and .png")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2])
    else:
        main()
