"""The submitit jobs (one per run, one per teacher to train) and the command lines they re-parse."""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import time
from pathlib import Path
from typing import Callable

from submitit.helpers import Checkpointable

from benchmark.errors import UsageError

from benchmark.sweep.cluster.base import poll_seconds, say


def _defaults(args: argparse.Namespace) -> dict:
    from benchmark.sweep.options import parse_args

    return vars(parse_args(["--suite", str(args.suite), "--methods", str(args.methods)]))


def command_line(args: argparse.Namespace, **overrides) -> list[str]:
    """The argv that parses back to ``args`` (with ``overrides``), options at their default left out.

    Rebuilt from the parsed namespace (benchmark/run.py hands this module only that) and checked
    by parsing it again: a job re-parses exactly the sweep its submitter planned.
    """
    from benchmark.sweep.options import parse_args

    defaults = _defaults(args)
    values = {key: getattr(args, key, defaults[key]) for key in defaults}
    values.update(overrides)
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if key not in ("suite", "methods") and value == defaults[key]:
            continue
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + key.replace("_", "-"))  # BooleanOptionalAction (a store_true default is False: left out)
        elif isinstance(value, (list, tuple)):
            argv += [f"{flag}={item}" for item in value]
        else:
            argv.append(f"{flag}={value}")
    try:
        parsed = vars(parse_args(argv))
    except SystemExit:
        raise UsageError(f"cannot pass this command line on to the jobs: {shlex.join(argv)}") from None
    differ = sorted(key for key in values if parsed.get(key) != values[key])
    if differ:
        raise UsageError(f"cannot pass option(s) {', '.join(differ)} on to the jobs")
    return argv


def job_argv(args: argparse.Namespace) -> list[str]:
    """What every job re-parses: the sweep's command line, with --no-aggregate and no --cluster."""
    return command_line(args, cluster=None, wait=False, status=False, dry_run=False, no_aggregate=True)


def status_command(args: argparse.Namespace) -> str:
    resources = dict(partition=None, gpus_per_run=None, cpus_per_run=None, time_limit=None, mem_gb=None,
                     array_parallelism=None, slurm=[])
    argv = command_line(args, cluster=None, wait=False, status=True, dry_run=False, **resources)
    return "python benchmark/run.py " + shlex.join(argv)


def _job_args(argv: list[str]) -> argparse.Namespace:
    import warnings

    from benchmark.sweep.options import parse_args

    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    args = parse_args(list(argv) + ["--no-aggregate"])
    args.cluster, args.wait, args.status, args.dry_run, args.no_aggregate = None, False, False, False, True
    return args


# --------------------------------------------------------------------------- the jobs


def _this_job_id() -> str:
    try:
        from submitit import JobEnvironment

        return JobEnvironment().job_id
    except Exception:  # not inside a submitit job (called directly)
        return "?"


class RunJob(Checkpointable):
    """One planned run as a submitit job: ``RunJob(cwd)(argv, run_dir)``.

    Re-parses the sweep's argv and calls :func:`benchmark.sweep.in_process.run_single` — the function
    every executor uses — in the submitter's working directory (relative paths mean the same).
    Returns its exit code: 0 completed (or done before), 1 failed, 3 held by another process.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd

    def __call__(self, argv: list[str], run_dir: str) -> int:
        from benchmark.store.claims import holder_of
        from benchmark.store.records import read_record
        from benchmark.sweep.console import EXIT_HELD as HELD
        from benchmark.sweep.plan import plan_sweep
        from benchmark.sweep.in_process import run_single

        os.chdir(self.cwd)
        args = _job_args(argv)
        say(f"job {_this_job_id()} on {socket.gethostname()}: {run_dir}")
        waited = False
        for _attempt in range(100):
            try:
                code = run_single(args, run_dir)
            except UsageError as exc:
                say(f"error: {exc}")
                raise
            if code != HELD:
                return code
            holder = holder_of(run_dir)
            if holder:  # another job executes it: never twice
                return code
            record = Path(run_dir) / "record.json"
            if record.exists() and read_record(record).status == "completed":
                return 0
            # Not the run but its teacher was held (another job checking it, or a sweep training
            # it): wait until the teacher is free, then go again.
            sweep = plan_sweep(args)
            run = next(r for r in sweep.runs if Path(r.run_dir) == Path(run_dir))
            teacher_dir = sweep.stage.run_dir(run.pair.teacher)
            while holder_of(teacher_dir):
                if not waited:
                    say(f"teacher {run.pair.teacher} is held ({holder_of(teacher_dir)}); waiting for it")
                    waited = True
                time.sleep(poll_seconds("local") * 2)
            time.sleep(0.5 + (os.getpid() % 7) / 10)
        say(f"{run_dir}: its teacher stayed busy; giving up (submit again)")
        return HELD

    def checkpoint(self, argv: list[str], run_dir: str):  # noqa: D401 (submitit's hook)
        """Time limit or preemption: requeue this job unchanged; it resumes from the last epoch checkpoint."""
        say(f"checkpoint: requeueing {run_dir}; it resumes from its newest epoch checkpoint")
        return super().checkpoint(argv, run_dir)


class TeacherJob(Checkpointable):
    """The teacher stage of a Slurm sweep: ``TeacherJob(cwd)(argv, name)`` trains (or resumes) one teacher.

    It fails (and so cancels the runs that depend on it) when the teacher cannot be trained.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd

    def __call__(self, argv: list[str], name: str) -> float:
        from benchmark.sweep.plan import plan_sweep
        from benchmark.sweep.in_process import preflight

        os.chdir(self.cwd)
        args = _job_args(argv)
        sweep = plan_sweep(args)
        sweep.pairs = [p for p in sweep.pairs if p.teacher == name]
        preflight(sweep)
        info = ensure_teacher(sweep.stage, name, say)
        return info.top1

    def checkpoint(self, argv: list[str], name: str):
        say(f"checkpoint: requeueing teacher {name}; it resumes from its newest epoch checkpoint")
        return super().checkpoint(argv, name)


def ensure_teacher(stage, name: str, say: Callable[[str], object]):
    """``stage.ensure(name)``, waiting while another process holds the teacher (then it is done, or ours)."""
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld
    from benchmark.data import DatasetNotFoundError

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
