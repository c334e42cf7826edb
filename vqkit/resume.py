"""``resume=RUN``: continue a run as that run, refusing what its checkpoint cannot continue.

A run's config is recomposed from the overrides it was started with (``<run>/.hydra/overrides.yaml``: Hydra
writes it for command-line runs, ``record_overrides`` for runs composed in Python) followed by the new command
line's, later ones winning. So ``resume=RUN trainer.max_steps=40`` continues a run trained with
``quantizer=ema_vq quantizer.codebook_size=4096`` with that quantizer, whatever conf/'s defaults are.
A resume whose model differs from the checkpoint's (``model.*``, which holds the quantizer), or whose training
module has other tensors than the checkpoint, is refused naming the keys, before the resume writes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from vqkit.config import compose_train_config
from vqkit.lit.checkpoint_io import check_checkpoint_file, load_checkpoint

log = logging.getLogger("vqkit.resume")

OVERRIDES = Path(".hydra") / "overrides.yaml"
# How the first run started is not how its continuation starts: the continuation's own resume=/ckpt_path= apply.
NOT_CARRIED = ("resume", "ckpt_path")
_ABSENT = "(absent)"


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``trainer.fit`` starts from: ``ckpt_path``, else ``<resume>/checkpoints/last.ckpt``.

    Raises:
        FileNotFoundError: the run folder or the checkpoint does not exist, with what to do instead.
    """
    resume, ckpt_path = cfg.get("resume"), cfg.get("ckpt_path")
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(
                f"resume={resume}: not a vqkit run folder (no config.yaml in it); give the folder a run printed "
                "in its summary line, e.g. resume=outputs/train/<timestamp>"
            )
        if ckpt_path is None:
            last = run_dir / "checkpoints" / "last.ckpt"
            if not last.is_file():
                raise FileNotFoundError(
                    f"resume={resume}: {last} does not exist (the run stopped before its first checkpoint); "
                    "start the run again without resume="
                )
            ckpt_path = str(last)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
    if ckpt_path is not None:
        check_checkpoint_file(ckpt_path)  # an empty, cut-short or foreign file fails here, before data and model
    return ckpt_path


def command_overrides(cfg: DictConfig) -> list[str] | None:
    """The overrides the config was composed with: its ``hydra.overrides.task`` (configs composed in Python), else
    the running Hydra app's (Hydra hands its task a config without the ``hydra`` node); None if neither is known."""
    overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if overrides is None and HydraConfig.initialized():
        overrides = HydraConfig.get().overrides.task
    return None if overrides is None else [str(o) for o in overrides]


def record_overrides(cfg: DictConfig, output_dir: Path) -> None:
    """Write ``<run>/.hydra/overrides.yaml`` as Hydra does, for a run composed in Python (Hydra wrote none)."""
    path = output_dir / OVERRIDES
    overrides = command_overrides(cfg)
    if not path.is_file() and overrides is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))


def _key(override: Override) -> str:
    return override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"


def merge_overrides(original: list[str], new: list[str]) -> list[str]:
    """The run's overrides then the new ones (Hydra applies later values last).

    The run's own ``resume=`` / ``ckpt_path=`` are dropped, and so is a ``+key=`` of the run that the new
    overrides add again (Hydra refuses two additions of one key).
    """
    parser = OverridesParser.create()
    added = {_key(o) for o in parser.parse_overrides(new) if o.is_add()}
    kept = [
        line for line, o in zip(original, parser.parse_overrides(original), strict=True)
        if o.key_or_group not in NOT_CARRIED and not (o.is_add() and _key(o) in added)
    ]
    return kept + new


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config of ``resume=RUN``: the run's overrides followed by this command's, composed as Hydra would."""
    run_dir = Path(cfg.resume)
    path = run_dir / OVERRIDES
    if not path.is_file():
        log.warning("resume=%s: the run has no %s, so its own overrides are unknown: the config is composed from "
                    "this command's overrides only (repeat the run's overrides on the command line)",
                    run_dir, OVERRIDES)
        return cfg
    original = [str(o) for o in OmegaConf.load(path)]
    return compose_train_config(merge_overrides(original, command_overrides(cfg) or []), cfg.paths.output_dir)


def read_checkpoint(ckpt_path: str) -> dict[str, Any]:
    """The checkpoint's tensors (memory-mapped, not read) and its stored config, without running pickled code."""
    try:
        return torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (mmap needs one), or unreadable: the reader that says what it is
        return load_checkpoint(ckpt_path)


def _differences(old: Any, new: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            yield from _differences(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}")
    elif old != new:
        yield path, old, new


def _set_by(path: str, overrides: list[str]) -> str:
    """The overrides whose key is ``path`` or a parent of it (``quantizer.x`` sets ``model.quantizer.x``)."""
    names = (path, path.removeprefix("model."))
    found = [
        line for line in overrides
        if (key := line.split("=", 1)[0].lstrip("+~").split("@")[0].replace("/", "."))
        and any(n == key or n.startswith(key + ".") for n in names)
    ]
    return f" (set by {', '.join(found)})" if found else ""


def refuse_model_changes(resolved: dict[str, Any], checkpoint: dict[str, Any], cfg: DictConfig,
                         overrides: list[str]) -> None:
    """Raise ValueError naming every ``model.*`` value that differs from the one the checkpoint was trained with.

    ``overrides``: the resume command's own overrides (named when they set a differing value).
    """
    stored = (checkpoint.get("vqkit_config") or {}).get("model")
    if stored is None:
        return
    lines = [
        f"{path} = {new!r}{_set_by(path, overrides)}, the checkpoint was trained with {old!r}"
        for path, old, new in _differences(stored, resolved.get("model"), "model")
    ]
    if lines:
        raise ValueError(
            f"resume={cfg.resume}: the model differs from the checkpoint's, and a run's architecture cannot change "
            "when it resumes:\n  " + "\n  ".join(lines)
            + "\nDrop those overrides to continue the run, or start a new run with them."
        )


def refuse_state_mismatch(module: torch.nn.Module, checkpoint: dict[str, Any], cfg: DictConfig,
                          changed: list[str]) -> None:
    """Raise ValueError when the module's tensors (names, shapes) are not the checkpoint's, naming both."""
    stored = checkpoint.get("state_dict")
    if stored is None:
        return
    current = module.state_dict()
    missing = sorted(set(current) - set(stored))
    unexpected = sorted(set(stored) - set(current))
    shapes = sorted(k for k in set(current) & set(stored) if tuple(current[k].shape) != tuple(stored[k].shape))
    if not (missing or unexpected or shapes):
        return
    parts = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for what, names in (("not in the checkpoint", missing), ("only in the checkpoint", unexpected),
                                 ("of other shapes", shapes)) if names]
    raise ValueError(
        f"resume={cfg.resume}: the training module of this config does not fit the checkpoint: tensors "
        + "; ".join(parts) + f". Config sections that differ from the run's: {changed or 'none'}. "
        "Drop the overrides that change them to continue the run, or start a new run with them."
    )


def changed_sections(previous: dict[str, Any], resolved: dict[str, Any]) -> list[str]:
    """Top-level config keys whose values differ between the run's config and the resumed one."""
    keys = (set(previous) | set(resolved)) - set(NOT_CARRIED)
    return sorted(k for k in keys if previous.get(k) != resolved.get(k))
