"""Training runs end to end on the embedded photos: fast_dev_run, a short real run, resume, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vqkit.train import train

REPO = Path(__file__).resolve().parents[1]


def test_fast_dev_run(make_config) -> None:
    result = train(make_config("debug=fdr"))
    assert result["metrics"]["train/loss"] > 0


def test_short_run_writes_every_output(make_config) -> None:
    cfg = make_config("trainer.max_steps=8", "quantizer=ema_vq", "quantizer.dead_code_threshold=0.5")
    result = train(cfg)
    out = Path(result["output_dir"])
    assert Path(result["checkpoint"]).is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    assert (out / "samples" / "recon_latest.png").is_file() and (out / "samples" / "usage_latest.png").is_file()
    assert (out / "csv" / "metrics.csv").read_text().count("\n") > 2
    for key in ("test/psnr", "test/ssim", "test/codebook/usage", "test/codebook/perplexity", "test/codebook/dead"):
        assert key in result["metrics"], key
    assert 0 < result["metrics"]["test/codebook/usage"] <= 1
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["vqkit_config"]["quantizer"]["_target_"].endswith("EMAVectorQuantizer")
    assert ckpt["global_step"] == 8
    assert not list((out / "checkpoints").glob("*.tmp")), "temporary checkpoint files left behind"


def test_resume_continues_from_checkpoint(make_config) -> None:
    first = train(make_config("trainer.max_steps=4", "test=false"))
    resumed = train(make_config("trainer.max_steps=8", "test=false", f"ckpt_path={first['checkpoint']}"))
    ckpt = torch.load(resumed["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8


def test_overfit_one_batch_reduces_loss(make_config) -> None:
    result = train(make_config("debug=overfit", "trainer.max_steps=70", "module.optimizer.lr=3e-3"))
    rows = (Path(result["output_dir"]) / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) >= 5 and losses[-1] < 0.5 * losses[0], losses  # about 0.35 at step 69


def test_cli_from_another_directory_with_wandb_offline(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "VQKIT_OUTPUTS": str(tmp_path / "out")}
    cmd = [
        sys.executable, "-m", "vqkit.train", "quantizer=ema_vq", "quantizer.codebook_size=64",
        "trainer.max_steps=3", "logger=[csv,wandb]", "data.image_size=32", "data.train_samples=12",
        "data.val_samples=4", "data.batch_size=4", "data.num_workers=0", "model.encoder.channels=8",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("vqkit: finished")]
    assert summary and "checkpoint:" in summary[0] and "samples:" in summary[0]
    runs = list((tmp_path / "out" / "train").iterdir())
    assert len(runs) == 1 and (runs[0] / "wandb").is_dir() and (runs[0] / "samples" / "recon_latest.png").is_file()


def test_bf16_mixed_training_keeps_quantizer_in_fp32(make_config) -> None:
    cfg = make_config("debug=fdr", "trainer.precision=bf16-mixed")
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["metrics"]["train/loss"]))


def test_a_run_shorter_than_an_epoch_validates_at_its_last_step(make_config) -> None:
    """max_steps=2 of a 4-batch epoch (validated every 3rd epoch): the run still validates once, at step 2, so
    the checkpoint callback finds its monitor and the samples exist."""
    import warnings

    cfg = make_config("trainer.max_steps=2", "trainer.check_val_every_n_epoch=3", "test=false")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg)
    monitor = [str(w.message) for w in caught if "could not find the monitored key" in str(w.message)]
    assert not monitor, monitor
    assert "val/loss" in result["metrics"] and "val/psnr" in result["metrics"]
    assert result["samples"] and Path(result["samples"]).is_file()
    out = Path(result["output_dir"])
    assert (out / "checkpoints" / "step000002.ckpt").is_file(), sorted((out / "checkpoints").iterdir())


def test_a_failed_run_writes_its_error_to_train_log(tmp_path: Path, train_cli, monkeypatch) -> None:
    monkeypatch.setenv("VQKIT_OUTPUTS", str(tmp_path / "out"))
    missing = tmp_path / "missing.ckpt"
    assert train_cli(f"ckpt_path={missing}") != 0
    (run,) = (tmp_path / "out" / "train").iterdir()
    log = (run / "train.log").read_text()
    assert "Traceback" in log and f"FileNotFoundError: ckpt_path={missing} does not exist" in log, log[-2000:]
