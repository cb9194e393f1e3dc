"""Timing and peak-memory measurement shared by the benchmarks.

Why not one ``timeit`` per configuration: on a shared machine the load changes over
seconds, so configurations that are compared are timed *interleaved* (one repetition of
each in turn, order rotated) and summarised by their median.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

Workload = Callable[[], object]


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Workload, device: torch.device | str, clock: Callable[[], float] = time.perf_counter) -> float:
    """Time of one call in ms (wall by default), the device's queue drained before and after."""
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return 1e3 * (clock() - start)


def interleaved_ms(
    workloads: Mapping[str, Workload],
    device: torch.device | str,
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """``repeats`` timings per workload, taken round-robin (order rotated each round)."""
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            workloads[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once_ms(workloads[name], device))
    return times


def adaptive_ms(
    fn: Workload,
    device: torch.device | str,
    min_time_s: float = 0.3,
    min_repeats: int = 3,
    max_repeats: int = 50,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Repeat ``fn`` (after ``warmup`` calls) until ``min_time_s`` and ``min_repeats`` are reached."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) < 1e3 * min_time_s):
        times.append(time_once_ms(fn, device, clock))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def peak_memory_mb(fn: Workload, device: torch.device | str) -> float:
    """Peak tensor memory (MiB) allocated by one call *above what was allocated before it*.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset of the peak statistics.
    CPU: PyTorch's CPU allocator reports every allocation and free to the profiler when
    ``profile_memory=True``; the running sum of those events, in time order, peaks at the
    number returned. It counts tensors only (no Python objects, no allocator caching) and
    excludes inputs, parameters and buffers that existed before the call, like the CUDA
    figure. Run it apart from timing (the profiler slows the call down).
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def env_info(device: torch.device | str) -> dict[str, object]:
    """The ``env`` block of the benchmark reports."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "torch": torch.__version__,
        "device": name,
        "threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json_and_markdown(report: dict, out: Path, markdown: str) -> tuple[Path, Path]:
    """Write ``report`` as JSON to ``out`` and ``markdown`` beside it (``.md``); returns both paths."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    markdown_path = out.with_suffix(".md")
    markdown_path.write_text(markdown)
    return out, markdown_path


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``, the same for every benchmark script."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: two threads on a shared 2-core machine mostly time the scheduler); 0 keeps PyTorch's default",
    )


def apply_device_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse CUDA where there is none; pin the CPU thread count."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.device == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
