"""The submitit jobs (one per run, one per teacher to train) and the command lines they re-parse."""

from __future__ import annotations

import os
import shlex
import socket
import time
from pathlib import Path
from typing import Callable

from submitit.helpers import Checkpointable

from benchmark.errors import UsageError
from benchmark.store.records import RECORD_FILE
from benchmark.sweep.cluster.base import poll_seconds, say
from benchmark.sweep.options import SweepOptions, parse_args


def job_options(options: SweepOptions) -> SweepOptions:
    """What every job runs: the sweep's options with --no-aggregate and no --cluster/--wait/--status."""
    return options.replace(cluster=None, wait=False, status=False, dry_run=False, print_config=False, no_aggregate=True)


def status_command(options: SweepOptions) -> str:
    """The --status command of this sweep, to print (the scheduler's resources left out)."""
    resources = dict(
        partition=None,
        gpus_per_run=None,
        cpus_per_run=None,
        time_limit=None,
        mem_gb=None,
        array_parallelism=None,
        slurm=(),
    )
    argv = options.to_argv(cluster=None, wait=False, status=True, dry_run=False, print_config=False, **resources)
    return "python benchmark/run.py " + shlex.join(argv)


def _job_options(options: SweepOptions | list[str]) -> SweepOptions:
    """The job's options; an argv list is what jobs queued before SweepOptions existed received."""
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    if not isinstance(options, SweepOptions):
        options = parse_args(list(options) + ["--no-aggregate"])
    return job_options(options)


def _this_job_id() -> str:
    try:
        from submitit import JobEnvironment

        return JobEnvironment().job_id
    except Exception:  # not inside a submitit job (called directly)
        return "?"


class RunJob(Checkpointable):
    """One planned run — or one cohort of runs, ``run_dir`` a list — as a submitit job: ``RunJob(cwd)(options, run_dir)``.

    With the sweep's :class:`SweepOptions`, calls :func:`benchmark.sweep.in_process.run_single` — the function
    every executor uses — in the submitter's working directory (relative paths mean the same).
    Returns its exit code: 0 completed (or done before), 1 failed, 3 held by another process.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd

    def __call__(self, options: SweepOptions, run_dir: str | list[str]) -> int:
        from benchmark.store.claims import holder_of
        from benchmark.store.records import read_record
        from benchmark.sweep.console import EXIT_HELD as HELD
        from benchmark.sweep.in_process import run_single
        from benchmark.sweep.plan import plan_sweep

        os.chdir(self.cwd)
        args = _job_options(options)
        run_dirs = [run_dir] if isinstance(run_dir, str) else list(run_dir)  # a list: one cohort
        say(f"job {_this_job_id()} on {socket.gethostname()}: {', '.join(run_dirs)}")
        waited = False
        for _attempt in range(100):
            try:
                code = run_single(args, run_dir)
            except UsageError as exc:
                say(f"error: {exc}")
                raise
            if code != HELD:
                return code
            if any(holder_of(d) for d in run_dirs):  # another job executes (some of) them: never twice
                return code
            records = [Path(d) / RECORD_FILE for d in run_dirs]
            if all(r.exists() and read_record(r).status == "completed" for r in records):
                return 0
            # Not the runs but their teacher was held (another job checking it, or a sweep training
            # it): wait until the teacher is free, then go again.
            sweep = plan_sweep(args)
            run = next(r for r in sweep.runs if Path(r.run_dir) == Path(run_dirs[0]))
            teacher_dir = sweep.stage.run_dir(run.pair.teacher)
            while holder_of(teacher_dir):
                if not waited:
                    say(f"teacher {run.pair.teacher} is held ({holder_of(teacher_dir)}); waiting for it")
                    waited = True
                time.sleep(poll_seconds("local") * 2)
            time.sleep(0.5 + (os.getpid() % 7) / 10)
        say(f"{', '.join(run_dirs)}: the teacher stayed busy; giving up (submit again)")
        return HELD

    def checkpoint(self, options: SweepOptions, run_dir: str | list[str]):  # noqa: D401 (submitit's hook)
        """Time limit or preemption: requeue this job unchanged; it resumes from the last epoch checkpoint."""
        say(f"checkpoint: requeueing {run_dir}; it resumes from its newest epoch checkpoint")
        return super().checkpoint(options, run_dir)


class TeacherJob(Checkpointable):
    """The teacher stage of a Slurm sweep: ``TeacherJob(cwd)(options, name)`` trains (or resumes) one teacher.

    It fails (and so cancels the runs that depend on it) when the teacher cannot be trained.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd

    def __call__(self, options: SweepOptions, name: str) -> float:
        from benchmark.sweep.in_process import preflight
        from benchmark.sweep.plan import plan_sweep

        os.chdir(self.cwd)
        args = _job_options(options)
        sweep = plan_sweep(args)
        sweep.pairs = [p for p in sweep.pairs if p.teacher == name]
        preflight(sweep)
        info = ensure_teacher(sweep.stage, name, say)
        return info.top1

    def checkpoint(self, options: SweepOptions, name: str):
        say(f"checkpoint: requeueing teacher {name}; it resumes from its newest epoch checkpoint")
        return super().checkpoint(options, name)


def ensure_teacher(stage, name: str, say: Callable[[str], object]):
    """``stage.ensure(name)``, waiting while another process holds the teacher (then it is done, or ours)."""
    from benchmark.data import DatasetNotFoundError
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld

    announced = False
    while True:
        try:
            return stage.ensure(name, say)
        except ClaimHeld as held:
            if not announced:
                say(f"teacher {name}: held by {held.holder}; waiting for it")
                announced = True
            time.sleep(poll_seconds("local"))
        except (DatasetNotFoundError, CheckpointError) as exc:
            raise UsageError(str(exc)) from None
