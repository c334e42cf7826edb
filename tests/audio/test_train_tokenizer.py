"""Training through Hydra on the embedded speech, export, the AudioTokenizer and the vqkit.tools.audio CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.export import export_tokenizer
from vqkit.models import AudioTokenizer
from vqkit.tokenizers import load_tokenizer
from vqkit.tools.audio import main as audio_cli
from vqkit.train import train

RVQ = ["model=audio_conv", "data=speech", "quantizer=residual", "quantizer.num_stages=2"]


def test_fast_dev_run_on_embedded_speech(make_config) -> None:
    result = train(make_config(*RVQ, "debug=fdr"))
    assert result["metrics"]["train/loss"] > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from tests.conftest import fast_overrides
    from vqkit.config import compose_train_config

    out = tmp_path_factory.mktemp("audio_run")
    overrides = fast_overrides(RVQ) + RVQ + [
        "trainer.max_steps=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
        "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
    ]
    result = train(compose_train_config(overrides, out / "run"))
    artifact = out / "artifact"
    export_tokenizer(result["checkpoint"], artifact)
    return {"result": result, "artifact": artifact, "dir": out}


def test_short_run_writes_audio_samples_and_per_stage_metrics(trained) -> None:
    result = trained["result"]
    metrics = result["metrics"]
    for key in ("test/si_snr", "test/mel_distance", "test/codebook/stage0/usage", "test/codebook/stage1/usage"):
        assert key in metrics and math.isfinite(metrics[key]), key
    samples = Path(result["output_dir"]) / "samples"
    assert (samples / "spec_latest.png").is_file() and (samples / "usage_latest.png").is_file()
    wavs = sorted(samples.glob("audio_step*/clip*_recon.wav"))
    assert wavs and sf.info(str(wavs[0])).samplerate == 8000
    assert not (samples / "recon_latest.png").exists()  # the image grid ignores waveforms


def test_exported_tokenizer_encodes_and_decodes(trained, tmp_path: Path) -> None:
    tok = load_tokenizer(trained["artifact"])
    assert isinstance(tok, AudioTokenizer) and tok.modality == tok.info["modality"] == "audio" and not tok.training
    assert tok.config["_target_"] == "vqkit.models.AudioTokenizer" and tok.info["format_version"] == 2
    assert tok.sample_rate == 8000 and tok.hop_length == 8 and tok.frame_rate == 1000.0
    assert tok.num_stages == 2 and tok.bitrate_kbps == pytest.approx(1000 * 2 * math.log2(32) / 1000)
    assert tok.bitrate(1) == pytest.approx(5000.0)
    wave = 0.3 * torch.sin(torch.arange(1234) * 0.07)
    codes = tok.encode(wave)
    assert codes.shape == (1, math.ceil(1234 / 8), 2) and codes.dtype == torch.int64
    assert torch.equal(tok.encode(wave, num_stages=1), codes[..., :1])
    recon = tok.decode(codes, length=1234)
    assert recon.shape == (1, 1, 1234) and recon.abs().max() <= 1
    assert tok.decode(codes[..., :1]).shape == (1, 1, codes.shape[1] * 8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        tok.encode(wave * 5)
    with pytest.warns(UserWarning, match="mixing 2 channels down to mono"):  # (B, C, T): the channels' mean
        assert torch.equal(tok.encode(torch.zeros(1, 2, 100)), tok.encode(torch.zeros(1, 1, 100)))
    with pytest.raises(ValueError, match=r"cannot tell the layout of 2-D audio \(16, 100\)"):
        tok.encode(torch.zeros(16, 100))
    with pytest.raises(ValueError, match="ids"):
        tok.decode(codes[0])


def test_cli_round_trip(trained, tmp_path: Path, capsys) -> None:
    audio = tmp_path / "in.wav"
    t = np.arange(6000) / 16000  # 16 kHz stereo input: resampled to 8 kHz and mixed down
    sf.write(audio, np.stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2, 1).astype(np.float32), 16000)
    codes, out = tmp_path / "in.codes.safetensors", tmp_path / "out.wav"
    assert audio_cli(["encode", str(audio), str(codes), "--tokenizer", str(trained["artifact"])]) == 0
    assert "kbps" in capsys.readouterr().out
    assert audio_cli(["decode", str(codes), str(out)]) == 0  # the codes file names its tokenizer
    info = sf.info(str(out))
    assert info.samplerate == 8000 and info.frames == 3000 and info.channels == 1
    half = tmp_path / "half.wav"
    assert audio_cli(["decode", str(codes), str(half), "--stages", "1"]) == 0
    assert "1/2 stage" in capsys.readouterr().out
    assert audio_cli(["decode", str(tmp_path / "missing.safetensors"), str(half)]) == 1
    assert "not found" in capsys.readouterr().err


GQ = ["model=audio_conv", "data=speech", "quantizer=gq", "quantizer.inner=ema_vq", "quantizer.max_token_len=4",
      "quantizer.target_rate=0.5", "quantizer.width=16", "quantizer.depth=1", "quantizer.num_heads=2",
      "quantizer.inner_options.passthrough_steps=1"]


def test_variable_length_tokens_through_artifact_and_cli(tmp_path: Path, capsys) -> None:
    from tests.conftest import fast_overrides
    from vqkit.config import compose_train_config

    run = train(compose_train_config(
        [*fast_overrides(GQ), *GQ, "trainer.max_steps=3", "+trainer.limit_val_batches=1",
         "+trainer.limit_test_batches=1", "callbacks.progress_bar.refresh_rate=0"], tmp_path / "run"))
    assert 1 / 4 <= run["metrics"]["test/tokens_per_position"] <= 1  # the realised rate is logged at test
    export_tokenizer(run["checkpoint"], tmp_path / "artifact")
    tok = load_tokenizer(tmp_path / "artifact")
    assert tok.variable_tokens and tok.token_bits == pytest.approx(math.log2(tok.codebook_size) + 2)
    assert tok.bitrate() == pytest.approx(0.5 * tok.frame_rate * tok.token_bits)  # at the target rate
    wave = 0.3 * torch.sin(torch.arange(1600) * 0.05)
    ids = tok.encode(wave)
    assert ids.shape == (1, 200) and int(ids[0, -1]) >= 0 and int(ids.min()) >= -1
    tokens = int((ids >= 0).sum())
    assert tok.realised_bitrate(ids) == pytest.approx(tokens * tok.token_bits / (200 / tok.frame_rate))
    assert tok.decode(ids, length=1600).shape == (1, 1, 1600)
    audio, codes, out = tmp_path / "in.wav", tmp_path / "in.codes.safetensors", tmp_path / "out.wav"
    sf.write(audio, wave.numpy(), 8000)
    assert audio_cli(["encode", str(audio), str(codes), "--tokenizer", str(tmp_path / "artifact")]) == 0
    printed = capsys.readouterr().out
    assert f"{tokens} tokens in 0.2 s" in printed and "kbps realised" in printed and "variable-length" in printed
    assert audio_cli(["decode", str(codes), str(out)]) == 0
    assert sf.info(str(out)).frames == 1600
    assert audio_cli(["info", "--tokenizer", str(tmp_path / "artifact")]) == 0
    assert "target 500 tokens/s" in capsys.readouterr().out
