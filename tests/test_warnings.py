"""Warning hygiene (issue 15, item 12): vqkit's own causes fixed, third-party noise filtered in one place.

A short run of each modality through the command line prints no warning, no Lightning advertisement and no
column of zero FLOPs; the GQ gate's even-kernel convolutions keep PyTorch's "same" padding without its warning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import fast_overrides
from vqkit.callbacks.model_summary import summary_lines
from vqkit.quantizers.gq import SameConv1d
from vqkit.third_party_noise import LOG_MESSAGES, WARNINGS

# What must not appear in a run's output: Python warnings (file:line: XWarning: ...), Lightning's advice to
# pass sync_dist, DDP's stride complaint, the zero-FLOPs summary, the hosted-logger tip.
NOISE = re.compile(r"Warning:|sync_dist=True|Grad strides|Total FLOPs|💡 Tip|weights_only")


@pytest.mark.parametrize("kernel", [2, 3, 4, 5, 15, 20])
def test_same_conv_matches_pytorch_same_padding_without_a_warning(kernel: int) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning at construction fails the test
        ours = SameConv1d(3, 2, kernel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = nn.Conv1d(3, 2, kernel, padding="same")
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(2, 3, 17)
        expected = reference(x)  # PyTorch warns here for even kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours(x)
    assert got.shape == (2, 2, 17)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_parameter_summary_lists_children_with_parameters_and_buffers() -> None:
    module = nn.Module()
    module.net = nn.Linear(4, 3)
    module.frozen = nn.Linear(2, 2).requires_grad_(False)
    module.empty = nn.Identity()
    module.net.register_buffer("table", torch.zeros(10))
    lines = summary_lines(module)
    assert lines[0].split() == ["module", "type", "trainable", "frozen", "buffers"]
    assert [line.split()[0] for line in lines[1:-1]] == ["net", "frozen"]  # no row for a part with nothing
    assert lines[-1].startswith("15 trainable of 21 parameters")


def test_every_filter_says_why() -> None:
    assert all(len(why) > 20 for *_, why in WARNINGS) and all(len(why) > 20 for *_, why in LOG_MESSAGES)


@pytest.mark.slow
@pytest.mark.parametrize("selection", [[], ["data=shakespeare", "model=text_gq"],
                                       ["data=speech", "model=audio_conv", "quantizer=residual"]],
                         ids=["image", "text", "audio"])
def test_a_short_run_of_each_modality_prints_no_warning(selection: list[str], tmp_path: Path) -> None:
    overrides = [o for o in fast_overrides(selection) if not o.startswith("trainer.enable_model_summary")]
    cmd = [sys.executable, "-m", "vqkit.train", *selection, *overrides, "trainer.max_steps=2",
           "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "trainable of" in output  # vqkit's parameter summary replaced Lightning's
    noise = [line for line in output.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise)
