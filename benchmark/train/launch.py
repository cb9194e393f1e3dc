"""One run, to the end: resume or set aside its checkpoints, then train here or on N DDP ranks.

:func:`execute` is what the sweep calls for one run. :func:`train_distributed` starts N processes on this machine with the torchrun-style
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``),
so the user types one command. Each initialises the process group — gloo on CPU (MMEngine's
own initialisation assumes CUDA), nccl on GPU — and runs :func:`benchmark.train.trainer.train` as
one rank; MMEngine wraps the model in DDP, shards the data with its ``DefaultSampler`` and
checkpoints on rank 0. What DDP changes per method is handled in the methods themselves
(CRD's synchronised bank, CKD's global contrast); the rest is gradient averaging.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook

from benchmark.store.atomic import write_text as atomic_write_text
from benchmark.store.checkpoints import epoch_checkpoints, newest_loadable_checkpoint
from benchmark.store.records import RECORD_FILE, RunRecord, read_record, write_record

from .config import RunSpec, build_config
from .trainer import new_record, train


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(
    local_rank: int,
    world_size: int,
    port: int,
    spec,
    num_data: int,
    record: dict,
    checkpoint: str | None,
    show_progress: bool,
    cohort: tuple | None = None,
) -> None:
    import logging
    import warnings

    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    on_gpu = spec.device != "cpu"
    if on_gpu:
        torch.cuda.set_device(local_rank)
        spec.device = f"cuda:{local_rank}"
    if spec.log_level == "ERROR":
        logging.getLogger("mmengine").setLevel(logging.ERROR)
        # broadcast_buffers=False is what we want (rank-local BatchNorm statistics, banks kept
        # identical by identical updates); torch only announces its future rename.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
    if spec.suite.cpu_threads and not on_gpu:
        torch.set_num_threads(spec.suite.cpu_threads)
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=local_rank, world_size=world_size)
    try:
        progress = (lambda line: print("    " + line, flush=True)) if show_progress and local_rank == 0 else None
        if cohort is None:
            train(spec, build_config(spec, num_data), RunRecord.from_dict(record), checkpoint, progress)
        else:
            from .cohort import train_cohort

            specs, records, checkpoints = cohort
            for member in specs:
                member.device = spec.device
            train_cohort(specs, [RunRecord.from_dict(r) for r in records], checkpoints, num_data, progress)
    finally:
        dist.destroy_process_group()


def train_distributed(
    spec, num_data: int, record, checkpoint: str | None, show_progress: bool = False, cohort: tuple | None = None
) -> None:
    """Train ``spec`` on ``spec.world_size`` local processes; rank 0 writes the record and files.

    ``cohort``: (specs, records, checkpoints) of a cohort to train instead (``spec`` is its first).
    A rank that raises (not a NaN loss: that is recorded as a failed run) makes this raise.
    """
    import torch.multiprocessing as mp

    if os.environ.get("WORLD_SIZE") not in (None, "1"):
        raise RuntimeError("already inside a distributed launch: run.py starts the --nproc processes itself")
    if cohort is not None:
        specs, records, checkpoints = cohort
        cohort = (list(specs), [r.to_dict() for r in records], checkpoints)
    mp.start_processes(
        _rank_main,
        args=(spec.world_size, free_port(), spec, num_data, record.to_dict(), checkpoint, show_progress, cohort),
        nprocs=spec.world_size,
        join=True,
        start_method="spawn",
    )


def _set_aside_old_checkpoints(work_dir: Path, say: Callable[[str], Any]) -> None:
    """A run that starts over must never resume later from an earlier attempt's checkpoint."""
    old = epoch_checkpoints(work_dir)
    for _epoch, path in old:
        os.replace(path, path.with_name(path.name + ".abandoned"))
    if old:
        say(f"    earlier checkpoints in {work_dir} renamed *.abandoned (this run starts over)")


