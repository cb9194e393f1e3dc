"""Submission: every run that is neither completed nor held by a live job, once; --wait; the end of a cluster sweep."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.sweep.cluster.backends import (
    LocalBackend,
    SlurmBackend,
    _check_resources,
    _job_log,
    _parse_slurm_options,
)
from benchmark.sweep.cluster.base import (
    EXIT_FAILED,
    JOBS_DIR,
    MARKER_FILE,
    poll_seconds,
    say,
)
from benchmark.sweep.cluster.jobs import (
    RunJob,
    TeacherJob,
    ensure_teacher,
    job_options,
    status_command,
)
from benchmark.sweep.cluster.markers import read_marker, write_marker
from benchmark.sweep.cluster.scheduler import SchedulerView
from benchmark.sweep.options import SweepOptions
from benchmark.sweep.status import (
    KINDS,
    Assessment,
    Row,
    _seconds_per_epoch,
    _view_for,
    assess,
    print_status,
    run_rows,
    teacher_rows,
)


def _classify_for_submission(
    rows: list[Row], view: SchedulerView, args
) -> tuple[list[Row], dict[str, list[str]], list[str]]:
    """Which runs to submit, and why the others are not (never twice)."""
    take: list[Row] = []
    skipped: dict[str, list[str]] = {}
    refused: list[str] = []
    for row in rows:
        a = row.assess(view)
        if a.kind == "refused":
            refused.append(a.detail)
            continue
        if a.kind == "failed" and not args.retry_failed:
            skipped.setdefault("failed (--retry-failed runs them again)", []).append(row.name)
            continue
        if a.kind == "lost" and a.record is not None and not args.resume:
            raise UsageError(f"{row.run_dir} holds an interrupted run; rerun with --resume to continue it")
        if a.submittable:
            take.append(row)
            continue
        reason = {"completed": "completed", "running": "running (held)"}.get(a.kind)
        if reason is None:
            reason = "queued, scheduler not answering" if a.job_state is None and a.marker else "queued"
        skipped.setdefault(reason, []).append(row.name)
    return take, skipped, refused


def _job_units(sweep, take: list[Row]) -> list[list[Row]]:
    """The jobs to submit: one per cohort of the runs to take (one per run when they train alone)."""
    from benchmark.sweep.plan import cohorts_of

    if sweep.solo_reason:
        return [[row] for row in take]
    by_dir = {row.run_dir: row for row in take}
    return [
        [by_dir[run.run_dir] for run in group]
        for group in cohorts_of([row.run for row in take], sweep.args.cohort_size)
    ]


def _job_argument(unit: list[Row]) -> str | list[str]:
    """What RunJob receives: a run directory, or the list of a cohort's."""
    return str(unit[0].run_dir) if len(unit) == 1 else [str(row.run_dir) for row in unit]


def _skipped_text(skipped: dict[str, list[str]]) -> str:
    order = [
        "completed",
        "running (held)",
        "queued",
        "queued, scheduler not answering",
        "failed (--retry-failed runs them again)",
    ]
    return ", ".join(f"{len(skipped[k])} {k}" for k in order if k in skipped)


def _prepare(args: SweepOptions):
    from benchmark.sweep.in_process import preflight, show_dry_run
    from benchmark.sweep.plan import plan_sweep

    _check_resources(args)
    if args.cluster == "slurm":
        _parse_slurm_options(args.slurm)
    elif args.partition or args.slurm or args.mem_gb:
        say("note: --partition, --mem-gb and --slurm apply to --cluster slurm only; ignored here")
    sweep = plan_sweep(args)
    if args.dry_run:
        show_dry_run(sweep)
        return sweep
    preflight(sweep)  # the data is there too (the jobs would all fail on it otherwise)
    return sweep


