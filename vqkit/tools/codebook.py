"""Build a frozen feature codebook for ``vqgan_lc``: ``python -m vqkit.tools.codebook --out FILE --num-codes K``.

Pipeline (VQGAN-LC, arXiv 2406.11837, section 3): images -> a frozen encoder's patch features,
optionally average-pooled to a ``pool x pool`` grid -> mini-batch k-means with K centres (per class,
K / C centres each, when the data has labels and ``--per-class`` is given) -> a safetensors file
holding ``codebook`` (K, F) and the settings as metadata.

Feature sources (``--source``):
  * ``efficientnet_lite0``: the ImageNet EfficientNet-Lite0 installed offline by the set-up;
  * ``timm``: any timm architecture ``--model-name`` with weights from ``--weights-path``;
  * ``tokenizer``: the encoder of a trained vqkit tokenizer, from a ``.ckpt`` of ``vqkit.train`` or an
    exported artifact folder (``--tokenizer PATH``); its latents become the features.
Data (``--data``): ``photos`` (random crops of the embedded photos, no labels) or ``folder``
(``--data-root`` with ``train/<class>/*.jpg``, the ImageNet layout; labels from the class folders).

The k-means is distributed-safe (``vqkit.quantizers.search`` and all-reduced sums): under
``torchrun`` all ranks end with the same centres and rank 0 writes the file. The image loaders here
are not sharded, so every rank encodes the same images; the speed-up of sharding is not implemented.

``ensure_codebook(path, num_codes, **options)`` is the same build as an explicit preparation step: a
training config lists it under ``prepare:`` and ``vqkit.train`` runs it before the model is built; it
keeps an existing file that fits and otherwise writes the file atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from vqkit.quantizers.codebook_file import CODEBOOK_KEY, load_codebook, save_codebook
from vqkit.quantizers.distributed import all_reduce_sum, is_distributed, sample_rows
from vqkit.quantizers.search import DEFAULT_CODE_CHUNK, cluster_sums, nearest_code

log = logging.getLogger(__name__)

SOURCES = ("efficientnet_lite0", "timm", "tokenizer")
DATA = ("photos", "folder", "auto")


# --- k-means ---------------------------------------------------------------------------------
@torch.no_grad()
def minibatch_kmeans(
    x: Tensor,
    k: int,
    iters: int = 100,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    code_chunk: int = DEFAULT_CODE_CHUNK,
    progress: bool = False,
    assign_all: bool = True,
) -> tuple[Tensor, Tensor]:
    """Mini-batch k-means (Sculley 2010) on ``x`` (M, F) without labels; distributed-safe.

    Centres start at rows drawn from the data of all ranks. Each iteration assigns a random
    mini-batch per rank by exact search, sums counts and vectors over ranks, and moves each hit
    centre toward its batch mean with step count_batch / count_total (per-centre learning rate
    1 / n). A last full pass assigns every vector, giving the counts (``assign_all=False`` skips it
    and returns the counts accumulated over the mini-batches).

    Returns:
        centres (K, F) fp32 and counts (K,) of the final assignment (summed over ranks).
    """
    x = x.float()
    if x.shape[0] == 0:
        raise ValueError("k-means got no feature vectors")
    centres = sample_rows(x, k, generator).clone()
    seen = torch.zeros(k, device=x.device)
    for _ in tqdm(range(iters), desc=f"k-means K={k}", unit="it", disable=not progress, leave=False):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator).to(x.device)
        batch = x[rows]
        idx, _ = nearest_code(batch, centres, code_chunk=code_chunk)
        counts, sums = cluster_sums(batch, idx, k)
        all_reduce_sum(counts)
        all_reduce_sum(sums)
        seen += counts
        hit = counts > 0
        step = (counts[hit] / seen[hit]).unsqueeze(1)
        centres[hit] += step * (sums[hit] / counts[hit].unsqueeze(1) - centres[hit])
    if not assign_all:
        return centres, seen
    idx, _ = nearest_code(x, centres, code_chunk=code_chunk)
    counts = torch.bincount(idx, minlength=k).float()
    return centres, all_reduce_sum(counts)


def split_codes(k: int, num_groups: int) -> list[int]:
    """K codes shared as evenly as possible over ``num_groups`` classes."""
    if num_groups > k:
        raise ValueError(f"--per-class needs at least one code per class: {num_groups} classes > {k} codes")
    base, extra = divmod(k, num_groups)
    return [base + (1 if i < extra else 0) for i in range(num_groups)]


def cluster_features(
    features: Tensor, labels: Tensor | None, k: int, iters: int, batch_size: int, seed: int, progress: bool = True
) -> tuple[Tensor, Tensor]:
    """K centres from ``features`` (M, F); per class (K/C centres each) when ``labels`` (M,) is given."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        return minibatch_kmeans(features, k, iters, batch_size, generator, progress=progress)
    classes = labels.unique().tolist()
    parts, counts = [], []
    for cls, k_c in tqdm(list(zip(classes, split_codes(k, len(classes)), strict=True)), desc="classes",
                         disable=not progress):
        members = features[labels == cls]
        c, n = minibatch_kmeans(members, k_c, iters, batch_size, generator)
        parts.append(c)
        counts.append(n)
    return torch.cat(parts), torch.cat(counts)


