"""Speed and peak memory of vqkit's nearest-code search and quantizers on CPU.

What it measures, on identical inputs (one seed: the same latents z (1, N, D) and the
same codebook (K, D) for every implementation):

* the machine's fp32 matmul rate, measured in the same run: a square GEMM (the
  practical peak) and, for each D, a plain matmul of the search's own shape
  (N x D @ D x 4096 into a preallocated output). At D=8 the search does 16 flops per
  distance it writes and reads back, so it is bound by memory, not by flops; the
  same-shape rate says what a bare matmul of that shape reaches here;
* ``vqkit.nearest_code``: search-only time, achieved GFLOP/s = 2*N*K*D / t and its
  share of both matmul rates;
* forward + backward (training mode, z requires grad, ``loss + z_q.sum()``) time and
  peak memory of vqkit's ``vq`` and ``ema_vq`` and of vector-quantize-pytorch's
  ``VectorQuantize`` configured the same way (learnable codebook / EMA with decay
  0.99, commitment weight 0.25, plain straight-through, no k-means, no dead-code
  replacement), and reference_time / vqkit_time for each pair that both ran;
* the same for the quantizers users pick instead, each against vector-quantize-pytorch's
  own: vqkit ``fsq`` vs ``FSQ`` at the levels of ``--fsq-levels`` (K = 1,000 / 15,360 /
  64,000 / 262,144; ``vqkit.fsq_lean`` is the same with ``batch_metrics=False``, the reference's work: vqkit's
  default also counts the batch's usage over all K codes, which vqp's FSQ does not), vqkit ``lfq`` vs ``LFQ``
  at ``--lfq-ks`` (2^10, 2^14, 2^18), and vqkit
  ``vq`` with ``estimator="rotation"`` vs ``VectorQuantize(rotation_trick=True)`` at ``--ks``.
  Each side keeps its library's defaults otherwise (vqkit's in ``VQKIT_OPTIONS``, vqp's in
  ``REFERENCE_OPTIONS``); a vqkit backend or option that is not there yet gets status
  ``missing-backend``.

Why subprocesses: every cell (implementation x K x D) runs in its own child process,
so its peak RSS (VmHWM, read in the child) is its own, and an out-of-memory cell
cannot take the machine down: the child's address space is capped (RLIMIT_AS), and
a cell that runs out of memory, is killed or times out is recorded as such. Missing
cells are listed, never dropped. Cells run one after another, never two at once.

Timing: 2 torch threads, one warm-up run, then the best of ``--repeats`` runs (one
run only when the warm-up already took longer than ``--slow-run-s``).

Outputs ``quantizer_speed.csv`` and ``quantizer_speed.md`` in ``--out-dir`` and prints
the Markdown table. Quick run: ``python benchmarks/quantizer_speed.py --ks 1024
--dims 8 --n 2048``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_check import MISSING, missing_backend  # noqa: E402  (sibling script modules)
from capped_cell import proc_status_kib, report_child_result, run_capped  # noqa: E402
from result_files import fmt, write_csv  # noqa: E402

SCRIPT = Path(__file__).resolve()
RESULT_TAG = "QUANTIZER_SPEED_RESULT "
THREADS = 2
SAME_SHAPE_CODES = 4096
GIB = 1 << 30

SEARCH = "vqkit.nearest_code"
VQKIT_VQ = "vqkit.vq"
VQKIT_EMA = "vqkit.ema_vq"
REF_VQ = "vqp.vq"
REF_EMA = "vqp.ema_vq"
VQKIT_ROTATION = "vqkit.vq_rotation"
REF_ROTATION = "vqp.vq_rotation"
VQKIT_FSQ = "vqkit.fsq"
VQKIT_FSQ_LEAN = "vqkit.fsq_lean"  # batch_metrics=False: the reference's work (it computes no usage per batch)
REF_FSQ = "vqp.fsq"
VQKIT_LFQ = "vqkit.lfq"
REF_LFQ = "vqp.lfq"
IMPLS = (SEARCH, VQKIT_VQ, VQKIT_EMA, REF_VQ, REF_EMA, VQKIT_ROTATION, REF_ROTATION, VQKIT_FSQ, VQKIT_FSQ_LEAN, REF_FSQ,
         VQKIT_LFQ, REF_LFQ)
REFERENCE_IMPLS = (REF_VQ, REF_EMA, REF_ROTATION, REF_FSQ, REF_LFQ)
REFERENCE_OF = {VQKIT_VQ: REF_VQ, VQKIT_EMA: REF_EMA, VQKIT_ROTATION: REF_ROTATION, VQKIT_FSQ: REF_FSQ,
                VQKIT_FSQ_LEAN: REF_FSQ, VQKIT_LFQ: REF_LFQ}
REFERENCE_PACKAGE = "vector-quantize-pytorch"
FSQ_IMPLS = (VQKIT_FSQ, VQKIT_FSQ_LEAN, REF_FSQ)  # run at --fsq-levels (K = product of the levels)
LFQ_IMPLS = (VQKIT_LFQ, REF_LFQ)  # run at --lfq-ks
FSQ_LEVELS = ("8,5,5,5", "8,8,8,6,5", "8,8,8,5,5,5", "8,8,8,8,8,8")  # K = 1,000 / 15,360 / 64,000 / 262,144
LFQ_KS = (1 << 10, 1 << 14, 1 << 18)
# The vqkit side of the new comparisons: registry name and keyword arguments besides dim (adjust after merging the
# backends); `k` is the codebook size, `levels` the FSQ levels of the cell.
VQKIT_OPTIONS: dict[str, tuple[str, Callable[[int, list[int] | None], dict[str, Any]]]] = {
    VQKIT_VQ: ("vq", lambda k, levels: {"codebook_size": k}),
    VQKIT_EMA: ("ema_vq", lambda k, levels: {"codebook_size": k}),
    VQKIT_ROTATION: ("vq", lambda k, levels: {"codebook_size": k, "estimator": "rotation"}),
    VQKIT_FSQ: ("fsq", lambda k, levels: {"levels": levels}),
    VQKIT_FSQ_LEAN: ("fsq", lambda k, levels: {"levels": levels, "batch_metrics": False}),
    VQKIT_LFQ: ("lfq", lambda k, levels: {"codebook_size": k}),
}
# vector-quantize-pytorch 1.32.0 settings; everything else is the class's default.
REFERENCE_OPTIONS: dict[str, str] = {
    REF_VQ: "VectorQuantize(learnable_codebook=True, ema_update=False, commitment_weight=0.25, rotation_trick=False)",
    REF_EMA: "VectorQuantize(decay=0.99, commitment_weight=0.25, rotation_trick=False)",
    REF_ROTATION: "VectorQuantize(learnable_codebook=True, ema_update=False, commitment_weight=0.25, "
                  "rotation_trick=True)",
    REF_FSQ: "FSQ(levels, dim=D)",
    REF_LFQ: "LFQ(dim=D, codebook_size=K) (entropy_loss_weight 0.1, commitment 0)",
}

COLUMNS = (
    "impl",
    "K",
    "N",
    "D",
    "levels",
    "status",
    "search_s",
    "search_gflops",
    "pct_of_peak_matmul",
    "pct_of_same_shape_matmul",
    "fwd_bwd_s",
    "peak_rss_mib",
    "speedup_vs_reference",
    "repeats",
)


# --- child side: runs inside the capped subprocess ------------------------------------------



def _best_time(fn: Callable[[], object], repeats: int, slow_run_s: float) -> tuple[float, int]:
    """Warm up once, then the best of ``repeats`` runs (one if the warm-up was slow)."""
    start = time.perf_counter()
    fn()
    if time.perf_counter() - start > slow_run_s:
        repeats = 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), repeats


def _child_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    baseline = {
        "baseline_rss_mib": proc_status_kib("VmHWM") / 1024,
        "baseline_vm_gib": proc_status_kib("VmSize") / 2**20,
    }
    gen = torch.Generator().manual_seed(spec["seed"])
    size = spec["gemm_size"]
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    t, _ = _best_time(lambda: torch.mm(a, b, out=out), 3, math.inf)
    same_shape = {}
    for d in spec["dims"]:
        z = torch.randn(spec["n"], d, generator=gen)
        codes = torch.randn(SAME_SHAPE_CODES, d, generator=gen)
        prod = torch.empty(spec["n"], SAME_SHAPE_CODES)
        t_d, _ = _best_time(lambda z=z, codes=codes, prod=prod: torch.mm(z, codes.T, out=prod), 3, math.inf)
        same_shape[str(d)] = 2 * spec["n"] * SAME_SHAPE_CODES * d / t_d / 1e9
    return {"peak_gflops": 2 * size**3 / t / 1e9, "same_shape_gflops": same_shape, **baseline}


def _build_quantizer(impl: str, dim: int, codebook_size: int, codebook: Any, levels: list[int] | None) -> Any:
    """The quantizer ``impl`` in training mode; nearest-code ones get their codes set to ``codebook`` (K, D)."""
    if impl in VQKIT_OPTIONS:
        from vqkit import build_quantizer

        name, options = VQKIT_OPTIONS[impl]
        q = build_quantizer(name, dim=dim, **options(codebook_size, levels))
        if impl in (VQKIT_VQ, VQKIT_ROTATION):
            q.embedding.data.copy_(codebook)
        elif impl == VQKIT_EMA:
            q.embed.copy_(codebook)
            q.embed_avg.copy_(codebook)
    elif impl == REF_FSQ:
        from vector_quantize_pytorch import FSQ

        q = FSQ(levels=levels, dim=dim)
    elif impl == REF_LFQ:
        from vector_quantize_pytorch import LFQ

        q = LFQ(dim=dim, codebook_size=codebook_size)
    else:
        from vector_quantize_pytorch import VectorQuantize

        common = {"dim": dim, "codebook_size": codebook_size, "commitment_weight": 0.25,
                  "rotation_trick": impl == REF_ROTATION}
        if impl in (REF_VQ, REF_ROTATION):
            q = VectorQuantize(**common, learnable_codebook=True, ema_update=False)
        else:
            q = VectorQuantize(**common, decay=0.99)
        q._codebook.embed.data.copy_(codebook.unsqueeze(0))
        q._codebook.embed_avg.copy_(codebook.unsqueeze(0))
    return q.train()


def vqkit_missing(impl: str) -> str | None:
    """Why the vqkit side of ``impl`` cannot be built here (backend not registered, option unknown), else None."""
    if impl not in VQKIT_OPTIONS:
        return None
    name, options = VQKIT_OPTIONS[impl]
    return missing_backend(name, options(1024, [8, 5, 5, 5]))


def _child_cell(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(THREADS)
    impl, n, d, k = spec["impl"], spec["n"], spec["dim"], spec["k"]
    gen = torch.Generator().manual_seed(spec["seed"])
    z = torch.randn(1, n, d, generator=gen)
    # only nearest-code quantizers take a codebook (FSQ / LFQ have implicit codes: no K x D tensor in their peak)
    codebook = None if impl in FSQ_IMPLS + LFQ_IMPLS else torch.randn(k, d, generator=gen)
    if impl == SEARCH:
        from vqkit.quantizers.search import nearest_code

        z_flat = z.reshape(n, d)

        def run() -> None:
            nearest_code(z_flat, codebook)

    else:
        q = _build_quantizer(impl, d, k, codebook, spec.get("levels"))
        z.requires_grad_(True)
        is_vqkit = impl in VQKIT_OPTIONS

        def run() -> None:
            z.grad = None
            q.zero_grad(set_to_none=True)
            if is_vqkit:
                out = q(z)
                z_q, loss = out.z_q, out.loss
            elif impl == REF_FSQ:  # FSQ has no loss: (codes, indices)
                z_q, _ = q(z)
                loss = z_q.new_zeros(())
            else:
                z_q, _, loss = q(z)
            (loss + z_q.sum()).backward()
            if z.grad is None or not torch.isfinite(z.grad).all():
                raise RuntimeError(f"{impl}: backward left no finite gradient on z")

    seconds, repeats = _best_time(run, spec["repeats"], spec["slow_run_s"])
    return {"seconds": seconds, "repeats": repeats, "peak_rss_mib": proc_status_kib("VmHWM") / 1024}


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    report_child_result(RESULT_TAG, lambda: _child_matmul(spec) if spec["task"] == "matmul" else _child_cell(spec))


# --- parent side -----------------------------------------------------------------------------


def _run_child(spec: dict[str, Any], mem_cap_gib: float, timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a child capped to ``mem_cap_gib`` of address space; returns its result.

    The result always has a ``status``: "ok", or why there are no numbers.
    """
    return run_capped(SCRIPT, spec, mem_cap_gib, timeout, RESULT_TAG, f"timeout (> {timeout:g} s)")


