"""Run one benchmark cell in a child process capped in memory and time, and read back its JSON result.

Shared by benchmarks/quantizer_speed.py and benchmarks/codebook_utilization.py: the child prints one line
``<result_tag><json>`` (:func:`report_child_result`); a cell that runs out of memory, times out, is killed or
fails gets a ``status`` saying so instead of numbers, so a table records missing cells rather than hiding them.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIB = 1024**3
_OOM_PATTERN = r"bad_alloc|can't allocate memory|Cannot allocate memory|MemoryError"


def proc_status_kib(field: str) -> int:
    """A ``Vm*`` field of /proc/self/status (e.g. ``VmHWM``, the peak RSS), in KiB."""
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def report_child_result(result_tag: str, task: Callable[[], dict[str, Any]]) -> None:
    """Child side: run ``task`` and print its result as ``<result_tag><json>`` with ``status`` "ok", or
    "oom" when it ran out of memory under the cap (:func:`run_capped` turns that into a readable status)."""
    try:
        result = task()
        result["status"] = "ok"
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and "can't allocate memory" not in str(err):
            raise
        result = {"status": "oom"}
    print(result_tag + json.dumps(result), flush=True)


def run_script(result_tag: str, child: Callable[[dict[str, Any]], dict[str, Any]], main: Callable[[], Any]) -> None:
    """A cell script's entry point: ``--child <spec json>`` runs one cell (:func:`report_child_result`), anything
    else the script's ``main``."""
    if sys.argv[1:2] == ["--child"]:
        spec = json.loads(sys.argv[2])
        report_child_result(result_tag, lambda: child(spec))
    else:
        main()


def run_capped(
    script: Path, spec: dict[str, Any], mem_cap_gib: float, timeout: float, result_tag: str, timeout_status: str
) -> dict[str, Any]:
    """Run ``script --child <spec json>`` with RLIMIT_AS = ``mem_cap_gib``; the result always has a ``status``.

    Args:
        timeout_status: the status of a cell that exceeds ``timeout`` seconds.
    """
    cap = int(mem_cap_gib * GIB)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    oom = f"out of memory (> {mem_cap_gib:g} GiB cap)"
    try:
        proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(spec)], capture_output=True,
                              text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"status": timeout_status}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(result_tag):
            result = json.loads(line.removeprefix(result_tag))
            if result["status"] == "oom":
                result["status"] = oom
            return result
    stderr = proc.stderr.strip()
    if re.search(_OOM_PATTERN, stderr):
        return {"status": oom}
    if proc.returncode < 0:
        return {"status": f"killed by {signal.Signals(-proc.returncode).name}"}
    last = stderr.splitlines()[-1] if stderr else "no output"
    return {"status": f"error (exit {proc.returncode}): {last}"}
