"""Codebook utilization at large K: which quantizers keep every code in use?

Every backend is trained for the same fixed number of steps on the same fixed set of REAL
feature vectors and measured on held-out vectors of the same distribution:

* features: EfficientNet-Lite0 (ImageNet weights, installed offline) activations after its
  stride-8 stage (40 channels, one vector per position of an 8 x 8 grid) of random 64 px
  crops of the embedded photos (all 7 colour photos of vqkit.data.photos), reduced by PCA
  (fitted on the training pool) to ``--dim`` dims and scaled to unit mean variance. Training
  and held-out vectors come from disjoint crop draws (different seeds);
* training: each quantizer is the bottleneck of a linear autoencoder on the features (encoder and
  decoder: D x D Linear layers initialised to the identity), as in a tokenizer, where the encoder
  moves toward the codes through the commitment loss; ``--steps`` steps of ``--batch`` random
  training vectors, Adam ``--lr`` on every trainable parameter, loss = the quantizer's loss +
  ||decoder(z_q) - x||^2;
* held-out metrics: codes used (usage = used / K), perplexity of the code histogram, dead codes
  (K - used), feature reconstruction MSE ||x - decoder(decode(encode(encoder(x))))||^2 per element
  (soft quantizers: the hard code of the argmax); training time per step (mean over the steps after
  the first two), one-off set-up time (building the quantizer incl. k-means codebooks), peak RSS.

Backends: vqkit ``vq`` (k-means init), ``vq`` with dead-code revival, ``ema_vq`` (k-means init),
``softvq``, ``vqgan_lc`` (frozen codebook = mini-batch k-means of the training pool, as
``python -m vqkit.codebook`` builds it, + Linear projector with the paper's N(0, D^-1/2) init;
``vqgan_lc_identity``: the same with the projector starting at the identity, opt-in with
``--backends``), ``vqbridge`` (ViT bridge, automatic
patch size), and vector-quantize-pytorch's ``VectorQuantize(kmeans_init=True,
threshold_ema_dead_code=2)`` as the external reference (imported only here; ``make bench`` installs it).

Usage over N held-out vectors cannot exceed min(1, N / K); with codes hit at random it is about
1 - exp(-N / K), so ``--heldout`` should be several times the largest K.

Every cell runs in its own subprocess with an address-space cap and a timeout; out-of-memory,
killed and timed-out cells are written to the CSV with their status, never dropped. Outputs
``codebook_utilization.csv``, ``.md`` and ``.png`` (usage and MSE vs K, log x) in ``--out-dir``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capped_cell import run_capped  # noqa: E402  (a sibling script module)

SCRIPT = Path(__file__).resolve()
RESULT_TAG = "CODEBOOK_UTILIZATION_RESULT "
THREADS = 2  # default of --threads
GIB = 1 << 30
REFERENCE = "vqp.VectorQuantize"
REFERENCE_PACKAGE = "vector-quantize-pytorch"
BACKENDS = ("vq", "vq_revival", "ema_vq", "softvq", "vqgan_lc", "vqbridge", REFERENCE, "vqgan_lc_identity")
COLUMNS = (
    "backend", "K", "D", "status", "usage", "usage_bound_random", "perplexity", "dead_codes", "mse", "step_s",
    "setup_s", "eval_s", "peak_rss_mib", "steps", "batch", "heldout",
)
CROP_SIZE = 64
STAGE_BLOCKS = 3  # EfficientNet-Lite0 blocks[:3]: stride 8, 40 channels


# --- features (child) -----------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _crop_features(num_vectors: int, seed: int, batch: int = 128) -> Any:
    """(num_vectors, 40) EfficientNet-Lite0 stride-8 features of random crops of all embedded photos."""
    import torch

    from vqkit.data.photos import RandomPhotoCrops, load_photo, skimage_data_dir
    from vqkit.layers.feature_encoder import IMAGENET_MEAN, IMAGENET_STD, FrozenFeatureEncoder

    names = ["astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "chelsea.png",
             "coffee.png"]
    photos = [load_photo(skimage_data_dir() / n, 256) for n in names]
    crops = RandomPhotoCrops(photos, CROP_SIZE, 1 << 30, seed, (0.15, 1.0), True)
    net = FrozenFeatureEncoder("efficientnet_lite0", image_size=CROP_SIZE).model
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    per_crop = (CROP_SIZE // 8) ** 2
    out, key = [], 0
    batch = min(batch, -(-num_vectors // per_crop))
    with torch.no_grad():
        while sum(o.shape[0] for o in out) < num_vectors:
            images = torch.stack([crops[key + i]["image"] for i in range(batch)])
            key += batch
            x = net.bn1(net.conv_stem((images.float() - mean) / std))
            for block in net.blocks[:STAGE_BLOCKS]:
                x = block(x)
            out.append(x.flatten(2).transpose(1, 2).reshape(batch * per_crop, -1))
    return torch.cat(out)[:num_vectors]


def _child_features(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    train = _crop_features(spec["train"], spec["seed"])
    heldout = _crop_features(spec["heldout"], spec["seed"] + 1)
    mean = train.mean(0)
    # PCA on the training pool; the same projection and scale for the held-out vectors
    cov = torch.cov((train - mean).T)
    _, vecs = torch.linalg.eigh(cov)
    basis = vecs[:, -spec["dim"]:].flip(1)  # top components first
    train_p = (train - mean) @ basis
    scale = train_p.pow(2).mean().sqrt()
    source = f"efficientnet_lite0 blocks[:{STAGE_BLOCKS}] of {CROP_SIZE}px photo crops, PCA {spec['dim']}"
    heldout_p = ((heldout - mean) @ basis) / scale
    torch.save({"train": (train_p / scale).contiguous(), "heldout": heldout_p.contiguous(), "source": source},
               spec["path"])
    return {"train": train.shape[0], "heldout": heldout.shape[0], "raw_dim": train.shape[1]}


# --- one cell (child) -------------------------------------------------------------------------------
def _build(backend: str, k: int, d: int, train: Any, seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    if backend == REFERENCE:
        from vector_quantize_pytorch import VectorQuantize

        return VectorQuantize(dim=d, codebook_size=k, kmeans_init=True, threshold_ema_dead_code=2,
                              commitment_weight=0.25)
    from vqkit.quantizers import build_quantizer

    if backend == "vq":
        return build_quantizer("vq", dim=d, codebook_size=k, kmeans_init=True)
    if backend == "vq_revival":
        return build_quantizer("vq", dim=d, codebook_size=k, kmeans_init=True, dead_code_threshold=1.0 / 16)
    if backend == "ema_vq":
        return build_quantizer("ema_vq", dim=d, codebook_size=k, kmeans_init=True)
    if backend == "softvq":
        return build_quantizer("softvq", dim=d, codebook_size=k)
    if backend == "vqbridge":
        return build_quantizer("vqbridge", dim=d, codebook_size=k, width=128, max_tokens=256)
    if backend in ("vqgan_lc", "vqgan_lc_identity"):
        import tempfile

        from vqkit.codebook import minibatch_kmeans
        from vqkit.quantizers.codebook_file import save_codebook

        centres, _ = minibatch_kmeans(train, k, iters=20, batch_size=8192,
                                      generator=torch.Generator().manual_seed(seed), assign_all=False)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_codebook(Path(tmp) / "codebook.safetensors", centres, {"source": "benchmark k-means"})
            init = "identity" if backend == "vqgan_lc_identity" else "normal"
            return build_quantizer("vqgan_lc", dim=d, codebook_size=k, codebook_path=str(path), projector_init=init)
    raise ValueError(f"unknown backend {backend!r}")


def _child_cell(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import vqkit.quantizers  # noqa: F401  (imports are not part of the set-up time)

    torch.set_num_threads(spec["threads"])
    data = torch.load(spec["features"])
    train, heldout = data["train"], data["heldout"]
    k, d, backend = spec["k"], train.shape[1], spec["backend"]
    start = time.perf_counter()
    q = _build(backend, k, d, train, spec["seed"]).train()
    setup_s = time.perf_counter() - start
    is_ref = backend == REFERENCE
    encoder, decoder = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
    for layer in (encoder, decoder):
        torch.nn.init.eye_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    params = [p for m in (q, encoder, decoder) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=spec["lr"])
    gen = torch.Generator().manual_seed(spec["seed"])
    times = []
    for _ in range(spec["steps"]):
        x = train[torch.randint(0, train.shape[0], (spec["batch"],), generator=gen)].unsqueeze(0)
        t0 = time.perf_counter()
        z = encoder(x)
        if is_ref:
            z_q, _, loss = q(z)
        else:
            out = q(z)
            z_q, loss = out.z_q, out.loss
        loss = loss.sum() + (decoder(z_q) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = sum(times[2:]) / max(len(times) - 2, 1)

    q.eval()
    t0 = time.perf_counter()
    counts = torch.zeros(k, dtype=torch.long)
    sq_err = 0.0
    # the reference and softvq materialise chunk x K distances / probabilities: small chunks for them
    chunk = 2048 if is_ref or backend == "softvq" else spec["eval_chunk"]
    with torch.no_grad():
        for i in range(0, heldout.shape[0], chunk):
            x = heldout[i : i + chunk].unsqueeze(0)
            z = encoder(x)
            if is_ref:
                z_q, ids, _ = q(z)
            else:
                ids = q.encode(z)
                z_q = q.decode(ids)  # soft quantizers: the hard code of the argmax
            counts += torch.bincount(ids.reshape(-1), minlength=k)
            sq_err += float((decoder(z_q) - x).pow(2).sum())
    eval_s = time.perf_counter() - t0
    p = counts.double() / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    used = int((counts > 0).sum())
    return {
        "usage": used / k,
        "perplexity": perplexity,
        "dead_codes": k - used,
        "mse": sq_err / heldout.numel(),
        "step_s": step_s,
        "setup_s": setup_s,
        "eval_s": eval_s,
        "peak_rss_mib": _proc_status_kib("VmHWM") / 1024,
    }


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    try:
        result = _child_features(spec) if spec["task"] == "features" else _child_cell(spec)
        result["status"] = "ok"
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "can't allocate memory" not in str(err):
            raise
        result = {"status": "oom"}
    print(RESULT_TAG + json.dumps(result), flush=True)


# --- parent -------------------------------------------------------------------------------------------
def _run_child(spec: dict[str, Any], mem_cap_gib: float, timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a child capped to ``mem_cap_gib`` of address space; the result always has a status."""
    return run_capped(SCRIPT, spec, mem_cap_gib, timeout, RESULT_TAG, f"too slow (timeout > {timeout:g} s)")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _fmt(row.get(c), 6) for c in COLUMNS})


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| backend | K | status | usage | 1 - exp(-N/K) | perplexity | dead codes | MSE | s / step | set-up s "
            "| eval s | peak RSS MiB |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [r["backend"], str(r["K"]), r["status"],
                 f"{100 * r['usage']:.2f}%" if ok else "", f"{100 * r['usage_bound_random']:.1f}%",
                 _fmt(r.get("perplexity"), 5),
                 _fmt(r.get("dead_codes")), _fmt(r.get("mse"), 3), _fmt(r.get("step_s"), 3),
                 _fmt(r.get("setup_s"), 3), _fmt(r.get("eval_s"), 3),
                 f"{r['peak_rss_mib']:.0f}" if ok else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels, usage and held-out MSE vs K (log x), one line per backend; drawn with Pillow."""
    import math

    from PIL import Image, ImageDraw

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    ks = sorted({r["K"] for r in rows})
    ok = [r for r in rows if r["status"] == "ok"]
    width, height, margin = 1300, 560, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    panel_w = (width - 360) // 2
    mses = [r["mse"] for r in ok if r["mse"] > 0]
    lo_mse = math.log10(min(mses)) if mses else -3
    hi_mse = math.log10(max(mses)) if mses else 0
    if hi_mse - lo_mse < 1e-6:
        lo_mse, hi_mse = lo_mse - 0.5, hi_mse + 0.5
    panels = [("codebook usage on held-out vectors", "usage", 0.0, 1.0, False),
              ("held-out MSE (log)", "mse", lo_mse, hi_mse, True)]
    lx = math.log10(min(ks)), math.log10(max(ks)) if len(ks) > 1 else math.log10(min(ks)) + 1
    for p, (title, key, lo, hi, log_y) in enumerate(panels):
        x0 = margin + p * (panel_w + margin)
        y0, y1 = margin, height - margin
        draw.rectangle([x0, y0, x0 + panel_w, y1], outline="black")
        draw.text((x0, y0 - 25), title, fill="black")
        for k in ks:
            x = x0 + (math.log10(k) - lx[0]) / max(lx[1] - lx[0], 1e-9) * panel_w
            draw.line([x, y1, x, y1 + 5], fill="black")
            draw.text((x - 20, y1 + 8), f"{k:,}", fill="black")
        for t in range(5):
            v = lo + (hi - lo) * t / 4
            y = y1 - (y1 - y0) * t / 4
            draw.line([x0 - 5, y, x0, y], fill="black")
            draw.text((x0 - 60, y - 6), f"{10 ** v:.2g}" if log_y else f"{v:.2f}", fill="black")
        draw.text((x0 + panel_w // 2 - 40, y1 + 28), "K (log scale)", fill="black")
        for b, name in enumerate(backends):
            pts = []
            for r in sorted((r for r in ok if r["backend"] == name), key=lambda r: r["K"]):
                v = math.log10(max(r[key], 1e-12)) if log_y else r[key]
                x = x0 + (math.log10(r["K"]) - lx[0]) / max(lx[1] - lx[0], 1e-9) * panel_w
                y = y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y1 - y0)
                pts.append((x, y))
            colour = colours[b % len(colours)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=3)
            for x, y in pts:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    for b, name in enumerate(backends):
        y = margin + 22 * b
        draw.rectangle([width - 270, y, width - 255, y + 12], fill=colours[b % len(colours)])
        draw.text((width - 248, y), name, fill="black")
    draw.text((width - 270, margin + 22 * len(backends) + 10), "missing point = not ok (see table)", fill="black")
    img.save(path)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 16384, 65536, 262144], help="codebook sizes K")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS[:-1]),
                   help="default: all but vqgan_lc_identity (a diagnostic variant)")
    p.add_argument("--dim", type=int, default=8, help="feature dims after PCA")
    p.add_argument("--train", type=int, default=327680, help="training pool vectors")
    p.add_argument("--heldout", type=int, default=327680, help="held-out vectors")
    p.add_argument("--steps", type=int, default=100, help="training steps per cell")
    p.add_argument("--batch", type=int, default=512, help="vectors per training step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--eval-chunk", type=int, default=65536, help="held-out vectors per encode call")
    p.add_argument("--mem-cap-gib", type=float, default=16.0, help="address-space cap of each cell")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds before a cell counts as too slow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch threads per cell (1 is faster when the cores are oversubscribed)")
    p.add_argument("--features", type=Path, default=None, help="feature cache (.pt); built when missing")
    p.add_argument("--out-dir", type=Path, default=SCRIPT.parent / "results")
    args = p.parse_args(argv)
    if args.heldout < max(args.ks):
        print(f"warning: {args.heldout} held-out vectors < K={max(args.ks)}: usage at that K is capped at "
              f"{args.heldout / max(args.ks):.2f}", file=sys.stderr)
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Build (or reuse) the feature set, run every cell, write CSV / Markdown / PNG; return the rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / "codebook_utilization"
    features = args.features or Path(f"/tmp/vqkit_codebook_utilization_{args.dim}d_{args.train}_{args.heldout}"
                                     f"_s{args.seed}.pt")
    started = time.perf_counter()
    if not features.is_file():
        print(f"extracting {args.train} + {args.heldout} feature vectors -> {features} ...", flush=True)
        spec = {"task": "features", "threads": args.threads, "train": args.train, "heldout": args.heldout,
                "dim": args.dim, "seed": args.seed, "path": str(features)}
        result = _run_child(spec, args.mem_cap_gib, 3600)
        if result["status"] != "ok":
            raise SystemExit(f"feature extraction failed: {result['status']}")
    feature_s = time.perf_counter() - started
    ref_version = (importlib.metadata.version(REFERENCE_PACKAGE)
                   if importlib.util.find_spec("vector_quantize_pytorch") else None)

    rows: list[dict[str, Any]] = []
    cells = [(k, b) for k in args.ks for b in args.backends]
    for i, (k, backend) in enumerate(cells, 1):
        t0 = time.perf_counter()
        if backend == REFERENCE and ref_version is None:
            result = {"status": f"skipped ({REFERENCE_PACKAGE} not installed: `make bench` installs it)"}
        else:
            spec = {"task": "cell", "threads": args.threads, "backend": backend, "k": k, "features": str(features),
                    "steps": args.steps, "batch": args.batch, "lr": args.lr, "eval_chunk": args.eval_chunk,
                    "seed": args.seed}
            result = _run_child(spec, args.mem_cap_gib, args.timeout)
        bound = 1.0 - math.exp(-args.heldout / k)  # expected usage if every vector hit a random code
        rows.append({"backend": backend, "K": k, "D": args.dim, "steps": args.steps, "batch": args.batch,
                     "heldout": args.heldout, "usage_bound_random": bound, **result})
        _write_csv(stem.with_suffix(".csv"), rows)
        summary = (f"usage {100 * result['usage']:.2f}% mse {result['mse']:.4g} {result['step_s']:.3g} s/step"
                   if result["status"] == "ok" else result["status"])
        print(f"[{i}/{len(cells)}] {backend:<20} K={k:<7} {summary} (cell wall {time.perf_counter() - t0:.0f} s)",
              flush=True)

    table = _markdown_table(rows)
    command = shlex.join(["python", "benchmarks/codebook_utilization.py", *argv])
    niceness = os.nice(0)
    md = "\n".join([
        "# Codebook utilization at large K (CPU)",
        "",
        f"- Command: `{command}`" + (f" (run at niceness {niceness}, 2 cores shared with other jobs)"
                                      if niceness else ""),
        f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; total wall "
        f"{(time.perf_counter() - started) / 60:.1f} min (features {feature_s:.0f} s, cached in {features})",
        f"- torch {importlib.metadata.version('torch')}, {args.threads} torch thread(s) per cell; {REFERENCE_PACKAGE} "
        + (ref_version or "not installed"),
        f"- Features: EfficientNet-Lite0 stride-8 activations of {CROP_SIZE}px crops of the 7 embedded photos, "
        f"PCA to {args.dim} dims; {args.train:,} training vectors, {args.heldout:,} held-out vectors (other crops)",
        f"- Training: quantizer as the bottleneck of a linear autoencoder (identity-initialised D x D encoder and "
        f"decoder), {args.steps} steps x {args.batch} vectors, Adam lr {args.lr:g}; metrics on the held-out set; "
        "MSE per element of decoder(code) vs the feature (soft quantizers: hard code of the argmax)",
        f"- Each cell in its own process, address space capped at {args.mem_cap_gib:g} GiB, timeout "
        f"{args.timeout:g} s; usage cannot exceed min(1, held-out / K) and with random hits is about "
        "1 - exp(-held-out / K) (column `1 - exp(-N/K)`); set-up s includes building the quantizer (k-means for "
        "vqgan_lc, k-means init of vq / ema_vq happens in the first training step)",
        "",
        table,
        "",
    ])
    stem.with_suffix(".md").write_text(md)
    plot(rows, stem.with_suffix(".png"))
    print()
    print(table)
    print(f"\nwrote {stem}.csv, .md and .png")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2])
    else:
        main()