# --- features ----------------------------------------------------------------------------------
def pool_grid(features: Tensor, pool: int | None) -> Tensor:
    """(B, P, F) patch features on a square grid -> (B, pool*pool, F) by average pooling; None keeps all."""
    if not pool:
        return features
    b, p, f = features.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"--pool needs a square grid of patch features, got {p} per image; use --pool 0")
    grid = features.transpose(1, 2).reshape(b, f, side, side)
    return F.adaptive_avg_pool2d(grid, min(pool, side)).flatten(2).transpose(1, 2)


def feature_extractor(args: argparse.Namespace) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    """``images (B, 3, H, W) in [0, 1] -> features (B, P, F)`` for ``args.source``, and its metadata."""
    if args.source in ("efficientnet_lite0", "timm"):
        from vqkit.layers.feature_encoder import FrozenFeatureEncoder

        if args.source == "timm" and not args.model_name:
            raise ValueError("--source timm needs --model-name (a timm architecture) and --weights-path")
        name = "efficientnet_lite0" if args.source == "efficientnet_lite0" else args.model_name
        if args.weights_path and not Path(args.weights_path).is_file():
            raise FileNotFoundError(f"--weights-path {args.weights_path} does not exist")
        encoder = FrozenFeatureEncoder(name, args.weights_path, image_size=args.encoder_size)
        return encoder, {"model_name": name, "weights_path": str(args.weights_path or "packaged ImageNet weights")}
    if not args.tokenizer:
        raise ValueError("--source tokenizer needs --tokenizer PATH (a vqkit.train .ckpt or an exported artifact)")
    encoder, normalize = _tokenizer_encoder(Path(args.tokenizer))

    @torch.no_grad()
    def encode(images: Tensor) -> Tensor:
        tokens, _ = encoder(normalize(images))
        return tokens.float()

    return encode, {"tokenizer": str(args.tokenizer)}


def _tokenizer_encoder(path: Path) -> tuple[torch.nn.Module, Callable[[Tensor], Tensor]]:
    """The encoder and input normalization of an image tokenizer: a vqkit.train checkpoint or an artifact folder."""
    if not path.exists():
        raise FileNotFoundError(f"--tokenizer {path} does not exist; give a .ckpt of vqkit.train or an artifact folder")
    from vqkit.models import ImageTokenizer

    if path.is_file():
        from vqkit.export import checkpoint_model
        from vqkit.lit.checkpoint_io import load_checkpoint

        model = checkpoint_model(load_checkpoint(path), path)
    else:
        from vqkit.tokenizers import load_tokenizer

        model = load_tokenizer(path)
    if not isinstance(model, ImageTokenizer):
        raise ValueError(f"--tokenizer {path} is a {type(model).__name__}; --source tokenizer needs an image tokenizer")
    model.eval()
    return model.encoder, model.normalize


