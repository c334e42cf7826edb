"""Waveform layouts the audio tokenizer accepts or refuses by name, and codes files that carry their tokenizer's
identity (issue 15): (T,), soundfile's (T, C), (C, T), (B, C, T), empty inputs, and codes decoded by another model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, safe_open, save_file

from tests.artifacts import TINY_AUDIO_MODEL
from vqkit.models import AudioTokenizer
from vqkit.tokenizers import load_tokenizer
from vqkit.tools.audio import main as audio_cli

T = 800  # 100 frames of hop 8 at 8 kHz


def stereo(length: int = T) -> np.ndarray:
    """(T, 2) float32, as soundfile.read returns a stereo file: two tones, different per channel."""
    t = np.arange(length) / 8000
    return np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 700 * t)], 1).astype(np.float32)


@pytest.fixture
def tok() -> AudioTokenizer:
    torch.manual_seed(0)
    return AudioTokenizer.from_config(TINY_AUDIO_MODEL).eval()


def mono(x: np.ndarray) -> torch.Tensor:
    """The (1, 1, T) mixdown every multi-channel layout must give."""
    return torch.from_numpy(x.mean(1, dtype=np.float32)).reshape(1, 1, -1)


def test_a_mono_clip_is_one_clip(tok) -> None:
    wave = torch.from_numpy(stereo()[:, 0])
    codes = tok.encode(wave)
    assert codes.shape == (1, T // 8, 2)
    assert torch.equal(codes, tok.encode(wave.reshape(1, 1, -1)))


def test_soundfile_layout_t_by_2_is_one_stereo_clip_mixed_to_mono(tok) -> None:
    x = stereo()
    expected = tok.encode(mono(x))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codes = tok.encode(torch.from_numpy(x))  # (T, 2): was T clips of one sample each
    assert codes.shape == (1, T // 8, 2) and torch.equal(codes, expected)
    assert [str(w.message) for w in caught if "mixing 2 channels down to mono" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per tokenizer
        assert torch.equal(tok.encode(x), expected)  # the numpy array soundfile returns, float32 or float64
        assert torch.equal(tok.encode(x.astype(np.float64)), expected)


def test_channels_first_2_by_t_is_one_stereo_clip(tok) -> None:
    x = stereo()
    with pytest.warns(UserWarning, match="mixing 2 channels"):
        codes = tok.encode(torch.from_numpy(x.T.copy()))
    assert torch.equal(codes, tok.encode(mono(x)))
    assert torch.equal(tok.encode(torch.from_numpy(x.T.copy()), layout="ct"), codes)


def test_batches_b_c_t_and_explicit_layouts(tok) -> None:
    x = np.stack([stereo(), stereo()[::-1].copy(), 0.5 * stereo()])  # (3, T, 2)
    batch = torch.from_numpy(x).permute(0, 2, 1)  # (3, 2, T)
    with pytest.warns(UserWarning, match="mixing 2 channels"):
        codes = tok.encode(batch)
    assert codes.shape == (3, T // 8, 2)
    for i in range(3):
        assert torch.equal(codes[i : i + 1], tok.encode(mono(x[i])))
    clips = batch.mean(1)  # (3, T): a batch of mono clips says so
    assert torch.equal(tok.encode(clips, layout="bt"), codes)
    assert torch.equal(tok.encode(clips.unsqueeze(1)), codes)
    with pytest.raises(ValueError, match=r"cannot tell the layout of 2-D audio \(16, 800\).*layout='bt'"):
        tok.encode(torch.zeros(16, T))
    with pytest.raises(ValueError, match=r"C <= 8 channels, got shape \(1, 800, 2\); channels last"):
        tok.encode(torch.zeros(1, T, 2))
    with pytest.raises(ValueError, match="layout='tc' is for 2-D inputs"):
        tok.encode(batch, layout="tc")
    with pytest.raises(ValueError, match="layout must be None"):
        tok.encode(clips, layout="TC")


def test_a_soundfile_read_stereo_wav_encodes_like_the_file(tok, tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo(), 8000)
    data, rate = sf.read(path)  # float64 (T, 2)
    assert data.shape == (T, 2) and rate == 8000
    with pytest.warns(UserWarning, match="mixing 2 channels"):
        codes = tok.encode(data)
    assert torch.equal(codes, tok.encode(path))  # the file path mixes down too


def test_empty_inputs_are_refused_naming_the_input(tok, tmp_path: Path, capsys) -> None:
    for empty in (torch.zeros(0), np.zeros((0, 2)), torch.zeros(2, 0), torch.zeros(1, 1, 0)):
        with pytest.raises(ValueError, match=r"empty waveform \(0 samples\)"):
            tok.encode(empty)
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 2)), 16000)  # another rate: the resampler must not be reached
    with pytest.raises(ValueError, match=r"empty\.wav holds no audio \(0 samples\)"):
        tok.encode(path)
    tok.save_pretrained(tmp_path / "tok")
    assert audio_cli(["encode", str(path), str(tmp_path / "c.safetensors"), "--tokenizer", str(tmp_path / "tok")]) == 1
    err = capsys.readouterr().err
    assert "empty.wav holds no audio" in err and "mix" not in err


def test_empty_batches_are_refused_in_encode_and_decode(tok) -> None:
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\) of waveforms.*at least one clip"):
        tok.encode(torch.zeros(0, 1, T))
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\) of waveforms"):
        tok.encode(torch.zeros(0, T), layout="bt")
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\) of codes.*at least one clip"):
        tok.decode(torch.zeros(0, 5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"one clip's codes: decode\(codes\[None\]\)"):
        tok.decode(torch.zeros(5, 2, dtype=torch.long))


@pytest.fixture
def two_artifacts(tmp_path: Path) -> tuple[Path, Path]:
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        AudioTokenizer.from_config(TINY_AUDIO_MODEL).save_pretrained(tmp_path / f"tok{seed}")
        dirs.append(tmp_path / f"tok{seed}")
    return dirs[0], dirs[1]


def encoded_codes(artifact: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A stereo WAV encoded by ``artifact`` through the CLI: the codes file and its metadata."""
    audio, codes = tmp_path / "in.wav", tmp_path / "in.codes.safetensors"
    sf.write(audio, stereo(), 8000)
    assert audio_cli(["encode", str(audio), str(codes), "--tokenizer", str(artifact)]) == 0
    with safe_open(str(codes), framework="pt") as f:
        return codes, f.metadata()


