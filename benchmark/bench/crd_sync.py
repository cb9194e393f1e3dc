"""Cost of CRD's synchronised memory under DDP: all-gather + the global batch's bank update.

    python -m benchmark.bench.crd_sync [--nproc 2] [--batch-size 64] [--num-data 50000] [--quick]

Starts ``--nproc`` gloo processes on this machine. Each rank runs CRD's memory step
(score its B samples against K negatives in both banks, normalise, update both banks)
with the synchronisation on — all-gather of the indices and both embeddings, update with
the N·B rows — and, in the same processes and interleaved, the same step on its own batch
only (what an unsynchronised DDP port does). The difference is what keeping one bank costs
per step. Medians over the repetitions; JSON + Markdown like the other benchmark scripts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from benchmark.bench.timing import write_json_and_markdown


def _rank_main(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as dist

    from methods import distributed
    from methods.crd import ContrastMemory

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(rank)
    memory = ContrastMemory(args.feat_dim, args.num_data, args.nce_k, 0.07, 0.5, "gather")
    timings = {"synchronised_ms": [], "local_only_ms": []}
    real_world_size = distributed.world_size
    for rep in range(args.warmup + args.reps):
        idx = torch.randperm(args.num_data, generator=gen)[: args.batch_size]
        contrast = torch.randint(args.num_data, (args.batch_size, args.nce_k + 1), generator=gen)
        contrast[:, 0] = idx
        v_s = torch.nn.functional.normalize(torch.randn(args.batch_size, args.feat_dim, generator=gen), dim=1)
        v_t = torch.nn.functional.normalize(torch.randn(args.batch_size, args.feat_dim, generator=gen), dim=1)
        order = ("synchronised_ms", "local_only_ms") if rep % 2 == 0 else ("local_only_ms", "synchronised_ms")
        for mode in order:
            distributed.world_size = real_world_size if mode == "synchronised_ms" else (lambda: 1)
            dist.barrier()
            start = time.perf_counter()
            with torch.no_grad():
                memory(v_s, v_t, idx, contrast)
            elapsed = 1e3 * (time.perf_counter() - start)
            if rep >= args.warmup:
                timings[mode].append(elapsed)
    distributed.world_size = real_world_size
    torch.save(timings, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="per-process batch")
    parser.add_argument("--num-data", type=int, default=50_000)
    parser.add_argument("--nce-k", type=int, default=16384)
    parser.add_argument("--feat-dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/crd_sync.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.warmup = 6, 1

    import tempfile

    import torch.multiprocessing as mp

    from benchmark.train.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank_main, args=(args.nproc, free_port(), args, tmp), nprocs=args.nproc, join=True, start_method="spawn"
        )
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(args.nproc)]
    sync = statistics.median(t for r in ranks for t in r["synchronised_ms"])
    local = statistics.median(t for r in ranks for t in r["local_only_ms"])
    report = {
        "config": {
            k: getattr(args, k) for k in ("nproc", "batch_size", "num_data", "nce_k", "feat_dim", "reps", "warmup")
        },
        "device": "cpu (gloo, 1 thread per process)",
        "synchronised_ms": round(sync, 3),
        "local_only_ms": round(local, 3),
        "sync_overhead_ms": round(sync - local, 3),
        "ratio": round(sync / local, 3),
    }
    markdown = (
        f"# CRD memory step under DDP ({args.nproc} processes, gloo, CPU)\n\n"
        f"per-process batch {args.batch_size}, N = {args.num_data}, K = {args.nce_k}, d = {args.feat_dim}; "
        f"medians over {args.reps} interleaved repetitions × {args.nproc} ranks\n\n"
        f"| step | ms |\n|---|---:|\n| synchronised (all-gather + global update) | {sync:.3f} |\n"
        f"| local batch only (unsynchronised) | {local:.3f} |\n| overhead | {sync - local:.3f} ({sync / local:.3f}×) |\n"
    )
    write_json_and_markdown(report, args.out, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
