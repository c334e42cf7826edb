"""Waveform datasets: any folder tree of audio files (``data=audio_folder``) and the embedded speech (``data=speech``).

Files. Every ``.wav .flac .ogg`` (case-insensitive) under ``root`` (any depth, so the LibriSpeech
layout ``root/<speaker>/<chapter>/*.flac`` works), read with soundfile, mixed down to mono
(mean over channels) and resampled to ``sample_rate`` with ``torchaudio.functional.resample``.
``exclude`` drops files whose relative path matches any of its glob patterns.

Splits (deterministic, by file). A file goes to test if ``u < test_fraction``, to val if
``u < test_fraction + val_fraction``, else to train, where ``u`` is a hash of its *group*
mapped to [0, 1): the group is the relative path of the file (``split_depth`` = 0) or its
first ``split_depth`` folders (``split_depth`` = 1 for LibriSpeech keeps every speaker on
one side). The split of a file never depends on which other files exist, except in small
folders: when the hashes leave a split empty, the group of the largest split whose ``u`` lies
nearest the empty split's range moves to it (with a warning), so every split holds a file as
soon as there are 3 groups (2 with ``test_fraction`` = 0). Fewer groups, or no readable file
at all, is an error that says so.

Samples. Batches are ``{"audio": (B, 1, L) float32 in [-1, 1]}`` with ``L = segment_seconds *
sample_rate``. Training: each item is a random crop of one file (shorter files are zero-padded
at the end), ``train_samples`` items per epoch (files drawn uniformly), crop positions from
torch's RNG (seeded by Lightning's ``seed_everything(workers=True)``). Validation/test: each
file cut into consecutive segments from its start (the last one zero-padded), at most
``max_eval_segments`` per file, the same every time.

Unreadable files. Headers are read once when a split is indexed (``soundfile.info``); a file
soundfile cannot open is reported by path through ``logging`` (logger ``vqkit.data.audio``)
and left out. A file that fails later while decoding is reported, marked (in shared memory,
seen by every DataLoader worker) and replaced by the next file of the split. More than
``max_corrupt`` unreadable files in a split raise a RuntimeError listing all of their paths.

The embedded speech (``EmbeddedSpeechDataModule``): the English prompts of the Asterisk PBX
recorded by Allison Smith (CC-BY-SA-3.0, (c) 2003-2010 Allison Smith; Debian package
``asterisk-core-sounds-en-wav`` 1.6.1-1, installed by ``python -m vqkit.tools.assets install``):
568 mono 16-bit WAV files at 8 kHz, 25.5 minutes of one female voice reading words, digits,
letters and sentences; the ``silence/`` files are excluded by default.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vqkit.data.workers import check_num_workers, loader_options
from vqkit.modalities.audio_files import read_audio

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
HOW_TO = (
    "Pass data.root=/path/to/audio, a folder tree holding .wav/.flac/.ogg files (e.g. LibriSpeech/train-clean-100)."
)


@dataclass(frozen=True)
class AudioFile:
    """One indexed file: its path, relative path, native sample rate, frames and channels."""

    path: str
    relative: str
    sample_rate: int
    frames: int
    channels: int


def _unit(group: str) -> float:
    """A hash of a group name mapped to [0, 1) (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big") / 2**64


def split_of(group: str, val_fraction: float, test_fraction: float) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a group name, from a hash of it (stable across runs and machines)."""
    u = _unit(group)
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def assign_splits(groups: list[str], val_fraction: float, test_fraction: float) -> tuple[dict[str, str], list[str]]:
    """The split of every group (``split_of``), with no needed split left empty when there are enough groups.

    The needed splits are train, val and test (train and val with ``test_fraction`` = 0). A needed split the
    hashes leave empty receives the group of the largest split whose hash lies nearest its range.

    Returns:
        ``({group: split}, the groups moved)``; with fewer groups than needed splits, some stay empty.
    """
    needed = ("train", "val", "test") if test_fraction > 0 else ("train", "val")
    ranges = {"test": (0.0, test_fraction), "val": (test_fraction, test_fraction + val_fraction),
              "train": (test_fraction + val_fraction, 1.0)}
    assignment = {g: split_of(g, val_fraction, test_fraction) for g in sorted(set(groups))}
    moved: list[str] = []
    if len(assignment) < len(needed):
        return assignment, moved
    for split in needed:
        if split in assignment.values():
            continue
        donor = max(needed, key=lambda s: sum(v == s for v in assignment.values()))
        low, high = ranges[split]
        group = min((g for g, v in assignment.items() if v == donor),
                    key=lambda g: (max(low - _unit(g), _unit(g) - high, 0.0), g))
        assignment[group] = split
        moved.append(group)
    return assignment, moved


def find_audio_files(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Sorted audio files under ``root`` (any depth), without those matching an ``exclude`` glob."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in AUDIO_EXTENSIONS or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in exclude):
            continue
        files.append(path)
    return files


class AudioSplit(Dataset):
    """One split of indexed files; training items are random crops, evaluation items fixed segments.

    Args:
        files: the split's readable files.
        sample_rate: output rate.
        segment: samples per item at ``sample_rate``.
        train: random crops (``num_samples`` per epoch) if True, else consecutive segments.
        num_samples: items per epoch in training.
        max_eval_segments: segments per file in evaluation.
        max_corrupt: files that may fail to decode before loading raises.
        name: split name for messages.
    """

    def __init__(
        self, files: list[AudioFile], sample_rate: int, segment: int, train: bool, num_samples: int,
        max_eval_segments: int, max_corrupt: int, name: str,
    ) -> None:
        self.files = files
        self.sample_rate = sample_rate
        self.segment = segment
        self.train = train
        self.num_samples = num_samples
        self.max_corrupt = max_corrupt
        self.name = name
        self.corrupt = torch.zeros(len(files), dtype=torch.bool).share_memory_()
        self.items: list[tuple[int, int]] = []  # evaluation: (file index, start sample at sample_rate)
        if not train:
            for i, f in enumerate(files):
                length = math.ceil(f.frames * sample_rate / f.sample_rate)
                count = min(max(math.ceil(length / segment), 1), max_eval_segments)
                self.items += [(i, k * segment) for k in range(count)]

    def __len__(self) -> int:
        return self.num_samples if self.train else len(self.items)

    @property
    def corrupt_files(self) -> list[str]:
        """Paths of the files that failed to decode so far, in any process."""
        return [self.files[i].path for i in self.corrupt.nonzero().flatten().tolist()]

    def item_path(self, index: int) -> str:
        """Evaluation items: ``<file relative to the root>#<first sample at sample_rate>``."""
        if self.train:
            raise ValueError("training items are random crops: they have no fixed place in a file")
        file, start = self.items[index]
        return f"{self.files[file].relative}#{start}"

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if self.train:
            first = int(torch.randint(len(self.files), ()))
        else:
            first, start = self.items[index]
        n = len(self.files)
        for offset in range(n):
            i = (first + offset) % n
            if self.corrupt[i]:
                continue
            f = self.files[i]
            native_segment = math.ceil(self.segment * f.sample_rate / self.sample_rate)
            if self.train:
                native_start = int(torch.randint(max(f.frames - native_segment, 0) + 1, ()))
            else:
                native_start = min(round(start * f.sample_rate / self.sample_rate), max(f.frames - 1, 0))
            try:
                wave = read_audio(f.path, self.sample_rate, native_start, native_segment)
            except (sf.LibsndfileError, RuntimeError, ValueError) as err:
                self._mark_corrupt(i, err)
                continue
            return {"audio": _fit(wave, self.segment)}
        raise RuntimeError(f"none of the {n} audio files of the {self.name} split can be decoded")

    def _mark_corrupt(self, i: int, err: Exception) -> None:
        self.corrupt[i] = True
        count = int(self.corrupt.sum())
        log.warning(
            "skipping unreadable audio file %s (%s: %s); replaced by the next file. %d unreadable in the %s split "
            "(data.max_corrupt=%d)", self.files[i].path, type(err).__name__, err, count, self.name, self.max_corrupt,
        )
        if count > self.max_corrupt:
            raise RuntimeError(
                f"{count} unreadable audio files in the {self.name} split, more than data.max_corrupt="
                f"{self.max_corrupt}. Delete or re-encode them, or raise data.max_corrupt. Files:\n"
                + "\n".join(self.corrupt_files)
            )


def _fit(wave: Tensor, length: int) -> Tensor:
    """(1, T) -> (1, length): cut or zero-pad at the end; values clamped to [-1, 1]."""
    wave = wave[:, :length]
    if wave.shape[-1] < length:
        wave = torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    return wave.clamp(-1.0, 1.0)


class AudioFolderDataModule(L.LightningDataModule):
    """Mono waveform crops from a folder tree of audio files (see the module docstring).

    Args:
        root: the folder.
        sample_rate: Hz of the batches (files are resampled to it).
        segment_seconds: length of every item.
        batch_size: batch size of every split.
        num_workers: DataLoader worker processes per split, or ``auto`` (the cores this process may use minus one,
            at most 8; ``vqkit.data.workers``).
        train_samples: random crops per training epoch (None: one per training file).
        val_fraction: share of groups in the validation split.
        test_fraction: share of groups in the test split (0: test on the validation split).
        split_depth: 0 splits by file; k > 0 by the first k folders of the relative path.
        max_eval_segments: segments per file in validation/test.
        max_corrupt: unreadable files tolerated per split.
        exclude: glob patterns (on paths relative to ``root``) of files to leave out.
    """

    modality = "audio"  # vqkit.train refuses a model of another modality (TokenizerModel.modality)

    def __init__(
        self,
        root: str,
        sample_rate: int = 16_000,
        segment_seconds: float = 1.0,
        batch_size: int = 16,
        num_workers: int | str = "auto",
        train_samples: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        split_depth: int = 0,
        max_eval_segments: int = 4,
        max_corrupt: int = 100,
        exclude: list[str] | tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if sample_rate < 1 or batch_size < 1 or segment_seconds <= 0:
            raise ValueError(
                f"data.sample_rate, data.batch_size and data.segment_seconds must be positive, got {sample_rate}, "
                f"{batch_size}, {segment_seconds}"
            )
        if val_fraction <= 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"need val_fraction > 0, test_fraction >= 0 and their sum < 1, got {val_fraction}, {test_fraction}"
            )
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={root!r} is not a directory. {HOW_TO}")
        self.sample_rate = sample_rate
        self.segment = max(round(segment_seconds * sample_rate), 1)
        self.batch_size = batch_size
        self.num_workers = check_num_workers(num_workers)
        self.train_samples = train_samples
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_depth = split_depth
        self.max_eval_segments = max_eval_segments
        self.max_corrupt = max_corrupt
        self.exclude = tuple(exclude)
        self.splits: dict[str, AudioSplit] = {}
        self.unreadable: list[str] = []

    @property
    def corrupt_files(self) -> dict[str, list[str]]:
        """Unreadable files: ``"index"`` (failed when indexed) and per split (failed while decoding)."""
        return {"index": list(self.unreadable), **{name: s.corrupt_files for name, s in self.splits.items()}}

    def _group(self, relative: str) -> str:
        if self.split_depth <= 0:
            return relative
        parts = relative.split("/")
        return "/".join(parts[: min(self.split_depth, len(parts) - 1)]) or relative

    def index(self) -> dict[str, list[AudioFile]]:
        """Read every file's header and assign the files to splits; unreadable files are reported and left out."""
        paths = find_audio_files(self.root, self.exclude)
        if not paths:
            raise ValueError(f"no audio files ({' '.join(AUDIO_EXTENSIONS)}) found under {self.root}. {HOW_TO}")
        readable: list[AudioFile] = []
        self.unreadable = []
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            try:
                info = sf.info(str(path))
                if info.frames <= 0 or info.samplerate <= 0:
                    raise ValueError(f"it holds no audio ({info.frames} frames at {info.samplerate} Hz): an empty "
                                     "recording")
            except (sf.LibsndfileError, RuntimeError, ValueError) as err:
                self.unreadable.append(str(path))
                log.warning("skipping unreadable audio file %s (%s: %s)", path, type(err).__name__, err)
                continue
            readable.append(AudioFile(str(path), relative, info.samplerate, info.frames, info.channels))
        if not readable:
            shown = "\n".join(self.unreadable[:20]) + ("\n..." if len(self.unreadable) > 20 else "")
            raise ValueError(
                f"none of the {len(paths)} audio files under {self.root} can be read (empty, truncated or not "
                f"audio; the warnings above say why for each); re-encode them, e.g. as 16-bit WAV. Files:\n{shown}"
            )
        if len(self.unreadable) > self.max_corrupt:
            raise RuntimeError(
                f"{len(self.unreadable)} unreadable audio files under {self.root}, more than data.max_corrupt="
                f"{self.max_corrupt}. Delete or re-encode them, or raise data.max_corrupt. Files:\n"
                + "\n".join(self.unreadable)
            )
        return self._split(readable)

    def _split(self, files: list[AudioFile]) -> dict[str, list[AudioFile]]:
        """The readable files of each split (``assign_splits`` over their groups); too few groups is an error."""
        groups = [self._group(f.relative) for f in files]
        assignment, moved = assign_splits(groups, self.val_fraction, self.test_fraction)
        needed = 3 if self.test_fraction > 0 else 2
        if len(assignment) < needed:
            unit = f"folder groups (data.split_depth={self.split_depth})" if self.split_depth > 0 else "files"
            fixes = ["add audio files"]
            if self.split_depth > 0 and len(files) >= needed:
                fixes.append("set data.split_depth=0 to split by file")
            if self.test_fraction > 0:
                fixes.append("set data.test_fraction=0 to test on the validation split (2 are then enough)")
            splits = "train, val and test splits" if needed == 3 else "train and val splits"
            raise ValueError(
                f"{self.root} has {len(assignment)} readable audio {unit}; the {splits} need one each, "
                f"{needed} at least: {', or '.join(fixes)}"
            )
        by_split: dict[str, list[AudioFile]] = {"train": [], "val": [], "test": []}
        for file, group in zip(files, groups, strict=True):
            by_split[assignment[group]].append(file)
        if moved:
            log.warning(
                "audio under %s: only %d files; data.val_fraction=%g / data.test_fraction=%g left a split empty, so "
                "%s moved to it. Metrics of such tiny splits are noisy: add files for a meaningful evaluation",
                self.root, len(files), self.val_fraction, self.test_fraction,
                ", ".join(f"{g} ({assignment[g]})" for g in moved),
            )
        if self.test_fraction == 0:
            by_split["test"] = by_split["val"]
        return by_split

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        by_split = self.index()
        for name, files in by_split.items():
            train = name == "train"
            samples = self.train_samples if self.train_samples is not None else len(files)
            self.splits[name] = AudioSplit(
                files, self.sample_rate, self.segment, train, samples, self.max_eval_segments, self.max_corrupt, name
            )
        total = {name: sum(f.frames / f.sample_rate for f in files) / 60 for name, files in by_split.items()}
        log.info(
            "audio under %s: %s", self.root,
            ", ".join(f"{name} {len(by_split[name])} files / {total[name]:.1f} min" for name in by_split),
        )

    def _loader(self, name: str) -> DataLoader:
        if not self.splits:
            self.setup()
        dataset = self.splits[name]
        train = name == "train"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,  # training items are random crops already; evaluation keeps its order
            drop_last=train and len(dataset) >= self.batch_size,
            **loader_options(self.num_workers),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def tokenize_dataset(self, split: str) -> AudioSplit:
        """The items ``vqkit.tokenize`` encodes: every file of the split cut into consecutive segments (all of
        them, for training files too: no random crops, no ``max_eval_segments`` cap)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.setup()
        files = self.splits[split].files
        return AudioSplit(files, self.sample_rate, self.segment, False, 0, sys.maxsize, self.max_corrupt, split)


class EmbeddedSpeechDataModule(AudioFolderDataModule):
    """The Asterisk English prompts (CC-BY-SA-3.0, Allison Smith) installed by ``python -m vqkit.tools.assets install``.

    Takes ``AudioFolderDataModule``'s arguments except ``root`` (the installed asset; pass ``root``
    to read another copy). Defaults: 8 kHz (the recordings' rate), ``silence/`` excluded.
    """

    def __init__(self, root: str | None = None, sample_rate: int = 8_000, exclude: tuple[str, ...] = ("*/silence/*",),
                 **kwargs) -> None:
        if root is None:
            from vqkit.tools.assets import SPEECH, asset_path

            root = str(asset_path(SPEECH))
        super().__init__(root=root, sample_rate=sample_rate, exclude=exclude, **kwargs)