def submit_sweep(args: SweepOptions) -> int:
    """``--cluster local|slurm``: submit every run that is neither completed nor held by a live job."""
    sweep = _prepare(args)
    teachers, runs = teacher_rows(sweep), run_rows(sweep)
    take, skipped, refused = _classify_for_submission(runs, _view_for(runs), args)
    if args.dry_run:
        say(
            f"--cluster {args.cluster}: would submit {len(take)} run(s)"
            + (f"; not: {_skipped_text(skipped)}" if skipped else "")
        )
        for line in refused:
            say(f"  refused: {line}")
        return 0
    if refused:  # before anything is trained or submitted
        raise UsageError(refused[0])
    backend = SlurmBackend(args, sweep) if args.cluster == "slurm" else LocalBackend(args, sweep)
    job_opts, cwd = job_options(args), os.getcwd()
    dependency = _teacher_stage(backend, sweep, teachers, job_opts, cwd)

    take, skipped, refused = _classify_for_submission(runs, _view_for(runs), args)  # again: the teacher stage took time
    if refused:
        raise UsageError(refused[0])
    queue: list[list[Row]] = []
    units = _job_units(sweep, take)
    if not take:
        say(f"nothing to submit: {_skipped_text(skipped) or 'no runs'}")
    elif isinstance(backend, SlurmBackend):
        jobs = backend.submit(
            RunJob(cwd), [(job_opts, _job_argument(unit)) for unit in units], f"kd-{sweep.suite.name}", dependency
        )
        for unit, job in zip(units, jobs):
            for row in unit:  # every member of a cohort names its job
                write_marker(row.run_dir, "slurm", job.job_id, _job_log(backend.folder, job.job_id))
        array = jobs[0].job_id.split("_")[0]
        shape = (
            f"array job {array} (tasks 0-{len(jobs) - 1}, at most {min(len(jobs), backend.parallelism or 256)} at once)"
            if len(jobs) > 1
            else f"job {array}"
        )
        after = f", after {dependency}" if dependency else ""
        cohorts = f" ({len(units)} cohort job(s))" if len(units) < len(take) else ""
        say(f"submitted {len(take)} run(s){cohorts} as {shape}: {backend.describe()}{after}")
        if skipped:
            say(f"not submitted: {_skipped_text(skipped)}")
    else:
        queue = list(units)
        submitted = _local_fill(backend, queue, job_opts, cwd, args)
        say(f"submitted {len(submitted)} run(s) as local job(s) {', '.join(submitted) or '-'} ({backend.describe()})")
        if skipped:
            say(f"not submitted: {_skipped_text(skipped)}")
        if queue and not args.wait:
            say(
                f"{sum(len(unit) for unit in queue)} run(s) left for later: the local executor runs {backend.parallelism} at once and has no queue; "
                f"run the same command again when these have ended, or add --wait"
            )
            queue = []
    if not args.wait:
        say(f"logs in {Path(args.work_dir) / JOBS_DIR}/; watch with: {status_command(args)}")
        return 0
    return _wait(args, sweep, backend, teachers, runs, queue, job_opts, cwd)


def _teacher_stage(backend, sweep, teachers: list[Row], job_opts: SweepOptions, cwd: str) -> str | None:
    """Local: ensure every teacher here, now. Slurm: the dependency the runs' array needs, submitting teacher jobs."""
    if not teachers:
        return None
    if isinstance(backend, LocalBackend):
        say("teacher stage: in this process, before the runs are submitted (local jobs cannot depend on a job)")
        for row in teachers:
            ensure_teacher(sweep.stage, row.teacher, say)
        return None
    view = _view_for(teachers)
    needed, depends = [], []
    for row in teachers:
        if row.community is not None:
            continue  # a checkpoint: each job evaluates it (or reads its record) under the teacher's claim
        a = row.assess(view)
        if a.kind == "completed":
            continue
        if a.kind == "refused":
            raise UsageError(f"teacher {row.teacher}: {a.detail}")
        if a.kind == "failed":
            raise UsageError(f"teacher {row.teacher} failed to train ({a.record.failure}); see {row.run_dir}")
        if a.live_job:
            depends.append(a.marker.job_id)
            say(f"teacher {row.teacher}: already submitted ({a.detail}); the runs wait for it")
            continue
        needed.append(row)
    if needed:
        jobs = backend.submit(
            TeacherJob(cwd), [(job_opts, row.teacher) for row in needed], f"kd-{sweep.suite.name}-teachers"
        )
        for row, job in zip(needed, jobs):
            write_marker(row.run_dir, "slurm", job.job_id, _job_log(backend.folder, job.job_id), role="teacher")
            depends.append(job.job_id)
            say(
                f"teacher {row.teacher}: submitted as job {job.job_id} ({backend.describe()}); the runs' array waits for it"
            )
    return "afterok:" + ":".join(depends) if depends else None


def _local_fill(
    backend: LocalBackend, queue: list[list[Row]], job_opts: SweepOptions, cwd: str, args: SweepOptions
) -> list[str]:
    """Submit queued jobs (a run, or a cohort's runs) into free local slots, each run checked again
    just before (never twice)."""
    submitted = []
    for slot in backend.free_slots():
        while queue:
            unit = []
            for row in queue.pop(0):
                a = row.assess(SchedulerView())
                if a.submittable and not (a.kind == "failed" and not args.retry_failed):
                    unit.append(row)  # else taken meanwhile (another submission) or done
            if not unit:
                continue
            job = backend.submit_one(slot, RunJob(cwd), (job_opts, _job_argument(unit)))
            for row in unit:
                write_marker(row.run_dir, "local", job.job_id, _job_log(backend.folder, job.job_id))
            submitted.append(job.job_id)
            break
    return submitted


