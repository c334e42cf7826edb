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
  (K - used), feature reconstruction MSE ||x - decoder(decode(id))||^2 per element (soft quantizers:
  the hard code of the argmax); training time per step (mean over the steps after the first two),
  one-off set-up time (building the quantizer incl. its k-means codebook), peak RSS. The held-out ids
  are the exact nearest codes found by a k-d tree (scipy) over the quantizer's final codebook: the
  default 4.2 M held-out vectors would take hours through tiled matmul search on 2 cores. Column
  ``tree = own search`` is the fraction of the first 16,384 held-out vectors for which the tree's code
  is as near (within float rounding) as the code of the quantizer's own ``encode``; ids themselves can
  differ between duplicate codes.

Backends: vqkit ``vq`` (k-means init on its first batch), ``vq`` with dead-code revival, ``ema_vq``
(k-means init), ``softvq``, ``vqgan_lc`` (frozen codebook = mini-batch k-means of the training pool,
as ``python -m vqkit.tools.codebook`` builds it; the codes live in the latents' own space, so the Linear
projector starts at the identity), ``vqbridge`` (the paper's set-up: U(-1/K, 1/K) raw codebook, the DiT
bridge with zero-init output, no residual, at the official geometry: width 256, 4 heads, MLP 2, the
official patch per K),
``vqbridge_kmeans`` (the same bridge with
``residual=True`` and the raw codebook started from the k-means file), and vector-quantize-pytorch's
``VectorQuantize(kmeans_init=True, threshold_ema_dead_code=2)`` as the external reference (imported
only here; ``make bench`` installs it). Diagnostics, opt-in with ``--backends``:
``vqgan_lc_paper_init`` (projector with the paper's N(0, D^-1/2) init: a random rotation of the
codebook that 100 steps cannot undo) and ``vq_kmeans_file`` (plain ``vq`` started from the same
k-means file: the control showing how much of the large-K usage within this short budget comes from
the codebook's start rather than from the method).

The quantizers users pick instead (``NEW_BACKENDS``: one row each, registry name and options per K): ``fsq``
(the FSQ paper's levels for K ~ 2^10 / 2^14 / 2^16 / 2^18: 1,000 / 15,360 / 64,000 / 262,144 codes), ``lfq``,
``bsq``, ``simvq`` and ``ibq`` at ``codebook_size=K``. Their held-out ids come from the quantizer's own
``encode`` where the code of a vector is not its nearest neighbour in ``q.codebook`` (FSQ / LFQ / BSQ round
a projection of it; IBQ takes the largest logit), so ``tree = own search`` does not apply there; SimVQ's
codes C W are searched by the tree as the others. A backend or option that is not registered in this
checkout is recorded as ``missing-backend``.

Usage over N held-out vectors cannot exceed min(1, N / K); with codes hit at random it is about
1 - exp(-N / K), so ``--heldout`` should be many times the largest K (the default gives 16 per code at
K = 262,144).

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
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_check import MISSING, missing_backend  # noqa: E402  (sibling script modules)
from capped_cell import proc_status_kib, report_child_result, run_capped  # noqa: E402
from result_files import fmt, write_csv  # noqa: E402

SCRIPT = Path(__file__).resolve()
RESULT_TAG = "CODEBOOK_UTILIZATION_RESULT "
THREADS = 2  # default of --threads
GIB = 1 << 30
REFERENCE = "vqp.VectorQuantize"
REFERENCE_PACKAGE = "vector-quantize-pytorch"
# The quantizers users pick instead: registry name, options besides dim per K, and how held-out ids are found
# ("tree": the exact k-d tree over q.codebook; "encode": the quantizer's own encode). Adjust after merging them.
FSQ_LEVELS = {1024: (8, 5, 5, 5), 16384: (8, 8, 8, 6, 5), 65536: (8, 8, 8, 5, 5, 5), 262144: (8, 8, 8, 8, 8, 8)}
NEW_BACKENDS: dict[str, tuple[str, Callable[[int], dict[str, Any]], str]] = {
    "fsq": ("fsq", lambda k: {"levels": list(FSQ_LEVELS[k])}, "encode"),
    "lfq": ("lfq", lambda k: {"codebook_size": k}, "encode"),
    "bsq": ("bsq", lambda k: {"codebook_size": k}, "encode"),
    "simvq": ("simvq", lambda k: {"codebook_size": k}, "tree"),
    "ibq": ("ibq", lambda k: {"codebook_size": k}, "encode"),
}
BACKENDS = ("vq", "vq_revival", "ema_vq", "softvq", "vqgan_lc", "vqbridge", "vqbridge_kmeans", *NEW_BACKENDS,
            REFERENCE)
DIAGNOSTIC_BACKENDS = ("vqgan_lc_paper_init", "vq_kmeans_file")  # opt-in with --backends
COLUMNS = (
    "backend", "K", "D", "status", "usage", "usage_bound_random", "perplexity", "dead_codes", "mse", "step_s",
    "setup_s", "eval_s", "peak_rss_mib", "ids_match", "steps", "batch", "heldout",
)
CROP_SIZE = 64
STAGE_BLOCKS = 3  # EfficientNet-Lite0 blocks[:3]: stride 8, 40 channels
KMEANS_ITERS, KMEANS_BATCH = 20, 8192  # mini-batch k-means of the vqgan_lc / k-means-started codebooks
CHECK_ROWS = 16384  # held-out vectors on which the k-d tree's ids are compared with the quantizer's own


# --- features (child) -----------------------------------------------------------------------------

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
def _kmeans_codebook(train: Any, k: int, seed: int, features: Path) -> tuple[Path, float]:
    """K mini-batch k-means centres of the training pool as a codebook file (what ``python -m vqkit.tools.codebook``
    writes), built once per (feature file, K, seed) next to the feature file and shared by the backends that
    start from it; returns the file and the seconds its k-means took (stored in the file, so a cached file
    reports the same figure)."""
    import torch

    from vqkit.quantizers.codebook_file import load_codebook, save_codebook
    from vqkit.tools.codebook import minibatch_kmeans

    path = features.with_name(f"{features.stem}_kmeans_K{k}_s{seed}.safetensors")
    if not path.is_file():
        t0 = time.perf_counter()
        centres, _ = minibatch_kmeans(train, k, iters=KMEANS_ITERS, batch_size=KMEANS_BATCH,
                                      generator=torch.Generator().manual_seed(seed), assign_all=False)
        seconds = time.perf_counter() - t0
        tmp = path.with_suffix(".tmp")
        save_codebook(tmp, centres, {"source": "benchmark k-means", "kmeans_s": f"{seconds:.3f}"})
        os.replace(tmp, path)
    return path, float(load_codebook(path)[1]["kmeans_s"])


def _build(backend: str, k: int, d: int, train: Any, seed: int, features: Path) -> tuple[Any, float]:
    """The quantizer of one cell and the seconds of its shared k-means codebook (0 if it uses none)."""
    import torch

    torch.manual_seed(seed)
    if backend == REFERENCE:
        from vector_quantize_pytorch import VectorQuantize

        return VectorQuantize(dim=d, codebook_size=k, kmeans_init=True, threshold_ema_dead_code=2,
                              commitment_weight=0.25), 0.0
    from vqkit.quantizers import build_quantizer

    if backend == "vq":
        return build_quantizer("vq", dim=d, codebook_size=k, kmeans_init=True), 0.0
    if backend == "vq_revival":
        return build_quantizer("vq", dim=d, codebook_size=k, kmeans_init=True, dead_code_threshold=1.0 / 16), 0.0
    if backend == "ema_vq":
        return build_quantizer("ema_vq", dim=d, codebook_size=k, kmeans_init=True), 0.0
    if backend == "softvq":
        return build_quantizer("softvq", dim=d, codebook_size=k), 0.0
    if backend == "vqbridge":
        return build_quantizer("vqbridge", dim=d, codebook_size=k), 0.0  # the official start and geometry
    if backend in NEW_BACKENDS:
        name, options, _ = NEW_BACKENDS[backend]
        return build_quantizer(name, dim=d, **options(k)), 0.0
    path, kmeans_s = _kmeans_codebook(train, k, seed, features)
    if backend in ("vqgan_lc", "vqgan_lc_paper_init"):
        init = "normal" if backend == "vqgan_lc_paper_init" else "identity"
        # the codes are k-means centres of the latents themselves: no feature scaling (as measured)
        return build_quantizer("vqgan_lc", dim=d, codebook_size=k, codebook_path=str(path),
                               projector_init=init, feature_norm="none"), kmeans_s
    if backend == "vqbridge_kmeans":
        return build_quantizer("vqbridge", dim=d, codebook_size=k, residual=True,
                               init_codebook_path=str(path)), kmeans_s
    if backend == "vq_kmeans_file":
        from vqkit.quantizers.codebook_file import load_codebook

        q = build_quantizer("vq", dim=d, codebook_size=k)
        with torch.no_grad():
            q.embedding.copy_(load_codebook(path)[0])
        return q, kmeans_s
    raise ValueError(f"unknown backend {backend!r}")


def _nearest_ids(codebook: Any, z: Any, threads: int) -> Any:
    """Exact nearest-code ids of ``z`` (N, D) by a k-d tree over ``codebook`` (K, D): the held-out sets are
    millions of low-dim vectors, where a tree answers exact queries ~5x faster than tiled matmul search."""
    import numpy as np
    import torch
    from scipy.spatial import cKDTree

    # exact duplicates (e.g. 262,144 codes k-means-initialised from one batch of 512 vectors) would make every
    # query visit all copies: search the distinct codes and answer with the lowest id of each, as argmin does
    codebook = codebook.detach().double()
    distinct, inverse = torch.unique(codebook, dim=0, return_inverse=True)
    first = torch.full((distinct.shape[0],), codebook.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(codebook.shape[0]), reduce="amin")
    tree = cKDTree(distinct.numpy())
    _, ids = tree.query(z.detach().double().numpy(), k=1, workers=threads)
    return first[torch.from_numpy(np.asarray(ids, dtype=np.int64))]


def _child_cell(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import vqkit.quantizers  # noqa: F401  (imports are not part of the set-up time)

    torch.set_num_threads(spec["threads"])
    data = torch.load(spec["features"])
    train, heldout = data["train"], data["heldout"]
    k, d, backend = spec["k"], train.shape[1], spec["backend"]
    start = time.perf_counter()
    q, kmeans_s = _build(backend, k, d, train, spec["seed"], Path(spec["features"]))
    q.train()
    setup_s = time.perf_counter() - start
    is_ref = backend == REFERENCE
    if not is_ref:
        k = int(q.codebook_size)  # FSQ: the product of its levels
    if kmeans_s and setup_s < kmeans_s:  # the shared k-means file came from the cache: count its build time
        setup_s += kmeans_s
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
    with torch.no_grad():
        z = torch.cat([encoder(heldout[i : i + spec["eval_chunk"]]) for i in range(0, heldout.shape[0],
                                                                                   spec["eval_chunk"])])
        if backend in NEW_BACKENDS and NEW_BACKENDS[backend][2] == "encode":
            ids = torch.cat([q.encode(part.unsqueeze(0)).reshape(-1) for part in z.split(spec["eval_chunk"])])
            ids_match = None  # the ids are the quantizer's own
        else:
            ids, ids_match = _tree_ids(q, z, backend, is_ref, spec["threads"])
        counts = torch.bincount(ids, minlength=k)
        codes = q.codebook.detach().float()[ids] if is_ref else q.decode(ids.unsqueeze(0)).squeeze(0)
        sq_err = float((decoder(codes) - heldout).pow(2).sum())
    eval_s = time.perf_counter() - t0
    p = counts.double() / counts.sum()
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    used = int((counts > 0).sum())
    return {
        "K": k,
        "usage": used / k,
        "perplexity": perplexity,
        "dead_codes": k - used,
        "mse": sq_err / heldout.numel(),
        "ids_match": ids_match,
        "step_s": step_s,
        "setup_s": setup_s,
        "eval_s": eval_s,
        "peak_rss_mib": proc_status_kib("VmHWM") / 1024,
    }


def _tree_ids(q: Any, z: Any, backend: str, is_ref: bool, threads: int) -> tuple[Any, float]:
    """Held-out ids (N,) by the exact k-d tree over ``q.codebook`` of the latents ``z`` (N, D), and the share of
    the first CHECK_ROWS for which the tree's code is as near as the code of the quantizer's own search."""
    import torch

    codebook = q.codebook.detach().float()
    if backend == "softvq":  # its ids are the argmax of cosine logits = nearest unit code to the unit latent
        search_z = torch.nn.functional.normalize(z, dim=-1) if q.normalize else z
    else:
        search_z = z
    ids = _nearest_ids(codebook, search_z, threads)
    # the tree must find codes as near as the quantizer's own search (ids may differ between duplicate,
    # equidistant codes): compare the distances on the first CHECK_ROWS held-out vectors
    check = search_z[:CHECK_ROWS]
    # in parts: the reference and softvq materialise rows x K distances / probabilities
    parts = [row.unsqueeze(0) for row in z[:CHECK_ROWS].split(2048)]
    own = torch.cat([(q(part)[1] if is_ref else q.encode(part)).reshape(-1) for part in parts])
    own_d = (check - codebook[own]).pow(2).sum(-1)
    tree_d = (check - codebook[ids[:CHECK_ROWS]]).pow(2).sum(-1)
    return ids, float(((own_d - tree_d).abs() <= 1e-5 * (1 + own_d)).float().mean())


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    report_child_result(RESULT_TAG, lambda: _child_features(spec) if spec["task"] == "features" else _child_cell(spec))


# --- parent -------------------------------------------------------------------------------------------
def _run_child(spec: dict[str, Any], mem_cap_gib: float, timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a child capped to ``mem_cap_gib`` of address space; the result always has a status."""
    return run_capped(SCRIPT, spec, mem_cap_gib, timeout, RESULT_TAG, f"too slow (timeout > {timeout:g} s)")


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| backend | K | status | usage | 1 - exp(-N/K) | perplexity | dead codes | MSE | s / step | set-up s "
            "| eval s | peak RSS MiB | tree = own search |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [r["backend"], str(r["K"]), r["status"],
                 f"{100 * r['usage']:.2f}%" if ok else "", f"{100 * r['usage_bound_random']:.1f}%",
                 fmt(r.get("perplexity"), 5),
                 fmt(r.get("dead_codes")), fmt(r.get("mse"), 3), fmt(r.get("step_s"), 3),
                 fmt(r.get("setup_s"), 3), fmt(r.get("eval_s"), 3),
                 f"{r['peak_rss_mib']:.0f}" if ok else "",
                 _ids_match(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ids_match(row: dict[str, Any]) -> str:
    """The ``tree = own search`` cell: a share, "n/a" where the ids are the quantizer's own, or empty."""
    if row["status"] != "ok":
        return ""
    return "n/a (own encode)" if row.get("ids_match") is None else f"{100 * row['ids_match']:.2f}%"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Two panels, usage and held-out MSE vs K (log x), one line per backend; drawn with Pillow."""
    import math

    from PIL import Image, ImageDraw

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#7f7f7f", "#e377c2",
               "#bcbd22"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    ks = sorted({r["K"] for r in rows})
    ok = [r for r in rows if r["status"] == "ok"]
    width, height, margin = 1420, 560, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    panel_w = (width - 440) // 2  # two panels, then the legend
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
        draw.rectangle([width - 220, y, width - 205, y + 12], fill=colours[b % len(colours)])
        draw.text((width - 198, y), name, fill="black")
    draw.text((width - 220, margin + 22 * len(backends) + 10), "missing point = not ok (see table)", fill="black")
    img.save(path)


def _new_backend_cell(backend: str, k: int) -> tuple[int, tuple[str, str] | None]:
    """The codebook size of ``backend``'s cell at nominal ``k`` (FSQ: the product of its levels) and, when it
    cannot run here, (status, reason): the backend or an option is missing, or FSQ has no levels for ``k``."""
    if backend not in NEW_BACKENDS:
        return k, None
    name, options, _ = NEW_BACKENDS[backend]
    if name == "fsq" and k not in FSQ_LEVELS:
        missing = missing_backend(name, ["levels"])
        if missing:
            return k, (MISSING, missing)
        return k, (f"not run (no FSQ_LEVELS entry for K ~ {k})", "add one to FSQ_LEVELS")
    missing = missing_backend(name, options(k))
    size = math.prod(FSQ_LEVELS[k]) if name == "fsq" else k
    return size, None if missing is None else (MISSING, missing)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 16384, 65536, 262144], help="codebook sizes K")
    p.add_argument("--backends", nargs="+", choices=BACKENDS + DIAGNOSTIC_BACKENDS, default=list(BACKENDS),
                   help=f"default: all but the diagnostic variants {', '.join(DIAGNOSTIC_BACKENDS)}")
    p.add_argument("--dim", type=int, default=8, help="feature dims after PCA")
    p.add_argument("--train", type=int, default=1 << 20, help="training pool vectors")
    p.add_argument("--heldout", type=int, default=1 << 22, help="held-out vectors (16 per code at K = 262,144)")
    p.add_argument("--steps", type=int, default=100, help="training steps per cell")
    p.add_argument("--batch", type=int, default=512, help="vectors per training step")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (every parameter)")
    p.add_argument("--eval-chunk", type=int, default=65536, help="held-out vectors per encode call")
    p.add_argument("--mem-cap-gib", type=float, default=16.0, help="address-space cap of each cell")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a cell counts as too slow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch threads per cell (1 is faster when the cores are oversubscribed)")
    p.add_argument("--features", type=Path, default=None, help="feature cache (.pt); built when missing")
    p.add_argument("--out-dir", type=Path, default=SCRIPT.parent / "results")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                   help="run nothing: merge the results of these runs' --out-dir folders into --out-dir")
    args = p.parse_args(argv)
    if args.heldout < max(args.ks):
        print(f"warning: {args.heldout} held-out vectors < K={max(args.ks)}: usage at that K is capped at "
              f"{args.heldout / max(args.ks):.2f}", file=sys.stderr)
    return args


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers parsed back (empty cells dropped)."""
    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value == "":
                    continue
                if key in ("backend", "status"):
                    row[key] = value
                else:
                    number = float(value)
                    row[key] = int(number) if key in ("K", "D", "dead_codes", "steps", "batch", "heldout") else number
            rows.append(row)
    return rows


def merge(out_dir: Path, run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """One CSV / Markdown / PNG from several runs' output folders (e.g. one K per run, run side by side):
    rows ordered by K then backend, each run's own header (command, date, settings) kept above the table;
    a cell measured again by a later run (in the order given) replaces the earlier one."""
    order = {name: i for i, name in enumerate(BACKENDS + DIAGNOSTIC_BACKENDS)}
    rows, headers = [], []
    for run in run_dirs:
        csv_path, md_path = run / "codebook_utilization.csv", run / "codebook_utilization.md"
        if not csv_path.is_file() or not md_path.is_file():
            raise SystemExit(f"{run} holds no codebook_utilization.csv/.md: pass the --out-dir of a finished run")
        rows += _read_csv(csv_path)
        header = md_path.read_text().split("\n| backend |")[0].splitlines()
        headers += [f"Run `{run.name}`:"] + [line for line in header[1:] if line.strip()] + [""]
    latest = {(r["backend"], r["K"]): r for r in rows}  # a later run's cell replaces an earlier one's
    rows = sorted(latest.values(), key=lambda r: (r["K"], order.get(r["backend"], len(order))))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "codebook_utilization"
    write_csv(stem.with_suffix(".csv"), rows, COLUMNS)
    table = _markdown_table(rows)
    command = shlex.join(["python", "benchmarks/codebook_utilization.py", "--merge", *map(str, run_dirs),
                          "--out-dir", str(out_dir)])
    stem.with_suffix(".md").write_text("\n".join(["# Codebook utilization at large K (CPU)", "",
                                                  f"Merged by `{command}` from these runs (a cell run again "
                                                  "by a later run replaces the earlier one):", "", *headers,
                                                  table, ""]))
    plot(rows, stem.with_suffix(".png"))
    print(table)
    print(f"\nwrote {stem}.csv, .md and .png")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Build (or reuse) the feature set, run every cell, write CSV / Markdown / PNG; return the rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    if args.merge:
        return merge(args.out_dir, args.merge)
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
        k_cell, why_not = _new_backend_cell(backend, k)
        if backend == REFERENCE and ref_version is None:
            result = {"status": f"skipped ({REFERENCE_PACKAGE} not installed: `make bench` installs it)"}
        elif why_not is not None:
            result = {"status": why_not[0]}
            print(f"  {backend}: {why_not[1]}", flush=True)
        else:
            spec = {"task": "cell", "threads": args.threads, "backend": backend, "k": k, "features": str(features),
                    "steps": args.steps, "batch": args.batch, "lr": args.lr, "eval_chunk": args.eval_chunk,
                    "seed": args.seed}
            result = _run_child(spec, args.mem_cap_gib, args.timeout)
        bound = 1.0 - math.exp(-args.heldout / k_cell)  # expected usage if every vector hit a random code
        rows.append({"backend": backend, "K": k_cell, "D": args.dim, "steps": args.steps, "batch": args.batch,
                     "heldout": args.heldout, "usage_bound_random": bound, **result})
        write_csv(stem.with_suffix(".csv"), rows, COLUMNS)
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
        "1 - exp(-held-out / K) (column `1 - exp(-N/K)`); set-up s includes building the quantizer and its "
        f"k-means codebook ({KMEANS_ITERS} mini-batches of {KMEANS_BATCH:,}, shared by vqgan_lc and "
        "vqbridge_kmeans; the "
        "k-means init of vq / ema_vq happens in their first training step); held-out ids by an exact k-d tree "
        f"over the final codebook, checked against the quantizer's own encode on {CHECK_ROWS:,} vectors",
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
