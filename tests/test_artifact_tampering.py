"""An artifact is self-contained: loading it builds nothing, writes nothing and reads only its own folder.

A vqgan_lc model's codebook is a buffer of its weights, so its artifact must not name the codebook file it
was trained from; a ``config.json`` edited to name a file (absolute, ``..``, a symlink, ``/etc/passwd``, as a
keyword or a positional argument, inside a plain dict such as residual ``stage_options``), to ask for a build,
to use a module that reads files of its own, or to declare sizes its weights cannot fill is refused before
anything is opened or allocated.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.artifacts import TINY_MODEL, edit_config, tiny_checkpoint
from vqkit.export import export_tokenizer
from vqkit.quantizers.codebook_file import save_codebook
from vqkit.tokenizers import UnsafeConfigError, load_tokenizer

FEATURES = 6  # F of the tiny vqgan_lc codebook (K = 16 codes, projected to the model's 4 dims)


def vqgan_lc_model(codebook_path: str) -> dict[str, Any]:
    quantizer = {"_target_": "vqkit.quantizers.VQGANLCQuantizer", "dim": 4, "codebook_size": 16,
                 "codebook_path": codebook_path, "feature_dim": None}
    return {**TINY_MODEL, "quantizer": quantizer}


def listing(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and mtime: what a load must leave unchanged."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))}


@pytest.fixture
def run(tmp_path: Path, monkeypatch) -> Path:
    """A vqgan_lc run folder, as vqkit.train leaves it: its codebook file (named relative to the run's working
    directory, as recipes do) and a checkpoint whose config names that file."""
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.chdir(folder)
    save_codebook("codebook.safetensors", torch.randn(16, FEATURES, generator=torch.Generator().manual_seed(0)),
                  {"source": "test"})
    tiny_checkpoint(folder / "last.ckpt", vqgan_lc_model("codebook.safetensors"))
    return folder


@pytest.fixture
def vqgan_lc_artifact(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tokenizer"
    export_tokenizer(run / "last.ckpt", out)
    return out


def test_a_vqgan_lc_artifact_loads_from_another_directory_and_writes_nothing(
        vqgan_lc_artifact: Path, run: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = listing(tmp_path)
    tokenizer = load_tokenizer(vqgan_lc_artifact)
    assert listing(tmp_path) == before  # nothing written: not in the run folder, the artifact or the cwd
    codebook = load_tokenizer_features(run)
    assert torch.equal(tokenizer.quantizer.features, codebook)  # the codebook came from the weights
    assert "random" not in repr(tokenizer.quantizer)
    quantizer = json.loads((vqgan_lc_artifact / "config.json").read_text())["model"]["quantizer"]
    assert (quantizer["codebook_path"], quantizer["feature_dim"]) == (None, FEATURES)


def load_tokenizer_features(run: Path) -> torch.Tensor:
    """The normalized features the training model held (the checkpoint's buffer)."""
    return torch.load(run / "last.ckpt", weights_only=True)["state_dict"]["model.quantizer.features"]


def test_export_needs_no_codebook_file(run: Path, tmp_path: Path) -> None:
    (run / "codebook.safetensors").unlink()  # export on a machine that has the checkpoint only
    tokenizer = export_tokenizer(run / "last.ckpt", tmp_path / "tokenizer")
    assert torch.equal(tokenizer.quantizer.features, load_tokenizer_features(run))


def test_an_artifact_exported_before_the_fix_is_refused_with_the_fix(vqgan_lc_artifact: Path, run: Path) -> None:
    # vqkit before issue 15 kept the training run's codebook_path in config.json
    edit_config(vqgan_lc_artifact, lambda c: c["model"]["quantizer"].update(codebook_path="codebook.safetensors",
                                                                            feature_dim=None))
    with pytest.raises(UnsafeConfigError) as info:
        load_tokenizer(vqgan_lc_artifact)
    message = str(info.value)
    assert "model.quantizer.codebook_path = 'codebook.safetensors'" in message
    assert "python -m vqkit.export" in message and f'"feature_dim": {FEATURES}' in message


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink", "passwd"])
def test_a_codebook_path_is_refused_before_it_is_opened(vqgan_lc_artifact: Path, tmp_path: Path, where: str,
                                                        monkeypatch) -> None:
    outside = save_codebook(tmp_path / "outside" / "codebook.safetensors", torch.randn(16, FEATURES), {})
    value = {"absolute": str(outside), "dotdot": "../outside/codebook.safetensors", "symlink": "link.safetensors",
             "passwd": "/etc/passwd"}[where]
    (vqgan_lc_artifact / "link.safetensors").symlink_to(outside)
    monkeypatch.chdir(vqgan_lc_artifact)  # `..` and the symlink resolve from here
    opened = []
    monkeypatch.setattr("vqkit.quantizers.vqgan_lc.load_codebook", lambda *a, **k: opened.append(a))
    edit_config(vqgan_lc_artifact, lambda c: c["model"]["quantizer"].update(codebook_path=value))
    with pytest.raises(UnsafeConfigError, match=rf"model\.quantizer\.codebook_path = '{value}' names a file"):
        load_tokenizer(vqgan_lc_artifact)
    assert opened == []


def test_a_positional_path_is_refused(vqgan_lc_artifact: Path) -> None:
    positional = {"_target_": "vqkit.quantizers.VQGANLCQuantizer", "_args_": [4, 16, "/etc/passwd"]}
    edit_config(vqgan_lc_artifact, lambda c: c["model"].update(quantizer=positional))
    with pytest.raises(UnsafeConfigError, match=r"model\.quantizer\._args_\[2\] \(codebook_path\) = '/etc/passwd'"):
        load_tokenizer(vqgan_lc_artifact)


def test_a_path_inside_plain_options_is_refused(artifact: Path) -> None:
    residual = {"_target_": "vqkit.quantizers.ResidualQuantizer", "dim": 4, "codebook_size": 16, "num_stages": 2,
                "stage_quantizer": "vqgan_lc", "stage_options": {"codebook_path": "/etc/passwd"}}
    edit_config(artifact, lambda c: c["model"].update(quantizer=residual))
    with pytest.raises(UnsafeConfigError, match=r"model\.quantizer\.stage_options\.codebook_path = '/etc/passwd'"):
        load_tokenizer(artifact)


@pytest.mark.parametrize("where", ["quantizer", "model"])
@pytest.mark.parametrize("key", ["build", "prepare"])
def test_a_build_block_is_refused(vqgan_lc_artifact: Path, where: str, key: str) -> None:
    block = {"source": "efficientnet_lite0", "num_images": 4096}
    edit_config(vqgan_lc_artifact, lambda c: (c["model"]["quantizer"] if where == "quantizer" else c["model"])
                .update({key: block}))
    prefix = r"model\.quantizer" if where == "quantizer" else "model"
    with pytest.raises(UnsafeConfigError, match=rf"{prefix}\.{key} asks for a build"):
        load_tokenizer(vqgan_lc_artifact)


@pytest.mark.parametrize(
    "target",
    ["vqkit.layers.feature_encoder.FrozenFeatureEncoder",  # reads pretrained weights (weights_path / packaged)
     "vqkit.losses.perceptual.LPIPS"],  # a training part, and it reads the installed LPIPS weights
)
def test_modules_that_read_files_of_their_own_are_refused(artifact: Path, target: str) -> None:
    edit_config(artifact, lambda c: c["model"].update(encoder={"_target_": target}))
    with pytest.raises(UnsafeConfigError, match=rf"model\.encoder\._target_ = '{target}'.*(reads files|not part)"):
        load_tokenizer(artifact)


def test_weights_that_are_a_symlink_out_of_the_folder_are_refused(artifact: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    (artifact / "model.safetensors").rename(elsewhere)
    (artifact / "model.safetensors").symlink_to(elsewhere)
    with pytest.raises(UnsafeConfigError, match=r"model\.safetensors is a link to .*elsewhere\.safetensors"):
        load_tokenizer(artifact)


def test_a_folder_that_is_a_symlink_loads(artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "latest").symlink_to(artifact)
    assert load_tokenizer(tmp_path / "latest").codebook_size == 16


def test_a_hugging_face_cache_snapshot_loads(artifact: Path, tmp_path: Path) -> None:
    """huggingface_hub's cache: models--org--name/snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    repo = tmp_path / "hub" / "models--org--tok"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for i, name in enumerate(("config.json", "model.safetensors")):
        (artifact / name).rename(repo / "blobs" / f"blob{i}")
        (snapshot / name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert load_tokenizer(snapshot).codebook_size == 16


@contextmanager
def memory_cap() -> Iterator[None]:
    """Address space capped at 1 GiB above today's: were the check missing, the allocation would fail at once
    (ENOMEM) instead of filling the machine's memory (Linux overcommits: 2**40 codes x 4 dims "succeeds")."""
    resource = pytest.importorskip("resource")
    statm = Path("/proc/self/statm")
    if not statm.is_file():
        pytest.skip("needs /proc/self/statm (Linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (min(cap, hard) if hard != resource.RLIM_INFINITY else cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize(
    ("key", "value"),
    [("quantizer.codebook_size", 2**40), ("quantizer.codebook_size", 2**28), ("encoder.channels", 2**20),
     ("decoder.num_res_blocks", 10**7)],
)
def test_sizes_the_weights_cannot_fill_are_refused_before_allocating(artifact: Path, key: str, value: int) -> None:
    part, name = key.split(".")
    edit_config(artifact, lambda c: c["model"][part].update({name: value}))
    started = time.perf_counter()
    with memory_cap(), pytest.raises(UnsafeConfigError, match=rf"model\.{part}.*{name}={value}.*model\.safetensors"):
        load_tokenizer(artifact)
    assert time.perf_counter() - started < 5


def test_an_untampered_artifact_still_loads(artifact: Path) -> None:
    tokenizer = load_tokenizer(artifact)
    assert tokenizer.codebook_size == 16
    assert json.loads((artifact / "config.json").read_text())["model"] == TINY_MODEL


def test_save_pretrained_writes_a_self_contained_config(run: Path, tmp_path: Path) -> None:
    from vqkit.models import TokenizerModel

    model = TokenizerModel.from_config(vqgan_lc_model(str(run / "codebook.safetensors")))  # built in Python
    model.save_pretrained(tmp_path / "saved")
    os.remove(run / "codebook.safetensors")
    assert torch.equal(load_tokenizer(tmp_path / "saved").quantizer.features, model.quantizer.features)


def test_every_argument_that_takes_a_path_is_seen_as_one() -> None:
    """The audit behind FILE_ARGUMENT: every constructor argument of the artifact packages' modules typed as a path
    matches it, and these are all of them (a new one must be looked at): each module either says how to do
    without its file (``self_contained_arguments``) or is refused in artifacts."""
    import importlib
    import inspect
    import pkgutil

    import vqkit
    from vqkit.models.artifact import ARTIFACT_PACKAGES, FILE_ARGUMENT

    seen = {}
    for info in pkgutil.walk_packages(vqkit.__path__, "vqkit."):
        if not info.name.startswith(ARTIFACT_PACKAGES):
            continue
        for cls in vars(importlib.import_module(info.name)).values():
            if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == info.name):
                continue
            for p in inspect.signature(cls).parameters.values():
                if "Path" in str(p.annotation) or FILE_ARGUMENT.search(p.name):
                    assert FILE_ARGUMENT.search(p.name), f"{cls.__qualname__}({p.name}) takes a path"
                    seen[f"{cls.__name__}.{p.name}"] = hasattr(cls, "self_contained_arguments")
    assert seen == {"VQGANLCQuantizer.codebook_path": True, "VQBridgeQuantizer.init_codebook_path": True,
                    "FrozenFeatureEncoder.weights_path": False, "PretrainedFeatureDiscriminator.weights_path": False}
