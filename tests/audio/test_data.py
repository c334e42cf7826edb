"""Audio folders and the embedded speech: splits, corrupt files, resampling, mono mixdown, crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.data.audio import AudioFolderDataModule, EmbeddedSpeechDataModule, split_of
from vqkit.modalities.audio_files import load_audio_file


def write_tree(root: Path, n: int = 30) -> Path:
    for i in range(n):
        folder = root / f"spk{i % 3}" / "chapter"
        folder.mkdir(parents=True, exist_ok=True)
        t = np.arange(1600 + 37 * i) / 8000
        wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        sf.write(folder / f"utt{i}.{'flac' if i % 2 else 'wav'}", wave, 8000)
    return root


def module(root: Path, **kwargs) -> AudioFolderDataModule:
    options = dict(sample_rate=8000, segment_seconds=0.1, batch_size=4, num_workers=0, val_fraction=0.2,
                   test_fraction=0.2)
    return AudioFolderDataModule(str(root), **{**options, **kwargs})


def test_split_is_deterministic_by_file_and_by_folder(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "a")
    first, second = module(root).index(), module(root).index()
    names = {k: [f.relative for f in v] for k, v in first.items()}
    assert names == {k: [f.relative for f in v] for k, v in second.items()}
    assert sum(len(v) for v in first.values()) == 30 and all(first.values())
    # adding files never moves the existing ones
    (root / "spk9").mkdir()
    sf.write(root / "spk9" / "new.wav", np.zeros(800, dtype=np.float32), 8000)
    grown = module(root).index()
    for name, files in first.items():
        assert {f.relative for f in files} <= {f.relative for f in grown[name]}
    # split_depth=1: every speaker folder on one side
    speakers = tmp_path / "speakers"
    for spk in range(20):
        for utt in range(3):
            (speakers / f"s{spk}").mkdir(parents=True, exist_ok=True)
            sf.write(speakers / f"s{spk}" / f"{utt}.wav", np.zeros(800, dtype=np.float32), 8000)
    sides: dict[str, set[str]] = {}
    for name, files in module(speakers, split_depth=1).index().items():
        for f in files:
            sides.setdefault(f.relative.split("/")[0], set()).add(name)
    assert len(sides) == 20 and all(len(s) == 1 for s in sides.values())
    assert split_of("x", 0.5, 0.0) == split_of("x", 0.5, 0.0)


def flat_folder(root: Path, n: int) -> Path:
    """``n`` short files ``0.wav``, ``1.wav``, ... in one folder: at 5% / 5% their hashes leave the val split empty
    for n = 3, 19 and 40 (and the test split for 3)."""
    root.mkdir(parents=True)
    for i in range(n):
        sf.write(root / f"{i}.wav", (0.3 * np.sin(np.arange(1600) * 0.05 * (i + 1))).astype(np.float32), 8000)
    return root


@pytest.mark.parametrize("n", [3, 19, 40])
def test_small_folders_give_every_split_a_file_at_the_default_fractions(tmp_path: Path, n: int, caplog) -> None:
    root = flat_folder(tmp_path / "a", n)
    with caplog.at_level(logging.WARNING, logger="vqkit.data.audio"):
        splits = AudioFolderDataModule(str(root), num_workers=0).index()  # val 5%, test 5%
    assert all(splits.values()) and sum(len(v) for v in splits.values()) == n
    assert len(splits["train"]) >= n - 2 - n // 10
    assert "noisy" in caplog.text and str(root) in caplog.text  # the user is told the splits are tiny
    assert splits == AudioFolderDataModule(str(root), num_workers=0).index()  # still deterministic


def test_too_few_files_or_folders_are_named(tmp_path: Path) -> None:
    root = flat_folder(tmp_path / "two", 2)
    with pytest.raises(ValueError, match="2 readable audio files; the train, val and test splits need one each"):
        AudioFolderDataModule(str(root), num_workers=0).index()
    assert all(AudioFolderDataModule(str(root), num_workers=0, test_fraction=0).index().values())
    for speaker in ("alice", "bob"):  # 6 files of 2 speakers: 2 groups when split by speaker
        flat_folder(tmp_path / "speakers" / speaker, 3)
    with pytest.raises(ValueError, match="2 readable audio folder groups .* set data.split_depth=0"):
        AudioFolderDataModule(str(tmp_path / "speakers"), num_workers=0, split_depth=1).index()


def test_a_folder_of_only_unreadable_files_says_so(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(4):
        (root / f"{i}.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="none of the 5 audio files under .* can be read") as err:
        AudioFolderDataModule(str(root), num_workers=0).index()
    assert "empty.wav" in str(err.value) and "val_fraction" not in str(err.value)


def test_corrupt_files_are_reported_by_path_and_skipped(tmp_path: Path, caplog) -> None:
    root = write_tree(tmp_path / "a")
    bad = root / "spk0" / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 3)
    with caplog.at_level(logging.WARNING, logger="vqkit.data.audio"):
        dm = module(root)
        dm.setup()
    assert str(bad) in caplog.text and dm.corrupt_files["index"] == [str(bad)]
    assert all(str(bad) != f.path for split in dm.splits.values() for f in split.files)
    with pytest.raises(RuntimeError, match="broken.wav"):
        module(root, max_corrupt=0).setup()


def test_file_failing_at_decode_is_replaced_and_counted(tmp_path: Path, caplog) -> None:
    root = write_tree(tmp_path / "a", n=6)
    dm = module(root, val_fraction=0.3, test_fraction=0.3, max_corrupt=1)
    dm.setup()
    split = dm.splits["train"]
    victim = Path(split.files[0].path)
    victim.write_bytes(b"not audio any more")
    with caplog.at_level(logging.WARNING, logger="vqkit.data.audio"):
        for _ in range(20):
            assert split[0]["audio"].shape == (1, 800)
    assert split.corrupt_files == [str(victim)] and str(victim) in caplog.text


def test_resampling_mono_mixdown_and_batch_shapes(tmp_path: Path) -> None:
    root = tmp_path / "b"
    root.mkdir()
    t = np.arange(16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 100 * t), 0.1 * np.ones_like(t)
    sf.write(root / "stereo16k.wav", np.stack([left, right], 1).astype(np.float32), 16000)
    wave = load_audio_file(root / "stereo16k.wav", 8000)
    assert wave.shape == (1, 8000)  # 1 s at 16 kHz -> 8000 samples at 8 kHz
    native = load_audio_file(root / "stereo16k.wav", 16000)
    np.testing.assert_allclose(native[0].numpy(), (left + right) / 2, atol=1e-4)  # mean of the channels
    with pytest.raises(FileNotFoundError):
        load_audio_file(root / "missing.wav", 8000)
    for i in range(8):
        sf.write(root / f"m{i}.ogg", (0.2 * np.sin(np.arange(24000) * 0.01 * (i + 1))).astype(np.float32), 24000)
    dm = module(root, sample_rate=8000, segment_seconds=0.25, val_fraction=0.3, test_fraction=0.3,
                max_eval_segments=2, train_samples=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))["audio"]
    assert batch.shape == (4, 1, 2000) and batch.dtype == torch.float32 and batch.abs().max() <= 1
    first = [b["audio"] for b in dm.val_dataloader()]
    again = [b["audio"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # evaluation segments are fixed


def test_missing_or_empty_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        module(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        module(tmp_path / "empty").setup()


def test_embedded_speech_is_real_8khz_speech() -> None:
    dm = EmbeddedSpeechDataModule(segment_seconds=0.5, batch_size=4, num_workers=0, val_fraction=0.08,
                                  test_fraction=0.08)
    dm.setup()
    counts = {name: len(split.files) for name, split in dm.splits.items()}
    assert sum(counts.values()) > 500 and min(counts.values()) > 20, counts
    assert all(f.sample_rate == 8000 and "/silence/" not in f.relative for f in dm.splits["train"].files)
    batch = next(iter(dm.val_dataloader()))["audio"]
    assert batch.shape == (4, 1, 4000) and float(batch.abs().max()) > 0.05  # speech, not silence