class LiveLine:
    """One progress line, redrawn in place on a terminal (printed when it changes otherwise)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last = ""

    def show(self, line: str) -> None:
        if line == self.last:
            return
        if self.tty:
            sys.stdout.write("\r" + line.ljust(len(self.last)))
            sys.stdout.flush()
        else:
            say(line)
        self.last = line

    def event(self, message: str) -> None:
        if self.tty and self.last:
            sys.stdout.write("\r" + " " * len(self.last) + "\r")
            self.last = ""
        say(message)

    def close(self) -> None:
        if self.tty and self.last:
            sys.stdout.write("\n")
            sys.stdout.flush()
        self.last = ""


def _wait(
    args,
    sweep,
    backend,
    teachers: list[Row],
    runs: list[Row],
    queue: list[list[Row]],
    job_opts: SweepOptions,
    cwd: str,
) -> int:
    """``--wait``: one live progress line until every run has ended, then the tables."""
    from benchmark.sweep.console import format_duration

    line = LiveLine()
    announced: dict[Path, str] = {}
    poll = poll_seconds(backend.name)
    while True:
        if isinstance(backend, LocalBackend):
            backend.free_slots()  # reaps the jobs that have ended
        if isinstance(backend, LocalBackend) and queue:
            for job_id in _local_fill(backend, queue, job_opts, cwd, args):
                line.event(f"submitted local job {job_id}")
        view = _view_for(teachers + runs)
        assessed = [(row, row.assess(view)) for row in runs]
        for row in teachers:
            a = row.assess(view)
            if a.kind in ("failed", "lost", "refused") and announced.get(row.run_dir) != a.kind:
                announced[row.run_dir] = a.kind
                line.event(f"{a.kind}: teacher {row.teacher}: {a.detail}")
        for row, a in assessed:
            final = a.kind in ("completed", "failed", "lost", "refused")
            if final and announced.get(row.run_dir) != a.kind:
                announced[row.run_dir] = a.kind
                line.event(f"{a.kind}: {row.name}: {a.detail}")
        queued = {row.run_dir for unit in queue for row in unit}
        waiting = [
            a
            for row, a in assessed
            if a.kind in ("running",) or (a.kind == "pending" and (a.live_job or row.run_dir in queued))
        ]
        counts = {kind: sum(a.kind == kind for _, a in assessed) for kind in KINDS}
        counts["failed"] += sum(a.kind == "refused" for _, a in assessed)
        per_epoch = _seconds_per_epoch(a for _, a in assessed)
        eta = "ETA –"
        if per_epoch and waiting:
            left = sum(max(a.epochs - a.epochs_done, 0) for a in waiting)
            at_once = max(1, min(len(waiting), getattr(backend, "parallelism", None) or len(waiting)))
            eta = "ETA " + format_duration(left * per_epoch / at_once)
        note = "" if view.slurm_answering in (None, True) else " (scheduler not answering)"
        line.show(
            f"[{counts['completed']}/{len(runs)} completed] {counts['running']} running, {counts['pending']} pending, "
            f"{counts['failed']} failed, {counts['lost']} lost | {eta}{note}"
        )
        if not waiting:
            break
        time.sleep(poll)
    line.close()
    if isinstance(backend, LocalBackend):
        # Every run has ended, but a job of ours may still be on its way: one submitted for a run
        # that another submission's job took meanwhile finds it held or done, and exits. Wait for
        # it, so that nothing of this sweep still claims run directories once --wait returns.
        while not all(job.done() for job in backend.jobs):
            time.sleep(poll)
    return _finish(args, [a for _, a in assessed])


def _finish(args, assessed: list[Assessment]) -> int:
    completed = sum(a.kind == "completed" for a in assessed)
    failed = sum(a.kind in ("failed", "refused") for a in assessed)
    lost = sum(a.kind == "lost" for a in assessed)
    not_run = len(assessed) - completed - failed - lost
    from benchmark.sweep.in_process import write_tables

    write_tables(args)
    say(f"{completed} run(s) completed, {failed} failed, {lost} lost" + (f", {not_run} not run" if not_run else ""))
    if lost or not_run:
        say(
            f"{lost + not_run} run(s) did not finish (their job ended first): submit the same command again to resume them"
        )
    return EXIT_FAILED if failed or lost or not_run else 0


__all__ = [
    "RunJob",
    "TeacherJob",
    "submit_sweep",
    "print_status",
    "assess",
    "read_marker",
    "write_marker",
    "SchedulerView",
    "job_options",
    "status_command",
    "MARKER_FILE",
    "JOBS_DIR",
]
