"""A file that is not a vqkit checkpoint, given to any entry point, gets an error that names the file, says what
it is (empty, truncated, an image, a foreign dict) and what to give instead; never torch's advice to re-run
``torch.load`` with ``weights_only=False`` (which runs any code the file holds)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.artifacts import tiny_checkpoint
from vqkit.eval import evaluate
from vqkit.export import export_tokenizer
from vqkit.export import main as export_main
from vqkit.lit.checkpoint_io import AtomicCheckpointIO
from vqkit.tools import codebook as codebook_tool

KINDS = ("truncated", "png", "foreign", "empty")
WHAT = {"truncated": "truncated", "png": "PNG image", "foreign": "not a Lightning checkpoint", "empty": "empty"}


def bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":  # a real checkpoint cut short, as by a full disk or an interrupted copy
        data = tiny_checkpoint(tmp_path / "good.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "png":
        Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "picture.png")
        path.write_bytes((tmp_path / "picture.png").read_bytes())
    elif kind == "foreign":  # a torch.save'd dict of someone else's code
        torch.save({"weights": torch.zeros(3), "epoch": 4}, path)
    else:
        path.write_bytes(b"")
    return path


def check_message(message: str, path: Path, kind: str) -> None:
    assert str(path) in message, message
    assert WHAT[kind] in message, message
    assert "python -m vqkit.train" in message, message  # what to give instead
    assert "weights_only" not in message, message


def via_export(path: Path, out: Path) -> None:
    export_tokenizer(path, out)


def via_eval(path: Path, out: Path) -> None:
    evaluate(str(path), out=str(out))


def via_codebook_tool(path: Path, out: Path) -> None:
    codebook_tool._tokenizer_encoder(path)  # `python -m vqkit.tools.codebook --source tokenizer --tokenizer PATH`


def via_lightning(path: Path, out: Path) -> None:
    AtomicCheckpointIO().load_checkpoint(path, weights_only=True)  # what trainer.fit(ckpt_path=) reads with


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", [via_export, via_eval, via_codebook_tool, via_lightning], ids=lambda f: f.__name__)
def test_every_entry_point_says_what_the_file_is(tmp_path: Path, kind: str, entry: Callable) -> None:
    path = bad_file(tmp_path, kind)
    with pytest.raises(ValueError) as info:
        entry(path, tmp_path / "out")
    check_message(str(info.value), path, kind)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_the_export_command_prints_it(tmp_path: Path, kind: str, capsys) -> None:
    path = bad_file(tmp_path, kind)
    assert export_main([f"ckpt_path={path}", f"out={tmp_path / 'out'}"]) == 1
    check_message(capsys.readouterr().err, path, kind)


@pytest.mark.parametrize("kind", ["truncated", "png", "empty"])
@pytest.mark.parametrize("option", ["ckpt_path", "resume"])
def test_train_refuses_it_before_building_anything(make_config, tmp_path: Path, kind: str, option: str) -> None:
    import vqkit.train

    path = bad_file(tmp_path, kind)
    if option == "resume":  # a run folder whose last.ckpt is bad
        run = tmp_path / "old_run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("{}\n")
        path = path.rename(run / "checkpoints" / "last.ckpt")
        override = f"resume={run}"
    else:
        override = f"ckpt_path={path}"
    with pytest.raises(ValueError) as info:
        vqkit.train.train(make_config(override, "trainer.max_steps=1"))
    check_message(str(info.value), path, kind)
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_train_resume_reads_through_vqkit(make_config, tmp_path: Path) -> None:
    """A well-formed torch file that is no Lightning checkpoint gets through the first-bytes check: Lightning's
    read (AtomicCheckpointIO -> load_checkpoint) refuses it."""
    import vqkit.train

    path = bad_file(tmp_path, "foreign")
    with pytest.raises(ValueError) as info:
        vqkit.train.train(make_config(f"ckpt_path={path}", "trainer.max_steps=1", "test=false"))
    check_message(str(info.value), path, "foreign")


def test_final_checkpoint_sets_weights_only(make_config, caplog) -> None:
    import vqkit.train

    with caplog.at_level(logging.INFO):
        result = vqkit.train.train(make_config("trainer.max_steps=1", "test=false", "callbacks.progress_bar=null",
                                               "callbacks.reconstruction_grid=null"))
    assert Path(result["checkpoint"]).is_file()
    assert "weights_only" not in caplog.text  # Lightning's "`weights_only` was not set, defaulting to `False`."
    assert "optimizer_states" in torch.load(result["checkpoint"], weights_only=True)  # still a full checkpoint


def test_pretrained_weights_never_relay_the_advice(tmp_path: Path) -> None:
    import pickle

    from vqkit.layers.pretrained import read_state_dict

    code = tmp_path / "code.pth"
    code.write_bytes(pickle.dumps({"w": torch.zeros(1), "f": print}))
    with pytest.raises(ValueError) as info:
        read_state_dict(code, "module.repa.weights_path")
    assert str(code) in str(info.value) and "weights_only" not in str(info.value)
    torch.save({"w": torch.zeros(1), "f": print}, code)  # torch's zip format, same content
    with pytest.raises(ValueError) as info:
        read_state_dict(code, "module.repa.weights_path")
    assert "builtins.print" in str(info.value) and "weights_only" not in str(info.value)
