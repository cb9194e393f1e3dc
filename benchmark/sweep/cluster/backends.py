"""The executors: Slurm job arrays through submitit, or submitit's local processes."""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.sweep.cluster.base import (
    DEFAULT_TIME_LIMIT_MIN,
    JOBS_DIR,
    LOCAL_TIMEOUT_MIN,
    MAX_TIMEOUTS,
    SIGNAL_DELAY_S,
)
from benchmark.sweep.options import SweepOptions


def _parse_slurm_options(pairs: list[str]) -> tuple[dict, dict]:
    """``--slurm KEY=VALUE`` to submitit parameters, or to extra ``#SBATCH --key=value`` lines."""
    from submitit.slurm.slurm import _get_default_parameters

    managed = {
        "partition": "--partition",
        "time": "--time-limit",
        "timeout_min": "--time-limit",
        "mem": "--mem-gb",
        "mem_gb": "--mem-gb",
        "cpus_per_task": "--cpus-per-run",
        "gpus_per_node": "--gpus-per-run",
        "num_gpus": "--gpus-per-run",
        "array_parallelism": "--array-parallelism",
    }
    refused = {
        "nodes": "one node per run (multi-node runs are not offered)",
        "ntasks_per_node": "one task per run: --nproc runs inside it",
        "ntasks": "one task per run: --nproc runs inside it",
        "array": "the array is made by the sweep",
        "output": "job logs go to <work-dir>/jobs/",
        "error": "job logs go to <work-dir>/jobs/",
        "open_mode": "job logs are appended to",
        "signal": "the requeue signal is the sweep's (USR2@90)",
        "dependency": "the teacher dependency is the sweep's",
        "setup": "not a --slurm option",
        "teardown": "not a --slurm option",
        "additional_parameters": "give each as --slurm KEY=VALUE",
        "wrap": "the job runs the sweep's command",
    }
    valid = set(_get_default_parameters())
    params, extra = {}, {}
    for item in pairs:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise UsageError(f"--slurm {item!r}: expected KEY=VALUE, e.g. --slurm account=abc")
        if key in managed:
            raise UsageError(f"--slurm {item}: use {managed[key]} for that")
        if key in refused:
            raise UsageError(f"--slurm {item}: not allowed ({refused[key]})")
        parsed: object = value if sep else True
        if key in valid:
            if key == "signal_delay_s":
                try:
                    parsed = int(value)
                except ValueError:
                    raise UsageError(f"--slurm {item}: signal_delay_s must be seconds") from None
            params[key] = parsed
        else:
            extra[key] = parsed
    return params, extra


def _check_resources(args: SweepOptions) -> None:
    for option, value, least in (
        ("--gpus-per-run", args.gpus_per_run, 0),
        ("--cpus-per-run", args.cpus_per_run, 1),
        ("--time-limit", args.time_limit, 1),
        ("--mem-gb", args.mem_gb, 1),
        ("--array-parallelism", args.array_parallelism, 1),
    ):
        if value is not None and value < least:
            raise UsageError(f"{option} must be at least {least}")


