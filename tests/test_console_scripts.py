"""The console scripts of setup.cfg name importable callables, and the helper tools run with ``python -m``.

setup.cfg is parsed directly: importlib.metadata describes whatever copy of vqkit is installed, not
necessarily this checkout.
"""

from __future__ import annotations

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "vqkit-train", "vqkit-train-prior", "vqkit-eval", "vqkit-export", "vqkit-tokenize", "vqkit-codebook",
    "vqkit-audio", "vqkit-assets",
}
TOOLS = ("codebook", "audio", "assets")


def console_scripts() -> dict[str, str]:
    """``{script name: "module:function"}`` from setup.cfg's ``[options.entry_points] console_scripts``."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = {}
    for line in parser.get("options.entry_points", "console_scripts").strip().splitlines():
        name, sep, target = line.partition("=")
        assert sep, f"setup.cfg console_scripts: {line!r} is not `name = module:function`"
        scripts[name.strip()] = target.strip()
    return scripts


def test_the_console_scripts_are_declared() -> None:
    assert set(console_scripts()) == EXPECTED


@pytest.mark.parametrize(("name", "target"), sorted(console_scripts().items()))
def test_console_script_target_is_a_callable(name: str, target: str) -> None:
    module_name, _, attr = target.partition(":")
    assert attr, f"{name}: {target!r} names no function (module:function)"
    module = importlib.import_module(module_name)
    # an installed copy elsewhere (e.g. another checkout's editable install) must not stand in for this one
    assert Path(module.__file__).resolve().is_relative_to(ROOT), f"{module_name} came from {module.__file__}"
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj), f"{name}: {target} is a {type(obj).__name__}, not a callable"


@pytest.mark.parametrize("tool", TOOLS)
def test_tool_runs_as_a_module(tool: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", f"vqkit.tools.{tool}", "-h"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: python -m vqkit.tools.{tool}"), proc.stdout[:200]


@pytest.mark.parametrize("name", ["vqkit-train", "vqkit-train-prior", "vqkit-eval", "vqkit-export"])
def test_hydra_app_finds_its_config_when_run_as_a_console_script(name: str, tmp_path: Path) -> None:
    """A console script runs a wrapper as __main__, from any folder: the app must still find conf/."""
    module, function = console_scripts()[name].split(":")
    wrapper = tmp_path / name
    wrapper.write_text(f"import sys\nfrom {module} import {function}\nsys.argv[0] = {name!r}\nsys.exit({function}())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(wrapper), "--cfg", "job"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ckpt_path" in proc.stdout or "trainer" in proc.stdout
    assert not list(tmp_path.glob("*.log")) and not (tmp_path / "outputs").exists()
