"""Exact resume: a run killed with SIGKILL and resumed with ``resume=RUN`` ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqkit.config import compose_train_config
from vqkit.train import train

MAX_STEPS = 8  # 2 epochs of 4 steps; the kill lands after the first epoch-end checkpoint
RUN = [
    "data.image_size=32", "data.batch_size=4", "data.train_samples=16", "data.val_samples=8", "data.num_workers=0",
    "model.encoder.channels=8", "model.encoder.latent_dim=8", "quantizer.codebook_size=32",
    # revival draws random vectors: the resumed run must draw the same ones
    "quantizer.dead_code_threshold=0.5",
    "trainer.accelerator=cpu", "trainer.deterministic=true", f"trainer.max_steps={MAX_STEPS}",
    "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0",
    "callbacks.reconstruction_grid=null", "callbacks.codebook_usage_plot=null", "seed=7",
]


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vqkit.train", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _kill_after_first_checkpoint(proc: subprocess.Popen, outputs: Path, timeout: float = 300) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(outputs.glob("train/*/checkpoints/last.ckpt"))
        if found:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return found[0].parents[1]
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no checkpoint within the timeout")


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    env = {**os.environ, "VQKIT_OUTPUTS": str(outputs)}
    killed = _cli(RUN, env)
    run_dir = _kill_after_first_checkpoint(killed, outputs)
    assert killed.returncode == -signal.SIGKILL

    # every checkpoint left behind by the kill is complete (written to a temporary file, then renamed)
    ckpts = list((run_dir / "checkpoints").iterdir())
    assert ckpts and not [p for p in ckpts if p.suffix != ".ckpt"], ckpts
    steps = {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in ckpts}
    assert 0 < steps["last.ckpt"] < MAX_STEPS, f"the kill did not land mid-training: {steps}"

    resumed = subprocess.run(
        [sys.executable, "-m", "vqkit.train", *RUN, f"resume={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert [p.name for p in (outputs / "train").iterdir()] == [run_dir.name], "resume forked a new run folder"

    reference = train(compose_train_config(RUN, tmp_path / "uninterrupted"))

    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == MAX_STEPS
    expected = _weights(Path(reference["checkpoint"]))
    got = final["state_dict"]
    assert got.keys() == expected.keys()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, f"resumed parameters differ from the uninterrupted run: {differ}"
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for key in ("test/psnr", "test/codebook/usage", "test/codebook/perplexity"):
        assert metrics[key] == pytest.approx(reference["metrics"][key], rel=1e-6, abs=1e-9), key

    # the logger continued: one metrics.csv holding the steps before the kill and after the resume
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {int(r.split(",")[header.index("step")]) for r in rows[1:]}
    assert min(logged) < steps["last.ckpt"] and max(logged) >= MAX_STEPS - 1
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config.resumed.yaml").is_file()


def test_resume_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a vqkit run folder"):
        train(compose_train_config([*RUN, f"resume={tmp_path / 'nowhere'}"], tmp_path / "nowhere"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 7\n")
    with pytest.raises(FileNotFoundError, match="before its first checkpoint"):
        train(compose_train_config([*RUN, f"resume={run}"], run))


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):
        train(compose_train_config([*RUN, f"ckpt_path={evil}"], tmp_path / "run"))
    assert not marker.exists(), "loading the checkpoint ran its code"


# A run with a non-default quantizer: resume= must rebuild it from the run's own overrides, not conf/'s defaults.
SMALL = [o for o in RUN if not o.startswith(("trainer.max_steps", "quantizer.", "seed="))] + ["test=false"]
EMA_RUN = [*SMALL, "quantizer=ema_vq", "quantizer.codebook_size=64", "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    """A 2-step run trained with ``quantizer=ema_vq quantizer.codebook_size=64`` (the tests may resume it)."""
    run = tmp_path_factory.mktemp("outputs") / "train" / "ema_run"
    train(compose_train_config(EMA_RUN, run))
    return run


def test_resume_continues_with_the_runs_own_config(ema_run: Path, train_cli) -> None:
    """The issue's command, through Hydra's app: ``resume=RUN trainer.max_steps=4`` alone."""
    original = (ema_run / ".hydra" / "overrides.yaml").read_text()
    assert train_cli(f"resume={ema_run}", "trainer.max_steps=4") == 0
    final = torch.load(ema_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 4
    quantizer = final["vqkit_config"]["quantizer"]
    assert quantizer["_target_"].endswith("EMAVectorQuantizer") and quantizer["codebook_size"] == 64
    assert (ema_run / ".hydra" / "overrides.yaml").read_text() == original, "the resume rewrote the run's overrides"


def test_resume_refuses_an_architecture_change_naming_the_key(ema_run: Path) -> None:
    before = {p.name: p.read_bytes() for p in ema_run.glob("config*.yaml")}
    with pytest.raises(ValueError, match=r"quantizer\.codebook_size.*128.*64"):
        train(compose_train_config([f"resume={ema_run}", "quantizer.codebook_size=128"], ema_run))
    after = {p.name: p.read_bytes() for p in ema_run.glob("config*.yaml")}
    assert after == before, "a refused resume wrote a config file"


def test_resume_finds_the_checkpoints_of_a_run_without_callbacks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(compose_train_config(
        [o for o in SMALL if not o.startswith("callbacks.")] + ["callbacks=none", "trainer.max_steps=2"], run))
    assert (run / "checkpoints" / "last.ckpt").is_file(), sorted(p.relative_to(run) for p in run.rglob("*.ckpt"))
    train(compose_train_config([f"resume={run}", "trainer.max_steps=4"], run))
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 4