def image_batches(args: argparse.Namespace) -> tuple[Iterator[tuple[Tensor, Tensor | None]], int, dict[str, Any]]:
    """Batches ``(images (B, 3, S, S), labels (B,) or None)``, how many images there are, and metadata."""
    if args.data == "auto":
        args.data = "folder" if args.data_root else "photos"
    if args.data == "photos":
        if args.num_images <= 0:
            raise ValueError("--data photos needs --num-images > 0 (how many random crops to encode)")
        from vqkit.data import EmbeddedPhotosDataModule

        dm = EmbeddedPhotosDataModule(image_size=args.image_size, batch_size=args.batch_size,
                                      train_samples=args.num_images, seed=args.seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        meta = {"data": "photos", "photos": ",".join(dm.train_photos)}
        return ((b["image"], None) for b in loader), args.num_images, meta
    if not args.data_root:
        raise ValueError("--data folder needs --data-root DIR (with train/<class>/ image folders)")
    root = Path(args.data_root)
    if not (root / args.split).is_dir():
        raise FileNotFoundError(
            f"image folder {root / args.split} does not exist; --data-root must hold {args.split}/<class>/*.jpg "
            "(the ImageNet layout), or pass --split"
        )
    from vqkit.data import ImageFolderDataModule

    dm = ImageFolderDataModule(str(root), image_size=args.image_size, batch_size=args.batch_size,
                               num_workers=args.num_workers, train_split=args.split, val_split=args.split)
    dm.setup("fit")
    loader = dm.train_dataloader()
    total = len(loader.dataset) if args.num_images <= 0 else min(args.num_images, len(loader.dataset))

    def batches() -> Iterator[tuple[Tensor, Tensor | None]]:
        done = 0
        for b in loader:
            if done >= total:
                return
            take = min(total - done, b["image"].shape[0])
            done += take
            yield b["image"][:take], b["label"][:take]

    return batches(), total, {"data": "folder", "data_root": str(root), "split": args.split}


def extract_features(args: argparse.Namespace, progress: bool = True) -> tuple[Tensor, Tensor | None, dict]:
    """All features (M, F) and their labels (M,) (or None), plus metadata."""
    extractor, meta = feature_extractor(args)
    batches, total, data_meta = image_batches(args)
    feats, labels = [], []
    with tqdm(total=total, desc="features", unit="img", disable=not progress) as bar:
        for images, y in batches:
            f = pool_grid(extractor(images), args.pool)  # (B, P, F)
            feats.append(f.reshape(-1, f.shape[-1]))
            if y is not None:
                labels.append(y.repeat_interleave(f.shape[1]))
            bar.update(images.shape[0])
    features = torch.cat(feats)
    if args.normalize:
        features = F.normalize(features, dim=-1)
    if not torch.isfinite(features).all():
        raise FloatingPointError("the encoder produced NaN/Inf features; check the weights file")
    return features, (torch.cat(labels) if labels else None), {**meta, **data_meta}


# --- command -------------------------------------------------------------------------------------
def build_codebook(argv: list[str] | None = None, progress: bool = True, **options: Any) -> Path:
    """Run the builder with CLI ``argv`` and/or keyword ``options`` (names as the CLI's, with _); returns the file."""
    args = parse_args(list(argv or []))
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"build_codebook got an unknown option {key!r}")
        setattr(args, key, value)
    if args.out is None:
        args.out = str(default_out(args))
    # The build seeds its own random streams from --seed and gives the caller's back untouched: run as a
    # training's `prepare` step, it must not reset the RNG that `seed=` set for the model's init and data order.
    with preserved_random_state():
        return _build(args, argv, options, progress)


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and every CUDA device's) random state on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _build(args: argparse.Namespace, argv: list[str] | None, options: dict[str, Any], progress: bool) -> Path:
    """Features, k-means and the codebook file with the metadata that says how it was made, seeded by --seed."""
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)
    features, labels, meta = extract_features(args, progress)
    per_class = bool(args.per_class and labels is not None)
    if args.per_class and labels is None:
        log.warning("--per-class ignored: the %s data has no labels; clustering all features together", args.data)
    if features.shape[0] < args.num_codes:
        log.warning("only %d feature vectors for %d codes: some codes will repeat; use more --num-images",
                    features.shape[0], args.num_codes)
    centres, counts = cluster_features(features, labels if per_class else None, args.num_codes, args.iters,
                                       args.kmeans_batch_size, args.seed, progress)
    metadata = {
        **meta,
        "source": args.source,
        "image_size": args.image_size,
        "encoder_size": args.encoder_size,
        "pool": args.pool,
        "normalize": args.normalize,
        "num_images": args.num_images,
        "num_features": int(features.shape[0]),
        "per_class": per_class,
        "num_classes": int(labels.unique().numel()) if per_class else 0,
        "kmeans": "minibatch",
        "iters": args.iters,
        "kmeans_batch_size": args.kmeans_batch_size,
        "empty_codes": int((counts == 0).sum()),
        "seed": args.seed,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m vqkit.tools.codebook " + " ".join(argv or []),
        "options": {k: str(v) for k, v in options.items() if k != "out"},
    }
    if is_distributed() and torch.distributed.get_rank() != 0:
        return Path(args.out)
    path = save_codebook(args.out, centres, metadata)
    load_codebook(path, expected_size=args.num_codes)  # read back: the file is usable
    log.info("wrote %s: %d x %d codes from %d features (%d empty)", path, centres.shape[0], centres.shape[1],
             features.shape[0], metadata["empty_codes"])
    return path


