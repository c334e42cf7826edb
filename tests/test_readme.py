"""The README's ```python snippets run, and every `expr.shape  # (a, b, c)` comment in them is true; every
`python -m vqkit.train` command of its plain ``` blocks trains at reduced size and writes what the README says.

(```py blocks need files a user makes first, like a trained tokenizer: tests/test_export.py,
tests/image/test_artifact.py and tests/audio/test_train_tokenizer.py cover them.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SHAPE_COMMENT = re.compile(r"^(?P<expr>[^#=]+?\.shape)\s+#\s*\((?P<shape>[\d,\s]+)\)")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets() -> None:
    assert python_blocks(), "README.md lost its Python usage snippet"


@pytest.mark.parametrize("block", python_blocks())
def test_readme_snippet_runs_and_shapes_hold(block: str) -> None:
    torch.manual_seed(0)
    namespace: dict = {}
    checked = 0
    for line in block.splitlines():
        exec(compile(line, str(README), "exec"), namespace)  # noqa: S102 - our own README
        match = SHAPE_COMMENT.match(line)
        if match:
            expected = tuple(int(v) for v in match["shape"].split(",") if v.strip())
            assert tuple(eval(match["expr"], namespace)) == expected, line  # noqa: S307
            checked += 1
    assert checked > 0, "no shape comment was checked"


# --- the README's `python -m vqkit.train` commands ------------------------------------------------------------
TRAIN = "python -m vqkit.train "
CODEBOOK = "python -m vqkit.tools.codebook "
# What makes a README command small enough for a test; the options it sets stay (the reductions come after them).
# One step: with the tiny data every run then stops mid-epoch, before Lightning's own first validation.
REDUCED = ["trainer.max_steps=1", "++trainer.limit_val_batches=1", "++trainer.limit_test_batches=1",
           "callbacks.progress_bar.refresh_rate=0"]
TINY_CODEBOOK = ["--num-images", "8", "--image-size", "32", "--encoder-size", "64", "--iters", "2", "--batch-size", "8"]
HEADLINE = {"image": "test/psnr", "audio": "test/si_snr", "text": "test/bytes_per_token"}


def shell_commands(prefix: str) -> list[list[str]]:
    """The arguments of each line starting with ``prefix`` in the README's plain ``` blocks (comments cut)."""
    import shlex

    commands, info = [], None
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            info = line[3:].strip() if info is None else None
        elif info == "" and line.startswith(prefix):
            commands.append(shlex.split(line[len(prefix):], comments=True))
    return commands


def test_readme_has_train_commands() -> None:
    assert len(shell_commands(TRAIN)) >= 5, "README.md lost its training commands"


def _reduced(args: list[str], tmp_path: Path) -> list[str]:
    """``args`` + what shrinks them: tiny data and model for the modality they pick, 2 steps, tiny inputs."""
    from tests.conftest import fast_overrides
    from tests.test_configs import make_imagenet_tree, recipe_overrides
    from vqkit.config import compose_train_config

    selectors = list(args)  # a recipe's data and model pick the tiny settings that fit them
    for arg in args:
        if arg.startswith("recipe="):
            selectors += recipe_overrides(arg.partition("=")[2])[1:]
    extra = fast_overrides(selectors)
    if "data=imagenet" in selectors:  # the README's folder -> a tiny ImageNet-layout tree
        extra = [o for o in extra if not o.startswith(("data.train_samples", "data.val_samples"))]
        extra += [f"data.root={make_imagenet_tree(tmp_path / 'imagenet')}", "data.batch_size=2"]
    extra += REDUCED
    choices = compose_train_config(args + extra, tmp_path / "probe").hydra.runtime.choices
    if choices.quantizer == "vqbridge":
        extra.append("quantizer.codebook_size=64")  # its codes sit on a square grid
    return args + extra


def _build_codebooks(args: list[str], size: int) -> None:
    """Run the README's ``vqkit.tools.codebook`` command that writes the codebook file ``args`` use, at tiny size."""
    from vqkit.tools.codebook import main as codebook_main

    for arg in args:
        if arg.startswith("quantizer.codebook_path="):
            path = arg.partition("=")[2]
            (command,) = [c for c in shell_commands(CODEBOOK) if c[c.index("--out") + 1] == path]
            i = command.index("--num-codes")
            assert codebook_main([*command[:i], "--num-codes", str(size), *command[i + 2:], *TINY_CODEBOOK]) == 0


@pytest.mark.parametrize("args", shell_commands(TRAIN), ids=" ".join)
def test_readme_train_command_writes_what_the_readme_says(args: list[str], tmp_path: Path, monkeypatch) -> None:
    """Each command, at reduced size, finishes, validates (val metrics, the monitored checkpoint, samples), tests,
    and writes <run>/checkpoints/last.ckpt (what the export commands read), config.yaml and metrics.json."""
    import warnings

    from hydra.utils import get_class

    from vqkit.config import compose_train_config
    from vqkit.train import train

    monkeypatch.chdir(tmp_path)  # the README's relative paths (codebooks/...) are under the test's folder
    cfg = compose_train_config(_reduced(args, tmp_path), tmp_path / "run")
    _build_codebooks(args, cfg.quantizer.get("codebook_size"))
    modality = get_class(cfg.model._target_).modality
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg)
    run = tmp_path / "run"
    assert result["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and Path(result["checkpoint"]).is_file()
    assert Path(result["config"]).is_file() and Path(result["metrics_file"]).is_file()
    assert HEADLINE[modality] in result["metrics"], sorted(result["metrics"])
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("val/loss")
    assert [r for r in rows[1:] if r.split(",")[column]], "no validation ran"
    assert list((run / "checkpoints").glob("step*.ckpt")), "no checkpoint on the monitored val/loss"
    assert not [w for w in caught if "could not find the monitored key" in str(w.message)]
    if modality == "image":
        assert result["samples"] == str(run / "samples" / "recon_latest.png") and Path(result["samples"]).is_file()
    if modality == "audio":  # "Validation writes WAV clips and input/reconstruction spectrograms to samples/"
        assert result["samples"] == str(run / "samples" / "spec_latest.png") and Path(result["samples"]).is_file()
        assert list((run / "samples").rglob("*.wav"))