def _cell_row(impl: str, k: int, n: int, d: int, result: dict[str, Any], matmul: dict[str, Any],
              levels: list[int] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(impl=impl, K=k, N=n, D=d, status=result["status"],
               levels="x".join(map(str, levels)) if levels else None)
    if result["status"] != "ok":
        return row
    row.update(peak_rss_mib=result["peak_rss_mib"], repeats=result["repeats"])
    if impl == SEARCH:
        gflops = 2 * n * k * d / result["seconds"] / 1e9
        row.update(
            search_s=result["seconds"],
            search_gflops=gflops,
            pct_of_peak_matmul=100 * gflops / matmul["peak_gflops"],
            pct_of_same_shape_matmul=100 * gflops / matmul["same_shape_gflops"][str(d)],
        )
    else:
        row["fwd_bwd_s"] = result["seconds"]
    return row


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    """speedup_vs_reference = reference fwd+bwd time / vqkit fwd+bwd time, where both ran."""
    times = {(r["impl"], r["K"], r["D"]): r["fwd_bwd_s"] for r in rows}
    for row in rows:
        ref = REFERENCE_OF.get(row["impl"])
        ours, theirs = row["fwd_bwd_s"], times.get((ref, row["K"], row["D"]))
        if ours is not None and theirs is not None:
            row["speedup_vs_reference"] = theirs / ours


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| impl | K | D | levels | status | search s | search GFLOP/s | % of peak matmul | % of same-shape matmul "
        "| fwd+bwd s | peak RSS MiB | speedup vs reference | repeats |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        cells = [
            r["impl"],
            str(r["K"]),
            str(r["D"]),
            r["levels"] or "",
            r["status"],
            fmt(r["search_s"]),
            fmt(r["search_gflops"], 3),
            fmt(r["pct_of_peak_matmul"], 2),
            fmt(r["pct_of_same_shape_matmul"], 2),
            fmt(r["fwd_bwd_s"]),
            "" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}",
            "" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}x",
            "" if r["repeats"] is None else str(r["repeats"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return match.group(1).strip() if match else platform.processor()


def _markdown(
    args: argparse.Namespace, argv: Sequence[str], matmul: dict[str, Any], ref_version: str | None, table: str
) -> str:
    command = shlex.join(["python", "benchmarks/quantizer_speed.py", *argv])
    niceness = os.nice(0)
    same_shape = ", ".join(f"D={d}: {matmul['same_shape_gflops'][str(d)]:.1f} GFLOP/s" for d in args.dims)
    return "\n".join(
        [
            "# Quantizer speed (CPU)",
            "",
            f"- Command: `{command}`" + (f" (run at niceness {niceness})" if niceness else ""),
            f"- Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- Machine: {_cpu_model()}, {os.cpu_count()} CPUs, {THREADS} torch threads",
            f"- torch {importlib.metadata.version('torch')}; {REFERENCE_PACKAGE} "
            + (ref_version or "not installed (reference cells skipped)"),
            f"- Peak fp32 matmul ({args.gemm_size}x{args.gemm_size} @ {args.gemm_size}x{args.gemm_size}, "
            f"best of 3): {matmul['peak_gflops']:.1f} GFLOP/s",
            f"- Same-shape fp32 matmul (N x D @ D x {SAME_SHAPE_CODES}, N={args.n}, preallocated output): {same_shape}",
            f"- N = {args.n} query vectors, z of shape (1, N, D); search GFLOP/s = 2*N*K*D / search time",
            f"- fwd+bwd: training mode, `(loss + z_q.sum()).backward()`; best of up to {args.repeats} runs after "
            f"a warm-up (1 run when the warm-up took > {args.slow_run_s:g} s)"
            + (f", in each of {args.rounds} child processes per cell (the fastest kept)" if args.rounds > 1 else ""),
            f"- Peak RSS: the child process's VmHWM, including ~{matmul['baseline_rss_mib']:.0f} MiB for the "
            f"interpreter and torch; address space capped at {args.mem_cap_gib:g} GiB per cell (importing torch "
            f"alone maps ~{matmul['baseline_vm_gib']:.1f} GiB of it); per-cell timeout {args.timeout:g} s",
            "- Reference settings (vector-quantize-pytorch; other arguments its defaults): "
            + "; ".join(f"{impl}: `{text}`" for impl, text in REFERENCE_OPTIONS.items()),
            "- vqkit settings (besides `dim`; other arguments the backend's defaults): "
            + "; ".join(f"{impl}: `{name}` {sorted(options(1024, [8, 5, 5, 5]))}"
                        for impl, (name, options) in VQKIT_OPTIONS.items()),
            f"- FSQ cells at `--fsq-levels` (K = product of the levels), LFQ cells at `--lfq-ks`; `{MISSING}`: the "
            "vqkit backend or option is not in this checkout",
            "- speedup vs reference = reference fwd+bwd time / vqkit fwd+bwd time",
            "",
            table,
            "",
        ]
    )


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1024, 16384, 65536, 262144], help="codebook sizes K")
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 256], help="latent widths D")
    parser.add_argument("--n", type=int, default=16384, help="query vectors N")
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to run")
    parser.add_argument("--fsq-levels", nargs="+", default=list(FSQ_LEVELS),
                        help="FSQ levels per cell, comma-separated (K = their product)")
    parser.add_argument("--lfq-ks", type=int, nargs="+", default=list(LFQ_KS), help="LFQ codebook sizes (powers of 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per cell after the warm-up (best kept)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="child processes per cell, the fastest kept (millisecond cells vary by 10-30%% from "
                             "one process to the next with the allocator's state; 3 settles them)")
    parser.add_argument(
        "--slow-run-s", type=float, default=30.0, help="time a single run when the warm-up took longer than this"
    )
    parser.add_argument("--mem-cap-gib", type=float, default=18.0, help="address-space cap of each cell's process")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a cell is killed")
    parser.add_argument("--gemm-size", type=int, default=4096, help="side of the square GEMM giving the peak rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs, shared by every cell")
    parser.add_argument("--out-dir", type=Path, default=SCRIPT.parent / "results", help="where the CSV and Markdown go")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for text in args.fsq_levels:
        if not all(v.strip().isdigit() and int(v) >= 2 for v in text.split(",")):
            parser.error(f"--fsq-levels {text!r}: give comma-separated integers >= 2 per cell, e.g. 8,5,5,5")
    return args


def _grid(args: argparse.Namespace) -> list[tuple[int, int, str, list[int] | None]]:
    """(K, D, impl, FSQ levels or None) of every cell: nearest-code impls at --ks, then FSQ, then LFQ."""
    nearest = [i for i in args.impls if i not in FSQ_IMPLS + LFQ_IMPLS]
    fsq = [i for i in args.impls if i in FSQ_IMPLS]
    lfq = [i for i in args.impls if i in LFQ_IMPLS]
    levels = [[int(v) for v in text.split(",")] for text in args.fsq_levels]
    return ([(k, d, impl, None) for k in args.ks for d in args.dims for impl in nearest]
            + [(math.prod(lv), d, impl, lv) for lv in levels for d in args.dims for impl in fsq]
            + [(k, d, impl, None) for k in args.lfq_ks for d in args.dims for impl in lfq])


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark grid; write the CSV and Markdown; return the rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = args.out_dir / "quantizer_speed.csv", args.out_dir / "quantizer_speed.md"

    ref_version = (
        importlib.metadata.version(REFERENCE_PACKAGE) if importlib.util.find_spec("vector_quantize_pytorch") else None
    )
    print(f"measuring matmul rates ({THREADS} threads)...", flush=True)
    matmul = _run_child(
        {"task": "matmul", "gemm_size": args.gemm_size, "dims": args.dims, "n": args.n, "seed": args.seed},
        args.mem_cap_gib,
        args.timeout,
    )
    if matmul["status"] != "ok":
        raise SystemExit(f"matmul rate measurement failed: {matmul['status']}")
    print(
        f"peak matmul {matmul['peak_gflops']:.1f} GFLOP/s; same-shape "
        + ", ".join(f"D={d}: {g:.1f}" for d, g in matmul["same_shape_gflops"].items()),
        flush=True,
    )

    cells = _grid(args)
    missing = {impl: vqkit_missing(impl) for impl in args.impls}
    rows: list[dict[str, Any]] = []
    for i, (k, d, impl, levels) in enumerate(cells, 1):
        start = time.perf_counter()
        if impl in REFERENCE_IMPLS and ref_version is None:
            result = {"status": f"skipped ({REFERENCE_PACKAGE} not installed)"}
        elif missing[impl]:
            result = {"status": MISSING}
        else:
            spec = {
                "task": "cell",
                "impl": impl,
                "k": k,
                "n": args.n,
                "dim": d,
                "seed": args.seed,
                "repeats": args.repeats,
                "slow_run_s": args.slow_run_s,
                "levels": levels,
            }
            result = _run_child(spec, args.mem_cap_gib, args.timeout)
            for _ in range(args.rounds - 1):  # fresh processes: the fastest run stands for the cell
                if result["status"] != "ok":
                    break
                again = _run_child(spec, args.mem_cap_gib, args.timeout)
                if again["status"] == "ok" and again["seconds"] < result["seconds"]:
                    result = again
        rows.append(_cell_row(impl, k, args.n, d, result, matmul, levels))
        write_csv(csv_path, rows, COLUMNS)
        summary = (
            f"{result['seconds']:.4g} s, peak RSS {result['peak_rss_mib']:.0f} MiB"
            if result["status"] == "ok"
            else result["status"] + (f" ({missing[impl]})" if missing.get(impl) else "")
        )
        print(
            f"[{i:>{len(str(len(cells)))}}/{len(cells)}] {impl:<18} K={k:<7} D={d:<4} {summary} "
            f"(cell wall {time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    _add_speedups(rows)
    write_csv(csv_path, rows, COLUMNS)
    table = _markdown_table(rows)
    md_path.write_text(_markdown(args, argv, matmul, ref_version, table))
    print()
    print(table)
    print(f"\nwrote {csv_path} and {md_path}")
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child_main(sys.argv[2])
    else:
        main()