def prepare(
    spec: RunSpec, num_data: int, record: RunRecord, resume: bool, say: Callable[[str], Any] = print
) -> tuple[Config, RunRecord, tuple[int, Path] | None]:
    """A run's config, its record (fresh unless it resumes) and the checkpoint it resumes from.

    With ``resume``, training continues from the newest checkpoint that loads (torn ones are set
    aside); without one, or without ``resume``, the run starts over with a fresh record.
    The record is written as running, the config beside it."""
    cfg = build_config(spec, num_data)
    work_dir = Path(cfg.work_dir)
    checkpoint = newest_loadable_checkpoint(work_dir, say) if resume else None
    if checkpoint is None:
        if resume:
            say(f"    no checkpoint of {spec.run_dir} loads: the run starts over")
        _set_aside_old_checkpoints(work_dir, say)
        attempts = record.extra.get("attempts", 0)
        record = new_record(spec)
        record.extra["attempts"] = attempts
    record.extra["attempts"] = record.extra.get("attempts", 0) + 1
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.run_dir / "config.py", cfg.pretty_text)
    record.status, record.failure = "running", None
    write_record(record, spec.run_dir)
    return cfg, record, checkpoint


def execute(
    spec: RunSpec,
    num_data: int,
    record: RunRecord,
    resume: bool,
    progress: Callable[[str], Any] | None = None,
    hooks: Sequence[Hook] = (),
    say: Callable[[str], Any] = print,
) -> RunRecord:
    """Train one run to the end, or continue it (see :func:`prepare`); returns its completed or
    failed record. ``hooks`` are extra MMEngine hooks (e.g. an interruption in tests)."""
    cfg, record, checkpoint = prepare(spec, num_data, record, resume, say)
    checkpoint_path = str(checkpoint[1]) if checkpoint else None
    if spec.world_size == 1:
        return train(spec, cfg, record, checkpoint_path, progress, hooks)
    train_distributed(spec, num_data, record, checkpoint_path, show_progress=progress is not None)
    return read_record(spec.run_dir / RECORD_FILE)


def execute_cohort(
    specs: Sequence[RunSpec],
    num_data: int,
    records: Sequence[RunRecord],
    resume: Sequence[bool],
    progress: Callable[[str], Any] | None = None,
    hooks: Sequence[Hook] = (),
    say: Callable[[str], Any] = print,
) -> list[RunRecord]:
    """Train the runs ``specs`` of one (suite, variant, pair, seed) in lockstep cohorts.

    Members that resume from checkpoints of one epoch (or all start fresh) and share their data,
    schedule length and numerics train together; a member left alone trains as a run alone.
    Every record names the other members of its cohort (``extra['cohort']``)."""
    from .cohort import compatible_groups, train_cohort

    prepared = [prepare(s, num_data, r, again, say) for s, r, again in zip(specs, records, resume)]
    epochs = [checkpoint[0] if checkpoint else 0 for _cfg, _record, checkpoint in prepared]
    results: dict[int, RunRecord] = {}
    for same_config in compatible_groups([cfg for cfg, _record, _checkpoint in prepared]):
        by_epoch: dict[int, list[int]] = {}
        for index in same_config:
            by_epoch.setdefault(epochs[index], []).append(index)
        for group in by_epoch.values():
            if len(group) == 1:
                index = group[0]
                cfg, record, checkpoint = prepared[index]
                record.extra.pop("cohort", None)
                path = str(checkpoint[1]) if checkpoint else None
                if specs[index].world_size == 1:
                    results[index] = train(specs[index], cfg, record, path, progress, hooks)
                else:
                    train_distributed(specs[index], num_data, record, path, show_progress=progress is not None)
                    results[index] = read_record(specs[index].run_dir / RECORD_FILE)
                continue
            names = [specs[i].method for i in group]
            for i in group:
                prepared[i][1].extra["cohort"] = [n for n in names if n != specs[i].method]
            checkpoints = {specs[i].method: str(prepared[i][2][1]) for i in group if prepared[i][2]}
            members, member_records = [specs[i] for i in group], [prepared[i][1] for i in group]
            if members[0].world_size == 1:
                done = train_cohort(members, member_records, checkpoints, num_data, progress, hooks)
            else:
                train_distributed(
                    members[0],
                    num_data,
                    member_records[0],
                    None,
                    show_progress=progress is not None,
                    cohort=(members, member_records, checkpoints),
                )
                done = [read_record(spec.run_dir / RECORD_FILE) for spec in members]
            results.update(zip(group, done))
    return [results[index] for index in range(len(specs))]


__all__ = ["execute", "execute_cohort", "free_port", "prepare", "train_distributed"]