def ensure_codebook(path: str | os.PathLike[str], num_codes: int, **build_options: Any) -> Path:
    """Make sure ``path`` holds a codebook of ``num_codes`` codes, building it only when it is missing.

    The explicit preparation step of ``vqgan_lc`` (instead of a build inside the quantizer's constructor):
    a config lists it under ``prepare:`` with ``_target_: vqkit.tools.codebook.ensure_codebook`` and
    ``vqkit.train`` calls it before the model is instantiated. An existing file is checked from its
    safetensors header (a ``codebook`` tensor of shape (num_codes, F)) and kept as it is; it is never
    overwritten. A missing file is built by ``build_codebook`` into a temporary file beside ``path`` that
    replaces ``path`` only once complete (``os.replace``), so an interrupted or killed build leaves no
    file at ``path``, and builders racing for the same file each write a complete one.

    Args:
        path: the codebook file (``quantizer.codebook_path``).
        num_codes: K, the number of codes (``quantizer.codebook_size``).
        **build_options: options of ``build_codebook`` (the CLI's names with ``_``, e.g. ``source``,
            ``data``, ``data_root``, ``num_images``, ``per_class``, ``pool``, ``iters``), used only when
            the file is built; ``progress`` switches the progress bars.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``path`` is None, or the existing file is not a readable codebook or holds another
            number of codes than ``num_codes`` (the message names the file and both sizes).
        TypeError: ``out`` given in ``build_options``, or an option ``build_codebook`` does not know.
    """
    if path is None:
        raise ValueError(
            "ensure_codebook needs a path (quantizer.codebook_path); to train on a random frozen codebook "
            "(codebook_path=null) drop the preparation step with prepare=[]"
        )
    if "out" in build_options:
        raise TypeError("ensure_codebook writes to `path`; do not pass `out`")
    path = Path(path)
    if path.exists():
        size, width = codebook_shape(path)
        if size != num_codes:
            raise ValueError(
                f"codebook file {path} holds K={size} codes but K={num_codes} (num_codes / quantizer.codebook_size) "
                f"is asked for; point the path at a file with {num_codes} codes, set the size to {size}, or "
                f"delete {path} to rebuild it"
            )
        log.info("codebook %s: present, K=%d x F=%d; not rebuilt", path, size, width)
        return path
    progress = bool(build_options.pop("progress", True))
    log.info("codebook %s: missing; building K=%d codes with %s", path, num_codes, build_options or "the defaults")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    writer = not is_distributed() or torch.distributed.get_rank() == 0  # rank 0 writes (build_codebook)
    try:
        build_codebook(progress=progress, out=str(tmp), num_codes=num_codes, **build_options)
        if writer:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # an interrupted build's (save_codebook cleans up its own temporary)
    if is_distributed():
        torch.distributed.barrier()  # the other ranks return once rank 0 has put the file in place
    if writer:
        log.info("codebook %s: built, K=%d", path, num_codes)
    return path


