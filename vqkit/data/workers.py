"""How many DataLoader worker processes a data module starts: sized to the CPU cores this process may use.

``num_workers: auto`` (the default of the folder data modules) gives each training process one worker fewer
than its share of the cores, at most 8: the remaining core runs the training step itself. The share is the
cores in this process's CPU affinity (what a container or ``taskset`` allows, not the machine's count) divided
by the processes on this node (``LOCAL_WORLD_SIZE``, set by torchrun and Lightning's DDP launchers; else the
process-group size). A number is taken as given, with a warning when it exceeds the cores: extra workers
then compete with the training step for the same cores.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def processes_on_this_node() -> int:
    """Training processes sharing this node's cores: ``LOCAL_WORLD_SIZE``, the process group's size, or 1."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if local and local.isdigit() and int(local) > 0:
        return int(local)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def check_num_workers(value: int | str, key: str = "data.num_workers") -> int | str:
    """``value`` validated (``auto`` or an int >= 0); warns when a number exceeds the usable cores."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be 'auto' or an integer >= 0, got {value!r}")
    cores = usable_cores()
    if value > cores:
        log.warning("%s=%d but this process may use only %d CPU cores: the workers compete with the training step "
                    "for them; set %s=auto (%d here)", key, value, cores, key, auto_workers())
    return value


def auto_workers() -> int:
    """The ``auto`` count: this process's share of the cores minus one (for the training step), 0 to 8."""
    share = usable_cores() // processes_on_this_node()
    return max(0, min(MAX_AUTO_WORKERS, share - 1))


def resolve_num_workers(value: int | str) -> int:
    """The worker count a DataLoader gets now: ``auto`` resolved for the processes running at this moment."""
    return auto_workers() if value == AUTO else int(value)


def loader_options(num_workers: int | str) -> dict[str, int | bool]:
    """The DataLoader keywords that depend on the machine: workers (``auto`` resolved now), persistent workers
    when there are any, pinned memory only when CUDA is there to copy to."""
    workers = resolve_num_workers(num_workers)
    return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available()}
