"""CRD's memory scoring, reference row gather vs full-bank matmul, timed interleaved.

    python -m benchmark.bench.crd_scoring [--device cpu|cuda] [--repeats 7] [--threads 1]
        [--batch-size 64 --k 16384 --n-data 50000 --dim 128] [--out reports/bench/crd_scoring.json]

Times one forward+backward of :class:`methods.crd.ContrastMemory` (both banks scored,
Z-normalised, updated in place; backward to the embeddings from fixed upstream gradients),
float32, with ``scoring='gather'`` and with ``scoring='full'``, alternating, on the same
data; reports the medians and their ratio. ``--with-loss`` also times both paths with CRD's
NCE loss on top (elementwise work common to both, which dilutes the ratio). A Markdown
summary is written beside the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .timing import (
    add_device_arguments,
    apply_device_arguments,
    env_info,
    interleaved_ms,
    median,
    peak_memory_mb,
    write_json_and_markdown,
)
from .workloads import CRD_DIM, CRD_K, CRD_N, memory_scoring_workload


def compare(
    batch_size: int = 64,
    k: int = CRD_K,
    n_data: int = CRD_N,
    dim: int = CRD_DIM,
    device: str = "cpu",
    repeats: int = 7,
    memory: bool = True,
    with_loss: bool = False,
) -> dict[str, object]:
    """Median ms of gather and full (interleaved), their ratio, and each path's peak memory."""
    variants = [("", False)] + ([("_with_loss", True)] if with_loss else [])
    workloads = {
        f"{path}{suffix}": memory_scoring_workload(path, batch_size, k, n_data, dim, device, with_loss=loss)
        for suffix, loss in variants
        for path in ("gather", "full")
    }
    times = interleaved_ms(workloads, device, repeats)
    result: dict[str, object] = {
        "batch_size": batch_size,
        "nce_k": k,
        "n_data": n_data,
        "feat_dim": dim,
        "dtype": "float32",
        "repeats": repeats,
    }
    for suffix, _ in variants:
        gather, full = median(times[f"gather{suffix}"]), median(times[f"full{suffix}"])
        result.update({f"gather{suffix}_ms": gather, f"full{suffix}_ms": full, f"speedup{suffix}": gather / full})
    result.update({f"{name}_times_ms": values for name, values in times.items()})
    if memory:
        for path in ("gather", "full"):
            result[f"{path}_peak_memory_mb"] = peak_memory_mb(workloads[path], device)
    return result


def to_markdown(report: dict[str, object]) -> str:
    r = report["result"]  # type: ignore[index]
    env = report["env"]  # type: ignore[index]
    lines = [
        "# CRD memory scoring: row gather vs full-bank matmul",
        "",
        f"B={r['batch_size']}, K={r['nce_k']}, N={r['n_data']}, d={r['feat_dim']}, {r['dtype']}; "
        f"forward+backward of ContrastMemory (both banks: score, normalise, update; backward to v); median of "
        f"{r['repeats']} interleaved repetitions ({env['device']}, {env['threads']} thread(s), torch {env['torch']}, "
        f"{env['date']}).",
        "",
        "| what | gather ms | full ms | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| memory scoring | {r['gather_ms']:.1f} | {r['full_ms']:.1f} | **{r['speedup']:.1f}x** |",
    ]
    if "speedup_with_loss" in r:
        lines.append(
            f"| memory scoring + NCE loss | {r['gather_with_loss_ms']:.1f} | {r['full_with_loss_ms']:.1f} | "
            f"{r['speedup_with_loss']:.1f}x |"
        )
    if "gather_peak_memory_mb" in r:
        lines += [
            "",
            f"Peak tensor memory of one memory-scoring call: gather {r['gather_peak_memory_mb']:.1f} MiB, "
            f"full {r['full_peak_memory_mb']:.1f} MiB.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arguments(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=CRD_K)
    parser.add_argument("--n-data", type=int, default=CRD_N)
    parser.add_argument("--dim", type=int, default=CRD_DIM)
    parser.add_argument("--with-loss", action="store_true", help="also time both paths with the NCE loss on top")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/crd_scoring.json"))
    args = parser.parse_args(argv)
    apply_device_arguments(parser, args)
    result = compare(
        args.batch_size, args.k, args.n_data, args.dim, args.device, args.repeats, with_loss=args.with_loss
    )
    report = {"env": env_info(args.device), "result": result}
    markdown = to_markdown(report)
    write_json_and_markdown(report, args.out, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