@contextlib.contextmanager
def _repo_on_pythonpath():
    """Jobs unpickle benchmark.sweep.cluster.jobs.RunJob: the repository must be importable there (as in run.py)."""
    repo = str(Path(__file__).resolve().parent.parent)
    old = os.environ.get("PYTHONPATH")
    parts = [p for p in (old or "").split(os.pathsep) if p]
    if repo not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([repo] + parts)
    try:
        yield repo
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class SlurmBackend:
    name = "slurm"

    def __init__(self, args: SweepOptions, sweep) -> None:
        self.args, self.sweep = args, sweep
        self.folder = Path(args.work_dir).absolute() / JOBS_DIR
        self.gpus = args.gpus_per_run if args.gpus_per_run is not None else (0 if args.device == "cpu" else args.nproc)
        self.cpus = args.cpus_per_run
        self.time_limit = args.time_limit or DEFAULT_TIME_LIMIT_MIN
        self.params, self.extra = _parse_slurm_options(args.slurm)
        self.parallelism = args.array_parallelism
        self.jobs: list = []

    def executor(self, job_name: str, dependency: str | None = None):
        import submitit

        try:
            executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=MAX_TIMEOUTS)
        except RuntimeError:
            raise UsageError("--cluster slurm: no srun on PATH (run it where Slurm's commands are)") from None
        repo = str(Path(__file__).resolve().parent.parent)
        params = dict(
            job_name=job_name,
            time=self.time_limit,
            nodes=1,
            ntasks_per_node=1,
            signal_delay_s=SIGNAL_DELAY_S,
            setup=[f"export PYTHONPATH={shlex.quote(repo)}${{PYTHONPATH:+:$PYTHONPATH}}"],
        )
        if self.args.partition:
            params["partition"] = self.args.partition
        if self.gpus:
            params["gpus_per_node"] = self.gpus
        if self.cpus:
            params["cpus_per_task"] = self.cpus
        if self.args.mem_gb:
            params["mem"] = f"{self.args.mem_gb}GB"
        if self.parallelism:
            params["array_parallelism"] = self.parallelism
        params.update(self.params)
        extra = {"requeue": True, **self.extra}
        if dependency:
            params["dependency"] = dependency
            extra.setdefault("kill_on_invalid_dep", "yes")
        params["additional_parameters"] = extra
        try:
            executor.update_parameters(**params)
        except ValueError as exc:
            raise UsageError(f"--slurm: {str(exc).splitlines()[0]}") from None
        return executor

    def describe(self) -> str:
        parts = [
            f"partition {self.args.partition}" if self.args.partition else "default partition",
            f"{self.gpus} GPU(s)",
            f"{self.cpus} CPU(s)" if self.cpus else "default CPUs",
            f"{self.time_limit} min",
            f"{self.args.mem_gb} GB" if self.args.mem_gb else "default memory",
        ]
        return ", ".join(parts)

    def submit(self, fn, items: list[tuple], job_name: str, dependency: str | None = None) -> list:
        import submitit

        executor = self.executor(job_name, dependency)
        try:
            with executor.batch():
                jobs = [executor.submit(fn, *item) for item in items]
        except submitit.core.utils.FailedJobError as exc:
            raise UsageError(f"sbatch failed: {str(exc).strip().splitlines()[-1]}") from None
        except OSError as exc:
            raise UsageError(f"cannot run sbatch ({exc.strerror or exc})") from None
        self.jobs += jobs
        return jobs


class LocalBackend:
    """Local processes through submitit's LocalExecutor, at most ``parallelism`` at once.

    LocalExecutor has no queue: ``--wait`` keeps submitting as slots free up; without it,
    one slot's worth is submitted and the rest is left for the next submission (said so).
    """

    name = "local"

    def __init__(self, args: SweepOptions, sweep) -> None:
        import torch

        self.args, self.sweep = args, sweep
        self.folder = Path(args.work_dir).absolute() / JOBS_DIR
        device = sweep.stage.device
        self.gpus = (
            args.gpus_per_run if args.gpus_per_run is not None else (args.nproc if device.startswith("cuda") else 0)
        )
        self.device_count = torch.cuda.device_count() if self.gpus else 0
        if args.array_parallelism:
            self.parallelism = args.array_parallelism
        elif self.gpus:
            self.parallelism = max(1, self.device_count // self.gpus)
        else:
            per_run = args.cpus_per_run or sweep.suite.cpu_threads or 1
            self.parallelism = max(1, (os.cpu_count() or 1) // per_run)
        self.slots: list = [None] * self.parallelism
        self.jobs: list = []

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s) each" if self.gpus else "CPU"
        return f"at most {self.parallelism} at once on this machine, {gpus}"

    def free_slots(self) -> list[int]:
        free = []
        for k, job in enumerate(self.slots):
            if job is None or job.done():
                self.slots[k] = None
                free.append(k)
        return free

    def submit_one(self, slot: int, fn, item: tuple):
        import submitit

        executor = submitit.LocalExecutor(folder=self.folder, max_num_timeout=MAX_TIMEOUTS)
        params = dict(
            timeout_min=self.args.time_limit or LOCAL_TIMEOUT_MIN,
            signal_delay_s=SIGNAL_DELAY_S,
            tasks_per_node=1,
            gpus_per_node=self.gpus,
        )
        if self.gpus and self.device_count:
            params["visible_gpus"] = tuple((slot * self.gpus + i) % self.device_count for i in range(self.gpus))
        executor.update_parameters(**params)
        with _repo_on_pythonpath():
            job = executor.submit(fn, *item)
        self.slots[slot] = job
        self.jobs.append(job)
        return job


def _job_log(folder: Path, job_id: str) -> str:
    from submitit.core.utils import JobPaths

    return str(JobPaths(folder, job_id=job_id).stdout)
