"""Loss complexity sweep: forward+backward time and peak memory of each distillation loss
vs batch size (and CRD's bank size N).

    python -m benchmark.bench.complexity --out reports/bench/loss_complexity.json \\
        [--device cpu|cuda] [--quick] [--threads 1] [--methods ce,kd,...] [--batch-sizes 16,32,...]

Writes the JSON the aggregator plots (``benchmark.aggregate --bench-json``)::

    {"env": {"torch": ..., "device": ..., "threads": ..., "date": ...},
     "results": [{"method": "ckd", "batch_size": 64, "n_data": null,
                  "forward_backward_ms": 1.2, "peak_memory_mb": 3.4}, ...]}

and beside it a Markdown table (``.md``): time vs B, one row per method (CRD one row per N).

What is measured: the method's ``forward`` (all its weighted terms, CE included) and the
backward of their sum on synthetic CIFAR-100 tensors (see :mod:`.workloads`; networks are
not run), median of repetitions after one warm-up call (at least 3 and 0.3 s of them).
Peak memory: tensor memory allocated above what existed before the call (see
:func:`.timing.peak_memory_mb`), from a separate call.

CRD: K = 16384 (N/2 for N = 5,000), d = 128, ``scoring='auto'``; a (B, N) point is run only
when B·N ≤ 2^26 (the full-bank path's B × N score matrix stays ≤ 256 MiB in float32):
N = 500,000 stops at B = 128.

Threads: CPU runs default to ONE thread. On the shared 2-core development machine a
two-thread run of a small kernel spends most of its time waiting for the second thread
to be scheduled (CE at B=64: ~45 ms with 2 threads vs 0.3 ms with 1), so multi-threaded
figures measure the neighbours, not the loss. ``--threads 0`` keeps PyTorch's default.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from methods import METHODS

from .timing import (
    adaptive_ms,
    add_device_arguments,
    apply_device_arguments,
    env_info,
    median,
    peak_memory_mb,
    write_json_and_markdown,
)
from .workloads import loss_workload

# Every registered loss, in table order, except a sum of two others (CRD+KD = CRD + KD).
DEFAULT_METHODS = tuple(
    sorted((name for name in METHODS.module_dict if name != "crd_kd"), key=lambda name: METHODS.get(name).table_order)
)
DEFAULT_BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024)
DEFAULT_CRD_N = (5_000, 50_000, 500_000)
MAX_SCORE_ELEMENTS = 2**26  # B·N cap for CRD points
QUICK = dict(batch_sizes=(4, 8), crd_n=(200, 1_000), min_time_s=0.0, min_repeats=1, warmup=0)

RESULT_KEYS = ("method", "batch_size", "n_data", "forward_backward_ms", "peak_memory_mb")
ENV_KEYS = ("torch", "device", "threads", "date")


def sweep_points(
    methods: Iterable[str], batch_sizes: Sequence[int], crd_n: Sequence[int]
) -> list[tuple[str, int, int | None]]:
    """(method, B, N) to run, cheapest methods first; N only for CRD (its bank size)."""
    points: list[tuple[str, int, int | None]] = []
    for method in methods:
        if method.startswith("crd"):
            for n in crd_n:
                points += [(method, b, n) for b in batch_sizes if b * n <= MAX_SCORE_ELEMENTS]
        else:
            points += [(method, b, None) for b in batch_sizes]
    return points


def measure_point(
    method: str,
    batch_size: int,
    n_data: int | None,
    device: str,
    min_time_s: float = 0.3,
    min_repeats: int = 3,
    warmup: int = 1,
    memory: bool = True,
) -> dict[str, Any]:
    workload = loss_workload(method, batch_size, n_data, device)
    times = adaptive_ms(workload, device, min_time_s=min_time_s, min_repeats=min_repeats, warmup=warmup)
    peak = peak_memory_mb(workload, device) if memory else None
    del workload
    return {
        "method": method,
        "batch_size": batch_size,
        "n_data": n_data,
        "forward_backward_ms": round(median(times), 4),
        "peak_memory_mb": None if peak is None else round(peak, 4),
    }


def run_sweep(
    methods: Iterable[str] = DEFAULT_METHODS,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    crd_n: Sequence[int] = DEFAULT_CRD_N,
    device: str = "cpu",
    min_time_s: float = 0.3,
    min_repeats: int = 3,
    warmup: int = 1,
    memory: bool = True,
    log: bool = False,
) -> dict[str, Any]:
    results = []
    for method, b, n in sweep_points(methods, batch_sizes, crd_n):
        start = time.perf_counter()
        row = measure_point(method, b, n, device, min_time_s, min_repeats, warmup, memory)
        results.append(row)
        if log:
            label = method if n is None else f"{method} N={n}"
            print(
                f"{label:>16} B={b:<5} {row['forward_backward_ms']:10.3f} ms  "
                f"{row['peak_memory_mb']} MiB  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return {"env": env_info(device), "results": results}


def validate_report(report: Any) -> None:
    """Raise ValueError unless ``report`` has exactly the documented schema."""
    if not isinstance(report, dict) or set(report) != {"env", "results"}:
        raise ValueError("top level must be {'env', 'results'}")
    env = report["env"]
    if not isinstance(env, dict) or set(env) != set(ENV_KEYS):
        raise ValueError(f"env must have exactly {ENV_KEYS}")
    if not (
        isinstance(env["torch"], str)
        and isinstance(env["device"], str)
        and isinstance(env["date"], str)
        and isinstance(env["threads"], int)
    ):
        raise ValueError("env: torch, device, date are strings, threads an int")
    if not isinstance(report["results"], list) or not report["results"]:
        raise ValueError("results must be a non-empty list")
    for row in report["results"]:
        if not isinstance(row, dict) or tuple(row) != RESULT_KEYS:
            raise ValueError(f"each result must have exactly the keys {RESULT_KEYS}, in that order: {row}")
        if not isinstance(row["method"], str) or not isinstance(row["batch_size"], int) or row["batch_size"] < 1:
            raise ValueError(f"bad method / batch_size: {row}")
        is_crd = row["method"].startswith("crd")
        if is_crd != isinstance(row["n_data"], int):
            raise ValueError(f"n_data is an int for CRD rows and null otherwise: {row}")
        for key in ("forward_backward_ms", "peak_memory_mb"):
            value = row[key]
            if value is None and key == "peak_memory_mb":
                continue  # --no-memory
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{key} must be a finite number >= 0: {row}")


def _label(method: str, n_data: int | None) -> str:
    return method if n_data is None else f"{method} (N={n_data:,})"


def to_markdown(report: dict[str, Any]) -> str:
    """Time (and peak memory) vs batch size, one row per method / CRD bank size."""
    rows = report["results"]
    env = report["env"]
    batch_sizes = sorted({r["batch_size"] for r in rows})
    labels: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        labels.setdefault(_label(r["method"], r["n_data"]), {})[r["batch_size"]] = r
    header = "| method | " + " | ".join(f"B={b}" for b in batch_sizes) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in batch_sizes) + " |"

    def table(key: str, fmt: str) -> list[str]:
        lines = [header, rule]
        for label, by_b in labels.items():
            cells = [format(by_b[b][key], fmt) if b in by_b and by_b[b][key] is not None else "–" for b in batch_sizes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return lines

    out = [
        "# Distillation loss cost vs batch size",
        "",
        f"Forward + backward of each method's loss terms on CIFAR-100 shapes (C=100; hint (B,128,16,16); "
        f"embedding 256; CRD K=16384 or N/2, d=128, scoring='auto'). Median ms after warm-up. "
        f"{env['device']}, {env['threads']} thread(s), torch {env['torch']}, {env['date']}. "
        "'–': not run (CRD needs B·N ≤ 2^26).",
        "",
        "## forward + backward (ms)",
        "",
        *table("forward_backward_ms", ".3g"),
        "",
        "## peak memory above inputs (MiB)",
        "",
        *table("peak_memory_mb", ".3g"),
        "",
    ]
    return "\n".join(out)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    validate_report(report)
    return write_json_and_markdown(report, out, to_markdown(report))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/bench/loss_complexity.json"))
    add_device_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (for tests)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--batch-sizes", type=_ints, default=None)
    parser.add_argument("--crd-n", type=_ints, default=None, help=f"CRD bank sizes (default {DEFAULT_CRD_N})")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory call (peak_memory_mb: null)")
    args = parser.parse_args(argv)
    apply_device_arguments(parser, args)
    settings: dict[str, Any] = dict(QUICK) if args.quick else {}
    batch_sizes = args.batch_sizes or settings.pop("batch_sizes", DEFAULT_BATCH_SIZES)
    crd_n = args.crd_n or settings.pop("crd_n", DEFAULT_CRD_N)
    settings.pop("batch_sizes", None), settings.pop("crd_n", None)
    start = time.perf_counter()
    report = run_sweep(
        [m for m in args.methods.split(",") if m],
        batch_sizes,
        crd_n,
        args.device,
        memory=not args.no_memory,
        log=True,
        **settings,
    )
    json_path, md_path = write_report(report, args.out)
    print(f"wrote {json_path} and {md_path} in {time.perf_counter() - start:.0f} s")
    return report


if __name__ == "__main__":
    main()
