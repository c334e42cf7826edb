"""Files vqkit writes get the permissions of any new file (0o666 minus the umask), not the 0600 of
``tempfile.mkstemp`` / safetensors' ``save_file``: an artifact, a codebook or a code file is meant to be shared."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.artifacts import TINY_MODEL
from vqkit.files import write_atomically
from vqkit.models import ImageTokenizer
from vqkit.quantizers.codebook_file import save_codebook


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_write_atomically_respects_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        path = write_atomically(tmp_path / "sub" / "file.bin", b"data")
    assert path.read_bytes() == b"data" and mode(path) == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = write_atomically(tmp_path / "file.bin", b"old")

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_artifacts_and_codebooks_are_readable_by_the_group(tmp_path: Path) -> None:
    with umask(0o022):
        ImageTokenizer.from_config(TINY_MODEL).save_pretrained(tmp_path / "tok")
        codebook = save_codebook(tmp_path / "cb.safetensors", torch.randn(4, 2))
    for path in (tmp_path / "tok" / "model.safetensors", tmp_path / "tok" / "config.json", codebook):
        assert mode(path) == 0o644, path
