"""Files vqkit writes and reads: atomic writes with the user's permissions; torch files read without unpickling.

``write_atomically`` is the one writer of every artifact, codebook and code file: a temporary file beside
the target, flushed and moved into place, so a killed write never leaves a partial file under the final
name. ``tempfile.mkstemp`` and safetensors' ``save_file`` create files readable by their owner only (0600);
here the file gets the permissions any new file gets (``0o666`` minus the umask), as ``open()`` gives.

``torch_load`` reads a ``torch.save`` file with ``weights_only=True`` and turns every failure into an error
that names the file and what it is instead (empty, truncated, an image, a pickle of Python objects), never
relaying torch's advice to re-run the load with ``weights_only=False``, which runs any code in the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch


def umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it; the file's mode is ``0o666 & ~umask``.

    The parent folder is created. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o666 & ~umask())  # mkstemp made it 0600
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return path


# The first bytes of files people pass where a checkpoint belongs.
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (WAV audio / WebP image)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
    b"\x93NUMPY": "a NumPy .npy array",
    b"\x89HDF": "an HDF5 file",
}


def describe_foreign(path: Path) -> str | None:
    """What ``path`` is when it clearly is not a ``torch.save`` file (empty, an image, safetensors...), else None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "it is empty (0 bytes): the save or the copy was interrupted"
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return f"it is {kind}, not a PyTorch file"
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return ("it is a truncated or corrupt zip archive (the format of torch.save): the save or the copy was cut "
                "short; copy it again from where it was written")
    if len(head) >= 9 and head[8:9] == b"{":
        return "it is a safetensors file (load it with safetensors), not a torch.save file"
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip format nor a raw pickle
        return f"it is not a PyTorch file (it starts with {head[:8]!r})"
    return None


def check_torch_file(path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> Path:
    """Raise unless ``path`` exists and looks like a ``torch.save`` file (its first bytes only: nothing is loaded).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty, a truncated zip, or another kind of file (an image, safetensors, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    foreign = describe_foreign(path)
    if foreign is not None:
        raise ValueError(f"{path} is not a readable {what}: {foreign}{hint}")
    return path


def torch_load(path: str | os.PathLike, what: str = "checkpoint", hint: str = "") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that say what the file is.

    Args:
        path: the file.
        what: what the file should be, for messages ("checkpoint", "weights file (module.x.weights_path)").
        hint: what to do instead, appended to the errors of missing and unreadable files (a refused pickle's
            caller says what to do with it).

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: a pickle holding Python objects other than tensors and plain data (named).
        ValueError: empty, truncated or corrupt, or not a PyTorch file at all.
    """
    path = check_torch_file(path, what, hint)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the errors below say what the file is
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never relay it
        content = _pickled_objects(path)
        if content is None:
            raise ValueError(f"{path} is not a readable {what}: its pickle is truncated or corrupt{hint}") from None
        raise pickle.UnpicklingError(f"refusing to load {path}: {content}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable {what}: it is truncated or corrupt ({_first_line(err)}){hint}"
                         ) from None


def _pickled_objects(path: Path) -> str | None:
    """What in ``path`` ``weights_only`` loading refuses (scanning the pickle, running nothing); None: unreadable."""
    if not zipfile.is_zipfile(path):
        return "it is a raw pickle (not torch's zip format), which may hold any Python object"
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a pickle the scanner cannot read is corrupt, whatever the error type
        return None
    return f"it references the Python objects {', '.join(unsafe)}" if unsafe else None


def _first_line(err: BaseException) -> str:
    """The first sentence of an error's message, without any advice to turn weights_only off."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    sentence = text.split(". ")[0]
    return type(err).__name__ if "weights_only" in sentence else sentence
