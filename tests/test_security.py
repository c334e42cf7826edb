"""Nothing vqkit reads runs code: checkpoints are never unpickled unless asked for in so many words, and artifact
configs name only torch.nn.Module classes of vqkit, with plain data around them (no Hydra directives)."""

from __future__ import annotations

import builtins
import datetime
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import vqkit.train
from tests.artifacts import TINY_MODEL, edit_config, tiny_checkpoint
from vqkit.eval import evaluate
from vqkit.export import export_tokenizer, main
from vqkit.lit.checkpoint_io import load_checkpoint
from vqkit.tokenizers import UnsafeConfigError, load_tokenizer


class WritesMarker:
    """Unpickling this opens (creates) ``path``: stands for any code a malicious pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.path), "w")


def evil_checkpoint(tmp_path: Path, writer: str = "torch.save") -> tuple[Path, Path]:
    """A checkpoint that creates the returned marker file when unpickled."""
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    payload = {"state_dict": {}, "vqkit_config": {"model": TINY_MODEL}, "x": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    return ckpt, marker


# --- checkpoints ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_export_refuses_a_pickle_that_runs_code(tmp_path: Path, writer: str) -> None:
    ckpt, marker = evil_checkpoint(tmp_path, writer)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load .*evil.ckpt.*allow_pickle=true") as info:
        export_tokenizer(ckpt, tmp_path / "out")
    if writer == "torch.save":
        assert "io.open" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    ckpt, marker = evil_checkpoint(tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        evaluate(str(ckpt), out=str(tmp_path / "eval"))
    assert not marker.exists()


def test_allow_pickle_must_be_explicit_and_warns(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "tiny.ckpt", exported_on=datetime.date(2025, 1, 1))
    with pytest.raises(pickle.UnpicklingError, match="datetime.date"):
        export_tokenizer(ckpt, tmp_path / "out")
    with pytest.warns(UserWarning, match="arbitrary code"):
        tokenizer = export_tokenizer(ckpt, tmp_path / "out", allow_pickle=True)
    assert tokenizer.codebook_size == 16 and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("value", ["no", "false", "0", 1])
def test_allow_pickle_takes_booleans_only(tmp_path: Path, value: Any, capsys) -> None:
    """A CLI word such as "no" is a non-empty string, i.e. truthy: it must not switch the unpickler on."""
    ckpt, marker = evil_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="allow_pickle must be True or False"):
        load_checkpoint(ckpt, allow_pickle=value)
    with pytest.raises(TypeError, match="allow_pickle must be True or False"):
        evaluate(str(ckpt), out=str(tmp_path / "eval"), allow_pickle=value)
    if isinstance(value, str) and value != "false":  # Hydra parses `false` as the boolean
        assert main([f"ckpt_path={ckpt}", f"out={tmp_path / 'out'}", f"allow_pickle={value}"]) == 2
        assert "allow_pickle must be true or false" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model", "encoder", "encoder.channels"])
def test_export_checks_the_targets_of_the_checkpoint_config(tmp_path: Path, monkeypatch, where: str) -> None:
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(args))
    node = {"_target_": "os.system", "_args_": ["touch pwned"]}
    model = {**TINY_MODEL, "encoder": dict(TINY_MODEL["encoder"])}
    if where == "model":
        model.update(node)
    elif where == "encoder":
        model["encoder"] = node
    else:
        model["encoder"]["channels"] = node
    with pytest.raises(UnsafeConfigError, match=rf"vqkit_config\.model(\.{where})?\._target_ = 'os.system' is refused"):
        export_tokenizer(tiny_checkpoint(tmp_path / "evil.ckpt", config=model), tmp_path / "out")
    assert calls == []
    assert not (tmp_path / "out").exists()


# --- artifacts --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "vqkit.train.train",  # a vqkit function
        "vqkit.data.EmbeddedPhotosDataModule",  # a vqkit class that is not an nn.Module
        "vqkit.lit.checkpoint_io.os.system",  # reached through a vqkit module
        "vqkit.lit.tokenizer_module.nn.Linear",  # an nn.Module, but not defined in vqkit
        "vqkit.__builtins__.eval",
        "vqkit.missing.Module",
    ],
)
@pytest.mark.parametrize("where", ["model", "model.encoder", "model.encoder.channels"])
def test_load_refuses_targets_other_than_vqkit_modules(artifact: Path, monkeypatch, target: str, where: str) -> None:
    calls = []

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(args)

    monkeypatch.setattr(os, "system", record)
    monkeypatch.setattr(builtins, "eval", record)
    monkeypatch.setattr(vqkit.train, "train", record)
    node = {"_target_": target, "_args_": ["touch pwned"]}

    def edit(config: dict[str, Any]) -> None:
        parent, key = config, where.split(".")
        for part in key[:-1]:
            parent = parent[part]
        if where == "model":
            parent["model"].update(node)
        else:
            parent[key[-1]] = node

    edit_config(artifact, edit)
    with pytest.raises(UnsafeConfigError, match=rf"config\.json: {re.escape(where)}\._target_ = .* is refused"):
        load_tokenizer(artifact)
    assert calls == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("_partial_", True), ("_recursive_", False), ("_convert_", "all"), ("channels", "${oc.env:HOME}")],
)
@pytest.mark.parametrize("node", ["model", "encoder"])
def test_load_refuses_hydra_directives_and_interpolations(artifact: Path, key: str, value: Any, node: str) -> None:
    edit_config(artifact, lambda c: (c["model"] if node == "model" else c["model"]["encoder"]).update({key: value}))
    prefix = r"model\." if node == "model" else r"model\.encoder\."
    with pytest.raises(UnsafeConfigError, match=prefix + r"(_partial_|_recursive_|_convert_|channels)"):
        load_tokenizer(artifact)


def test_from_config_refuses_non_plain_data() -> None:
    # JSON holds only plain data; a model config handed to from_config in Python may hold any object.
    from vqkit.models import ImageTokenizer

    config = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "channels": builtins}}
    with pytest.raises(UnsafeConfigError, match="holds a module; only plain JSON data"):
        ImageTokenizer.from_config(config)