def test_codes_file_records_its_tokenizer_and_another_one_refuses_it(two_artifacts, tmp_path: Path, capsys) -> None:
    from vqkit.models.identity import model_digest

    mine, other = two_artifacts
    codes, metadata = encoded_codes(mine, tmp_path)
    digest = model_digest(load_tokenizer(mine))
    assert digest.startswith("sha256:") and digest != model_digest(load_tokenizer(other))
    assert metadata["tokenizer_digest"] == digest
    assert (metadata["sample_rate"], metadata["hop_length"], metadata["channels"]) == ("8000", "8", "1")
    assert (metadata["num_stages"], metadata["codebook_size"]) == ("2", "16")
    capsys.readouterr()

    out = tmp_path / "out.wav"
    assert audio_cli(["decode", str(codes), str(out), "--tokenizer", str(other)]) == 1
    err = capsys.readouterr().err
    assert "written by another tokenizer" in err and digest[:19] in err and "--force" in err and not out.exists()
    assert audio_cli(["decode", str(codes), str(out), "--tokenizer", str(other), "--force"]) == 0
    assert "warning: --force" in capsys.readouterr().err and out.is_file()
    assert audio_cli(["decode", str(codes), str(out)]) == 0  # its own tokenizer, named in the file
    assert "warning" not in capsys.readouterr().err


def test_codes_file_without_a_digest_decodes_with_a_warning(two_artifacts, tmp_path: Path, capsys) -> None:
    mine, _ = two_artifacts
    codes, metadata = encoded_codes(mine, tmp_path)
    old = {k: v for k, v in metadata.items() if k in ("sample_rate", "length", "hop_length", "num_stages", "tokenizer")}
    save_file(load_file(str(codes)), str(codes), metadata=old)  # what vqkit wrote before it recorded identities
    capsys.readouterr()
    assert audio_cli(["decode", str(codes), str(tmp_path / "out.wav")]) == 0
    assert "does not record its tokenizer's digest" in capsys.readouterr().err
    save_file(load_file(str(codes)), str(codes), metadata={**old, "hop_length": "4"})
    assert audio_cli(["decode", str(codes), str(tmp_path / "out.wav")]) == 1
    assert "different hop_length" in capsys.readouterr().err
