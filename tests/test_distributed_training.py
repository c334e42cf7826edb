"""Data-parallel training with 2 CPU processes (gloo), launched by torchrun through Lightning, per modality.

Checks: both ranks end with identical parameters and buffers (codebooks, EMA statistics included:
the RankConsistencyCheck callback compares them), and the validation usage/perplexity the two ranks
report together equals what one process computes on the same split with the final weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import FAST_AUDIO_DATA, FAST_AUDIO_MODEL
from tests.gloo_ranks import free_port
from tests.test_warnings import NOISE
from tests.text.conftest import TINY_GATE, TINY_TEXT
from vqkit.lit.run_config import module_from_config

NO_PICTURES = [
    "callbacks.reconstruction_grid=null", "callbacks.codebook_usage_plot=null", "callbacks.audio_samples=null",
]
# Every modality's smallest model, with a quantizer that changes state outside the gradients (k-means, revival,
# EMA). Validation splits have an even size: Lightning pads an uneven split with repeated samples on one rank,
# which would change the usage counts.
MODALITIES = {
    "image-vq": [
        "data.image_size=32", "data.batch_size=4", "data.train_samples=16", "data.val_samples=8",
        "model.encoder.channels=8", "model.encoder.latent_dim=8", "quantizer.codebook_size=32",
        "quantizer.dead_code_threshold=0.5", *NO_PICTURES,
    ],
    "image-gan": [  # manual optimization: two backward passes per step, each through part of the parameters
        "model=image_conv_gan", "module.disc_start=1", "data.image_size=32", "data.batch_size=4",
        "data.train_samples=16", "data.val_samples=8", "model.encoder.channels=8", "model.encoder.latent_dim=8",
        "quantizer.codebook_size=32", *NO_PICTURES,
    ],
    "audio-residual_ema_vq": [
        "data=speech", "model=audio_conv", "quantizer=residual", *FAST_AUDIO_DATA, *FAST_AUDIO_MODEL,
        "data.max_eval_segments=2", "quantizer.codebook_size=32", "quantizer.num_stages=2", *NO_PICTURES,
    ],
    "text-gq_ema_vq": [  # + the text metrics: bytes/token and exact tokens summed over ranks
        "data=shakespeare", "model=text_gq", "quantizer.inner=ema_vq", *TINY_TEXT, *TINY_GATE,
        "data.max_train_rows=64", "callbacks.codebook_usage_plot=null",  # 2 steps per epoch and rank
        # GQ-VAE's warm-up ends inside the run (every code drawn from both ranks' reservoirs), then revivals
        "quantizer.inner_options.passthrough_steps=2", "quantizer.inner_options.revive_every=1",
    ],
    "text-gq_vq": [  # a learned codebook: during the pass-through it must still get a (zero) gradient under DDP
        "data=shakespeare", "model=text_gq", "quantizer.inner=vq", *TINY_TEXT, *TINY_GATE,
        "data.max_train_rows=64", "callbacks.codebook_usage_plot=null",
        "quantizer.inner_options.passthrough_steps=2", "quantizer.inner_options.revive_every=1",
    ],
}
COMMON = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=4",
    "trainer.enable_model_summary=false", "callbacks.progress_bar.refresh_rate=0", "test=false",
    "+callbacks.rank_consistency._target_=vqkit.callbacks.rank_consistency.RankConsistencyCheck",
]


def _single_process_validation(run_dir: Path) -> dict[str, float]:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    module = module_from_config(cfg)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    (metrics,) = trainer.validate(module, datamodule=instantiate(cfg.data), verbose=False)
    return metrics


@pytest.mark.parametrize("modality", sorted(MODALITIES))
def test_two_process_training_keeps_ranks_identical(modality: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
        "-m", "vqkit.train", *MODALITIES[modality], *COMMON, f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "identical on 2 ranks" in output, output[-3000:]
    noise = [line for line in output.splitlines() if NOISE.search(line)]  # sync_dist advice, DDP strides...
    assert not noise, "\n".join(noise)

    distributed = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    single = _single_process_validation(run_dir)
    keys = ["val/codebook/usage", "val/codebook/perplexity", "val/codebook/dead"]
    if modality.startswith("text"):
        keys += ["val/bytes_per_token", "val/rec_token_acc", "val/rec_byte_acc"]
    for key in keys:
        assert key in single and key in distributed, (sorted(single), sorted(distributed))
        assert single[key] == pytest.approx(distributed[key], rel=1e-5, abs=1e-6), key


class _FakeStrategy:
    """all_gather as two ranks return it: this rank's fingerprints and those of the other rank's module."""

    def __init__(self, other_rank_module: torch.nn.Module) -> None:
        self.other = other_rank_module

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        from vqkit.callbacks import RankConsistencyCheck

        return torch.stack([local, RankConsistencyCheck.fingerprints(self.other)[1]])


class _FakeTrainer:
    world_size = 2
    is_global_zero = True

    def __init__(self, other_rank_module: torch.nn.Module) -> None:
        self.strategy = _FakeStrategy(other_rank_module)


def test_rank_consistency_check_catches_a_drifted_rank() -> None:
    import copy

    from vqkit.callbacks import RankConsistencyCheck
    from vqkit.quantizers import build_quantizer

    module = build_quantizer("ema_vq", dim=4, codebook_size=8)
    check = RankConsistencyCheck()
    check.on_train_end(_FakeTrainer(copy.deepcopy(module)), module)
    assert check.checked == len(list(module.parameters())) + len(list(module.buffers()))
    drifted = copy.deepcopy(module)
    with torch.no_grad():
        code = drifted.cluster_size if hasattr(drifted, "cluster_size") else next(drifted.buffers())
        code[3] = torch.nextafter(code[3], code[3] + 1)  # one ulp on one entry of one rank
    with pytest.raises(RuntimeError, match="ranks disagree on 1 of"):
        check.on_train_end(_FakeTrainer(drifted), module)