def codebook_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(K, F) of a codebook file, read from its safetensors header only (no tensor data is loaded).

    Raises:
        ValueError: not a complete safetensors file, or no 2-D ``codebook`` tensor in it.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            if CODEBOOK_KEY not in set(f.keys()):
                raise ValueError(f"{path} holds no {CODEBOOK_KEY!r} tensor; it is not a vqkit codebook file")
            shape = list(f.get_slice(CODEBOOK_KEY).get_shape())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors codebook (truncated or corrupt?): {err}; "
                         "delete it to rebuild it") from err
    if len(shape) != 2:
        raise ValueError(f"{path}: the codebook must be (K, F), got shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vqkit.tools.codebook", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="output .safetensors file (default: $VQKIT_OUTPUTS/codebooks/<source>_<data>_K<num-codes>"
                        ".safetensors, VQKIT_OUTPUTS defaulting to outputs, as the runs' folder)")
    p.add_argument("--num-codes", type=int, default=16384, help="codebook size K")
    p.add_argument("--source", choices=SOURCES, default="efficientnet_lite0", help="feature encoder")
    p.add_argument("--model-name", default=None, help="timm architecture (--source timm)")
    p.add_argument("--weights-path", default=None, help="local weights file (--source timm)")
    p.add_argument("--tokenizer", default=None, help="vqkit .ckpt or artifact folder (--source tokenizer)")
    p.add_argument("--data", choices=DATA, default="photos",
                   help="embedded photos, an image folder, or auto (folder when --data-root is given)")
    p.add_argument("--data-root", default=None, help="image folder root (--data folder)")
    p.add_argument("--split", default="train", help="sub-folder of --data-root to read")
    p.add_argument("--num-images", type=int, default=4096, help="images (crops for photos; <= 0: whole folder)")
    p.add_argument("--image-size", type=int, default=128, help="side of the loaded images / crops")
    p.add_argument("--encoder-size", type=int, default=128, help="input side of the timm encoder")
    p.add_argument("--pool", type=int, default=0, help="average-pool the patch grid to pool x pool (0: keep all)")
    p.add_argument("--normalize", action="store_true", help="l2-normalise features before k-means")
    p.add_argument("--per-class", action="store_true", help="k-means per class (K / classes codes each)")
    p.add_argument("--iters", type=int, default=50, help="mini-batch k-means iterations")
    p.add_argument("--kmeans-batch-size", type=int, default=8192, help="vectors per k-means mini-batch")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--num-workers", type=int, default=0, help="data-loader workers (--data folder)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num_codes <= 0:
        p.error("--num-codes must be positive")
    return args


def default_out(args: argparse.Namespace) -> Path:
    """Where a codebook goes without ``--out``: beside the runs (``$VQKIT_OUTPUTS``, default ``outputs``), named by
    its settings, never into the current directory."""
    source = args.model_name if args.source == "timm" and args.model_name else args.source
    data = "folder" if args.data == "auto" and args.data_root else ("photos" if args.data == "auto" else args.data)
    name = f"{source}_{data}_K{args.num_codes}.safetensors"
    return Path(os.environ.get("VQKIT_OUTPUTS") or "outputs") / "codebooks" / name


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        path = build_codebook(argv)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
