"""One run on N processes: torch DDP through MMEngine (``launcher='pytorch'``).

:func:`train_distributed` starts N processes on this machine with the torchrun-style
environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``),
so the user types one command. Each initialises the process group — gloo on CPU (MMEngine's
own initialisation assumes CUDA), nccl on GPU — and runs :func:`benchmark.runner.train` as
one rank; MMEngine wraps the model in DDP, shards the data with its ``DefaultSampler`` and
checkpoints on rank 0. What DDP changes per method is handled in the methods themselves
(CRD's synchronised bank, CKD's global contrast); the rest is gradient averaging.
"""
from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class DeviceAwareDistributedDataParallel(MMDistributedDataParallel):
    """MMEngine's DDP wrapper, also on CPU (gloo), where ``device_ids`` must be None."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs) -> None:
        on_cpu = all(not p.is_cuda for p in module.parameters())
        super().__init__(module=module, device_ids=None if on_cpu else device_ids, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(local_rank: int, world_size: int, port: int, spec, num_data: int, record: dict, checkpoint: str | None,
               show_progress: bool) -> None:
    import logging
    import warnings

    from benchmark.store.records import RunRecord
    from benchmark.runner import build_config, train

    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
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
        train(spec, build_config(spec, num_data), RunRecord.from_dict(record), checkpoint, progress)
    finally:
        dist.destroy_process_group()


def train_distributed(spec, num_data: int, record, checkpoint: str | None, show_progress: bool = False) -> None:
    """Train ``spec`` on ``spec.world_size`` local processes; rank 0 writes the record and files.

    A rank that raises (not a NaN loss: that is recorded as a failed run) makes this raise.
    """
    import torch.multiprocessing as mp

    if os.environ.get("WORLD_SIZE") not in (None, "1"):
        raise RuntimeError("already inside a distributed launch: run.py starts the --nproc processes itself")
    mp.start_processes(
        _rank_main,
        args=(spec.world_size, free_port(), spec, num_data, record.to_dict(), checkpoint, show_progress),
        nprocs=spec.world_size,
        join=True,
        start_method="spawn",
    )


__all__ = ["train_distributed", "DeviceAwareDistributedDataParallel", "free_port"]
