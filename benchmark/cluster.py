"""Scale-out: a sweep as one job per run through submitit, on Slurm or as local processes.

    python benchmark/run.py --suite cifar100 --methods ckd,dkd --cluster slurm --partition gpu --time-limit 720
    python benchmark/run.py --suite cifar100 --methods ckd,dkd --status        # from the run directories alone
    python benchmark/run.py --suite digits --methods kd --cluster local --wait

What a job executes is :func:`benchmark.sweep.run_single` — the same plan, teacher stage and
claim as the in-process sweep — so every guarantee of the suite holds per job: a run is
claimed before it is touched (a job finding it held exits 3 and leaves it alone, a job
finding it completed does nothing), and a requeued or resubmitted job resumes the run from
its last checkpoint, ending with the record of an uninterrupted run.

Submission never submits a run twice: a run is submitted only when it is neither completed
nor held by a live job — claimed right now, or submitted earlier and still pending or running
according to its submission marker ``<run_dir>/submitted.json`` and the scheduler. The marker
(cluster, job id, host, time, log file) is written atomically after each submission; it is
also what ``--status`` reads to tell a queued run from a lost one (its record says running,
but no live process holds it and no job for it is pending or running).

The teacher stage comes first. On Slurm, teachers that must be trained get their own job and
the runs' array waits for it (``--dependency=afterok:<teacher job>``; a teacher that fails
cancels the runs, ``--kill-on-invalid-dep=yes``). Locally — submitit's LocalExecutor has no
dependencies, and local jobs use the same machine as the submitting process anyway — the
teachers are trained (or evaluated) in this process before the runs are submitted: their
output stays in the terminal and nothing waits on a job that cannot express a dependency.

Slurm jobs get ``--signal=USR2@90`` and ``--requeue`` (submitit): at the signal (time limit
near, or preemption) the job's ``checkpoint()`` requeues it with the same arguments, and the
requeued job resumes the run from the newest epoch checkpoint. One node and one task per run;
``--nproc N`` is handled inside the job (N local DDP processes on the job's N GPUs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from submitit.helpers import Checkpointable

from benchmark.errors import UsageError

MARKER_FILE = "submitted.json"
JOBS_DIR = "jobs"  # under --work-dir: submitit's pickles, sbatch files and job logs (<job id>_0_log.out)
SIGNAL_DELAY_S = 90  # USR2 this long before the time limit: checkpoint() requeues the job
MAX_TIMEOUTS = 20  # requeues after a time-out before submitit gives up (preemptions do not count)
DEFAULT_TIME_LIMIT_MIN = 24 * 60
LOCAL_TIMEOUT_MIN = 365 * 24 * 60  # LocalExecutor kills a job after its timeout (2 minutes by default)
SCHEDULER_TIMEOUT_S = 30
FRESH_SUBMISSION_S = 300  # a job the scheduler does not list yet is taken as queued for this long
EXIT_FAILED, EXIT_HELD = 1, 3

# Slurm job states: still going (the run may yet execute) vs ended.
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "STOPPED"}
RUNNING, PENDING = "RUNNING", "PENDING"


def say(message: str) -> None:
    print(message, flush=True)


def poll_seconds(cluster: str) -> float:
    default = 30.0 if cluster == "slurm" else 1.0
    return float(os.environ.get("KD_CLUSTER_POLL_S", default))


# --------------------------------------------------------------------------- command lines


def _defaults(args: argparse.Namespace) -> dict:
    from benchmark.run import parse_args

    return vars(parse_args(["--suite", str(args.suite), "--methods", str(args.methods)]))


def command_line(args: argparse.Namespace, **overrides) -> list[str]:
    """The argv that parses back to ``args`` (with ``overrides``), options at their default left out.

    Rebuilt from the parsed namespace (benchmark/run.py hands this module only that) and checked
    by parsing it again: a job re-parses exactly the sweep its submitter planned.
    """
    from benchmark.run import parse_args

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

    from benchmark.run import parse_args

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

    Re-parses the sweep's argv and calls :func:`benchmark.sweep.run_single` — the function
    every executor uses — in the submitter's working directory (relative paths mean the same).
    Returns its exit code: 0 completed (or done before), 1 failed, 3 held by another process.
    """

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd

    def __call__(self, argv: list[str], run_dir: str) -> int:
        from benchmark.claims import holder_of
        from benchmark.records import read_record
        from benchmark.sweep import EXIT_HELD as HELD
        from benchmark.sweep import plan_sweep, run_single

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
        from benchmark.sweep import plan_sweep, preflight

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
    from benchmark.checkpoints import CheckpointError
    from benchmark.claims import ClaimHeld
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


# --------------------------------------------------------------------------- submission markers


@dataclass
class Marker:
    cluster: str  # "slurm" | "local"
    job_id: str
    host: str
    time: float
    log: str | None = None
    role: str = "run"
    previous: list = field(default_factory=list)

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))

    def describe(self) -> str:
        return f"job {self.job_id}" if self.cluster == "slurm" else f"local job {self.job_id} on {self.host}"


def read_marker(run_dir: str | os.PathLike) -> Marker | None:
    path = Path(run_dir) / MARKER_FILE
    try:
        data = json.loads(path.read_text())
        return Marker(str(data["cluster"]), str(data["job_id"]), str(data["host"]), float(data["time"]),
                      data.get("log"), data.get("role", "run"), list(data.get("previous", [])))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: as if never submitted (the run's claim still guards it)


def write_marker(run_dir: str | os.PathLike, cluster: str, job_id: str, log: str | None, role: str = "run") -> Marker:
    from benchmark.atomic import write_text

    old = read_marker(run_dir)
    previous = ([{"cluster": old.cluster, "job_id": old.job_id, "time": old.time}] + old.previous)[:10] if old else []
    marker = Marker(cluster, str(job_id), socket.gethostname(), time.time(), log, role, previous)
    data = {"cluster": marker.cluster, "job_id": marker.job_id, "host": marker.host, "time": marker.time,
            "submitted_at": marker.when, "log": log, "role": role, "previous": previous}
    write_text(Path(run_dir) / MARKER_FILE, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return marker


# --------------------------------------------------------------------------- the scheduler's view


def _local_alive(pid: int) -> bool:
    """A local job's controller (submitit.local._local) is alive: not gone, not a zombie, not another program."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"submitit" in proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return False
    return True


class SchedulerView:
    """Job states for submission markers: Slurm through sacct (or squeue), local jobs by their pid.

    ``state(marker)`` is a Slurm-like state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED`` ...,
    ``ENDED`` for a local job that is gone) or None when it cannot be known (scheduler not answering,
    a local job of another host).
    """

    def __init__(self) -> None:
        self.slurm: dict[str, str] = {}
        self.slurm_answering: bool | None = None  # None: never asked (no Slurm marker)
        self.slurm_error = ""

    def refresh(self, markers: Iterable[Marker]) -> "SchedulerView":
        ids = sorted({m.job_id.split("_")[0] for m in markers if m and m.cluster == "slurm"})
        self.slurm = {}
        if not ids:
            self.slurm_answering = None
            return self
        self.slurm_error = ""
        answer = self._sacct(ids)
        if answer is None:
            answer = self._squeue(ids)
        self.slurm_answering = answer is not None
        self.slurm = answer or {}
        return self

    def _run(self, command: list[str]) -> str | None:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        else:
            if done.returncode == 0:
                return done.stdout
            why = ((done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        self.slurm_error = "; ".join(filter(None, [self.slurm_error, f"{command[0]}: {why}"]))
        return None

    def _sacct(self, ids: list[str]) -> dict[str, str] | None:
        from submitit.slurm.slurm import SlurmInfoWatcher

        command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
        for job_id in ids:
            command += ["-j", job_id]
        out = self._run(command)
        if out is None:
            return None
        info = SlurmInfoWatcher().read_info(out)
        return {job: (stats.get("State") or "UNKNOWN").split()[0] for job, stats in info.items()}

    def _squeue(self, ids: list[str]) -> dict[str, str] | None:
        from submitit.slurm.slurm import read_job_id

        out = self._run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
        if out is None:
            return None
        states: dict[str, str] = {}
        for line in out.splitlines():
            if "|" not in line:
                continue
            job, state = (part.strip() for part in line.split("|", 1))
            for parts in read_job_id(job):
                states["_".join(parts[:2])] = state
                if len(parts) >= 3:
                    for index in range(int(parts[1]), int(parts[2]) + 1):
                        states[f"{parts[0]}_{index}"] = state
        # squeue lists only jobs that are still there: the others have ended
        for job_id in ids:
            states.setdefault(job_id, "ENDED")
        return states

    def state(self, marker: Marker | None) -> str | None:
        if marker is None:
            return None
        if marker.cluster == "local":
            if marker.host != socket.gethostname():
                return None
            try:
                return RUNNING if _local_alive(int(marker.job_id)) else "ENDED"
            except ValueError:
                return None
        if not self.slurm_answering:
            return None
        state = self.slurm.get(marker.job_id)
        if state is None and "_" in marker.job_id:
            state = self.slurm.get(marker.job_id.split("_")[0])  # squeue: an array no longer listed has ended
        if state is None:  # not listed: just submitted (accounting lags), or long gone
            return PENDING if time.time() - marker.time < FRESH_SUBMISSION_S else "ENDED"
        return state

    @staticmethod
    def live(state: str | None) -> bool:
        return state in LIVE_STATES


# --------------------------------------------------------------------------- the state of one run


@dataclass
class Assessment:
    kind: str  # completed | failed | running | pending | lost | refused
    detail: str
    record: object = None
    marker: Marker | None = None
    job_state: str | None = None
    holder: str | None = None
    epochs: int = 0
    epochs_done: int = 0
    wall_s: float | None = None

    @property
    def submittable(self) -> bool:
        """Neither completed nor held by a live (or possibly live) job: a submission may take it."""
        if self.kind in ("completed", "refused", "running"):
            return False
        if self.kind == "failed":
            return True  # final; a job queued again for it reads as pending
        if self.kind == "pending":
            return self.marker is None
        return True  # lost

    @property
    def live_job(self) -> bool:
        return self.marker is not None and (SchedulerView.live(self.job_state) or self.job_state is None)

    @property
    def eta_s(self) -> float | None:
        if not self.epochs_done or not self.wall_s:
            return None
        return self.wall_s / self.epochs_done * (self.epochs - self.epochs_done)


def _log_hint(marker: Marker | None) -> str:
    return f"; log {marker.log}" if marker and marker.log else ""


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def assess(run_dir: Path, recipe_hash: str, epochs: int, view: SchedulerView) -> Assessment:
    """Where one run stands, from its directory (record, claim, submission marker) and the scheduler's view.

    The record is read before the claim is looked at: a record that changed meanwhile (the run
    just started, or just ended) is read again, so an ending run is never taken for a lost one.
    """
    path = run_dir / "record.json"
    for _attempt in range(5):
        before = _signature(path)
        assessment = _assess_once(run_dir, recipe_hash, epochs, view)
        if _signature(path) == before:
            break
    return assessment


def _assess_once(run_dir: Path, recipe_hash: str, epochs: int, view: SchedulerView) -> Assessment:
    from benchmark.claims import holder_of
    from benchmark.records import RecordError, read_record
    from benchmark.sweep import format_duration

    record = None
    path = run_dir / "record.json"
    if path.exists():
        try:
            record = read_record(path)
        except RecordError as exc:
            return Assessment("refused", f"cannot trust {path} ({exc}); move it away to run again")
        if record.recipe_hash != recipe_hash:
            return Assessment("refused", f"{run_dir} holds a run of another recipe (hash {record.recipe_hash}, now {recipe_hash}); "
                                         f"use another --work-dir")
    done = len(record.curve) if record else 0
    total = record.epochs if record else epochs
    wall = record.wall_time_s if record else None
    marker = read_marker(run_dir)
    common = dict(record=record, marker=marker, epochs=total, epochs_done=done, wall_s=wall)
    if record is not None and record.status == "completed":
        best = f" (best {record.best_value():.2f} at epoch {record.best_epoch})" if record.best_epoch else ""
        return Assessment("completed", f"{record.metric_text()}{best}", **common)
    holder = holder_of(run_dir)
    job = f"{marker.describe()}, " if marker else ""
    if holder:
        if record is not None and record.curve:
            last = record.curve[-1]
            a = Assessment("running", "", holder=holder, **common)
            eta = a.eta_s
            a.detail = (f"epoch {last.epoch}/{total}, {record.metric_text(last)}, ETA {format_duration(eta) if eta is not None else '–'} "
                        f"({job}{holder})")
            return a
        return Assessment("running", f"starting ({job}{holder})", holder=holder, **common)
    state = view.state(marker)
    at = f" at epoch {done}/{total}" if record is not None else ""
    if record is not None and record.status == "failed":
        if marker and marker.time > path.stat().st_mtime and (state is None or SchedulerView.live(state)):
            return Assessment("pending", f"queued again ({marker.describe()}, {state or 'state unknown'}) after failing: "
                                         f"{record.failure}", job_state=state, **common)
        return Assessment("failed", record.failure or "failed", job_state=state, **common)
    resume = f" to resume{at}" if record is not None else ""
    if marker is not None:
        if state is None:
            why = ("scheduler not answering" if marker.cluster == "slurm"
                   else f"submitted on {marker.host}, cannot be checked from here")
            verb = "queued" if record is not None else "submitted"
            return Assessment("pending", f"{verb} ({marker.describe()}){resume}, {why}", job_state=None, **common)
        if state == RUNNING:
            return Assessment("pending", f"{marker.describe()} is starting{resume}", job_state=state, **common)
        if SchedulerView.live(state):
            return Assessment("pending", f"queued ({marker.describe()}, {state}){resume}", job_state=state, **common)
        ended = "ended" if state == "ENDED" else f"ended {state}"
        if record is not None:
            return Assessment("lost", f"record says running{at}, but {marker.describe()} {ended} and nothing holds it; "
                                      f"submit again to resume it{_log_hint(marker)}", job_state=state, **common)
        return Assessment("lost", f"{marker.describe()} {ended} before starting the run; submit again{_log_hint(marker)}",
                          job_state=state, **common)
    if record is not None:
        return Assessment("lost", f"record says running{at}, but no live job holds it; submit again to resume it", **common)
    return Assessment("pending", "not submitted", **common)


# --------------------------------------------------------------------------- rows: teachers and runs


@dataclass
class Row:
    kind: str  # "teacher" | "run"
    name: str  # what the user reads
    run_dir: Path
    recipe_hash: str
    epochs: int
    run: object = None  # PlannedRun for runs
    teacher: str | None = None  # teacher name for teacher rows
    community: Path | None = None

    def assess(self, view: SchedulerView) -> Assessment:
        return assess(self.run_dir, self.recipe_hash, self.epochs, view)


def teacher_rows(sweep) -> list[Row]:
    if not sweep.needs_teacher:
        return []
    rows = []
    for name in sweep.teacher_names:
        recipe = sweep.stage._recipe(name)
        rows.append(Row("teacher", f"teacher {name}", sweep.stage.run_dir(name), recipe.hash, recipe.schedule.epochs,
                        teacher=name, community=sweep.stage.community_path(name)))
    return rows


def run_rows(sweep) -> list[Row]:
    root = Path(sweep.args.work_dir)
    rows = []
    for run in sweep.runs:
        try:
            name = str(Path(run.run_dir).relative_to(root))
        except ValueError:
            name = str(run.run_dir)
        rows.append(Row("run", name, Path(run.run_dir), run.recipe.hash, run.recipe.schedule.epochs, run=run))
    return rows


def _view_for(rows: list[Row]) -> SchedulerView:
    return SchedulerView().refresh(read_marker(row.run_dir) for row in rows)


def _scheduler_line(view: SchedulerView) -> str:
    if view.slurm_answering is None:
        return "no Slurm job to ask about"
    if view.slurm_answering:
        return "Slurm answering"
    return f"Slurm not answering ({view.slurm_error or 'no sacct/squeue'}): job states unknown"


KINDS = ("completed", "running", "pending", "failed", "lost")


def _totals(assessments: list[Assessment]) -> str:
    counts = {kind: 0 for kind in KINDS}
    refused = 0
    for a in assessments:
        if a.kind == "refused":
            refused += 1
            counts["failed"] += 1
        else:
            counts[a.kind] += 1
    text = f"{len(assessments)} run(s): " + ", ".join(f"{counts[k]} {k}" for k in KINDS)
    return text + (f" ({refused} of the failed refused: unusable records)" if refused else "")


def print_status(args: argparse.Namespace) -> int:
    """``--status``: every planned run's state from the run directories (and the scheduler when it answers)."""
    from benchmark.sweep import format_duration, plan_sweep

    sweep = plan_sweep(args)
    teachers, runs = teacher_rows(sweep), run_rows(sweep)
    view = _view_for(teachers + runs)
    say(f"suite {sweep.suite.name}, recipe {sweep.recipe}: {len(runs)} planned run(s) in {args.work_dir} ({_scheduler_line(view)})")
    if teachers:
        say("teachers:")
        for row in teachers:
            if row.community is not None:
                a = row.assess(view)
                measured = f", {a.record.metric_text()}" if a.kind == "completed" else ", evaluated by the first run that needs it"
                say(f"  {row.teacher}: checkpoint {row.community}{measured}")
                continue
            a = row.assess(view)
            say(f"  [{a.kind:>9}] {row.teacher}: {a.detail}")
    say("runs:")
    assessments = []
    for row in runs:
        a = row.assess(view)
        assessments.append(a)
        say(f"  [{a.kind:>9}] {row.name}: {a.detail}")
    say(_totals(assessments))
    remaining = [a for a in assessments if a.kind in ("running", "pending", "lost")]
    per_epoch = _seconds_per_epoch(assessments)
    if remaining and per_epoch:
        left = sum(max(a.epochs - a.epochs_done, 0) for a in remaining)
        say(f"training left: {left} epoch(s), about {format_duration(left * per_epoch)} of run time at the measured "
            f"{per_epoch:.1f}s per epoch (divide by the jobs running at once)")
    lost = sum(a.kind == "lost" for a in assessments)
    if lost:
        say(f"{lost} lost run(s): submit the same sweep again (--cluster ...) to resume them")
    return 0


def _seconds_per_epoch(assessments: Iterable[Assessment]) -> float | None:
    seconds = epochs = 0.0
    for a in assessments:
        if a.wall_s and a.epochs_done:
            seconds += a.wall_s
            epochs += a.epochs_done
    return seconds / epochs if epochs else None


# --------------------------------------------------------------------------- executors


def _parse_slurm_options(pairs: list[str]) -> tuple[dict, dict]:
    """``--slurm KEY=VALUE`` to submitit parameters, or to extra ``#SBATCH --key=value`` lines."""
    from submitit.slurm.slurm import _get_default_parameters

    managed = {"partition": "--partition", "time": "--time-limit", "timeout_min": "--time-limit", "mem": "--mem-gb",
               "mem_gb": "--mem-gb", "cpus_per_task": "--cpus-per-run", "gpus_per_node": "--gpus-per-run",
               "num_gpus": "--gpus-per-run", "array_parallelism": "--array-parallelism"}
    refused = {"nodes": "one node per run (multi-node runs are not offered)", "ntasks_per_node": "one task per run: --nproc runs inside it",
               "ntasks": "one task per run: --nproc runs inside it", "array": "the array is made by the sweep",
               "output": "job logs go to <work-dir>/jobs/", "error": "job logs go to <work-dir>/jobs/",
               "open_mode": "job logs are appended to", "signal": "the requeue signal is the sweep's (USR2@90)",
               "dependency": "the teacher dependency is the sweep's", "setup": "not a --slurm option", "teardown": "not a --slurm option",
               "additional_parameters": "give each as --slurm KEY=VALUE", "wrap": "the job runs the sweep's command"}
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


def _check_resources(args: argparse.Namespace) -> None:
    for option, value, least in (("--gpus-per-run", args.gpus_per_run, 0), ("--cpus-per-run", args.cpus_per_run, 1),
                                 ("--time-limit", args.time_limit, 1), ("--mem-gb", args.mem_gb, 1),
                                 ("--array-parallelism", args.array_parallelism, 1)):
        if value is not None and value < least:
            raise UsageError(f"{option} must be at least {least}")


@contextlib.contextmanager
def _repo_on_pythonpath():
    """Jobs unpickle benchmark.cluster.RunJob: the repository must be importable there (as in run.py)."""
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

    def __init__(self, args: argparse.Namespace, sweep) -> None:
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
        params = dict(job_name=job_name, time=self.time_limit, nodes=1, ntasks_per_node=1, signal_delay_s=SIGNAL_DELAY_S,
                      setup=[f"export PYTHONPATH={shlex.quote(repo)}${{PYTHONPATH:+:$PYTHONPATH}}"])
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
        parts = [f"partition {self.args.partition}" if self.args.partition else "default partition",
                 f"{self.gpus} GPU(s)", f"{self.cpus} CPU(s)" if self.cpus else "default CPUs",
                 f"{self.time_limit} min", f"{self.args.mem_gb} GB" if self.args.mem_gb else "default memory"]
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

    def __init__(self, args: argparse.Namespace, sweep) -> None:
        import torch

        self.args, self.sweep = args, sweep
        self.folder = Path(args.work_dir).absolute() / JOBS_DIR
        device = sweep.stage.device
        self.gpus = args.gpus_per_run if args.gpus_per_run is not None else (args.nproc if device.startswith("cuda") else 0)
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
        params = dict(timeout_min=self.args.time_limit or LOCAL_TIMEOUT_MIN, signal_delay_s=SIGNAL_DELAY_S, tasks_per_node=1,
                      gpus_per_node=self.gpus)
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


def _classify_for_submission(rows: list[Row], view: SchedulerView, args) -> tuple[list[Row], dict[str, list[str]], list[str]]:
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


def _skipped_text(skipped: dict[str, list[str]]) -> str:
    order = ["completed", "running (held)", "queued", "queued, scheduler not answering", "failed (--retry-failed runs them again)"]
    return ", ".join(f"{len(skipped[k])} {k}" for k in order if k in skipped)


def _prepare(args: argparse.Namespace):
    from benchmark.sweep import plan_sweep, preflight, print_plan

    _check_resources(args)
    if args.cluster == "slurm":
        _parse_slurm_options(args.slurm)
    elif args.partition or args.slurm or args.mem_gb:
        say("note: --partition, --mem-gb and --slurm apply to --cluster slurm only; ignored here")
    sweep = plan_sweep(args)
    if args.dry_run:
        print_plan(sweep.suite, sweep.recipe, sweep.pairs, sweep.runs, {name: sweep.stage.describe(name) for name in sweep.teacher_names})
        return sweep
    preflight(sweep)
    from benchmark.data import DatasetNotFoundError

    try:
        sweep.stage.num_train_samples()  # the data is there (the jobs would all fail on it otherwise)
    except DatasetNotFoundError as exc:
        raise UsageError(str(exc)) from None
    return sweep


def submit_sweep(args: argparse.Namespace) -> int:
    """``--cluster local|slurm``: submit every run that is neither completed nor held by a live job."""
    sweep = _prepare(args)
    teachers, runs = teacher_rows(sweep), run_rows(sweep)
    take, skipped, refused = _classify_for_submission(runs, _view_for(runs), args)
    if args.dry_run:
        say(f"--cluster {args.cluster}: would submit {len(take)} run(s)" + (f"; not: {_skipped_text(skipped)}" if skipped else ""))
        for line in refused:
            say(f"  refused: {line}")
        return 0
    if refused:  # before anything is trained or submitted
        raise UsageError(refused[0])
    backend = SlurmBackend(args, sweep) if args.cluster == "slurm" else LocalBackend(args, sweep)
    argv, cwd = job_argv(args), os.getcwd()
    dependency = _teacher_stage(backend, sweep, teachers, argv, cwd)

    take, skipped, refused = _classify_for_submission(runs, _view_for(runs), args)  # again: the teacher stage took time
    if refused:
        raise UsageError(refused[0])
    queue: list[Row] = []
    if not take:
        say(f"nothing to submit: {_skipped_text(skipped) or 'no runs'}")
    elif isinstance(backend, SlurmBackend):
        jobs = backend.submit(RunJob(cwd), [(argv, str(row.run_dir)) for row in take], f"kd-{sweep.suite.name}", dependency)
        for row, job in zip(take, jobs):
            write_marker(row.run_dir, "slurm", job.job_id, _job_log(backend.folder, job.job_id))
        array = jobs[0].job_id.split("_")[0]
        shape = f"array job {array} (tasks 0-{len(jobs) - 1}, at most {min(len(jobs), backend.parallelism or 256)} at once)" if len(jobs) > 1 else f"job {array}"
        after = f", after {dependency}" if dependency else ""
        say(f"submitted {len(take)} run(s) as {shape}: {backend.describe()}{after}")
        if skipped:
            say(f"not submitted: {_skipped_text(skipped)}")
    else:
        queue = list(take)
        submitted = _local_fill(backend, queue, argv, cwd, args)
        say(f"submitted {len(submitted)} run(s) as local job(s) {', '.join(submitted) or '-'} ({backend.describe()})")
        if skipped:
            say(f"not submitted: {_skipped_text(skipped)}")
        if queue and not args.wait:
            say(f"{len(queue)} run(s) left for later: the local executor runs {backend.parallelism} at once and has no queue; "
                f"run the same command again when these have ended, or add --wait")
            queue = []
    if not args.wait:
        say(f"logs in {Path(args.work_dir) / JOBS_DIR}/; watch with: {status_command(args)}")
        return 0
    return _wait(args, sweep, backend, teachers, runs, queue, argv, cwd)


def _teacher_stage(backend, sweep, teachers: list[Row], argv: list[str], cwd: str) -> str | None:
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
        jobs = backend.submit(TeacherJob(cwd), [(argv, row.teacher) for row in needed], f"kd-{sweep.suite.name}-teachers")
        for row, job in zip(needed, jobs):
            write_marker(row.run_dir, "slurm", job.job_id, _job_log(backend.folder, job.job_id), role="teacher")
            depends.append(job.job_id)
            say(f"teacher {row.teacher}: submitted as job {job.job_id} ({backend.describe()}); the runs' array waits for it")
    return "afterok:" + ":".join(depends) if depends else None


def _local_fill(backend: LocalBackend, queue: list[Row], argv: list[str], cwd: str, args) -> list[str]:
    """Submit queued runs into free local slots, each checked again just before (never twice)."""
    submitted = []
    for slot in backend.free_slots():
        while queue:
            row = queue.pop(0)
            a = row.assess(SchedulerView())
            if not a.submittable or (a.kind == "failed" and not args.retry_failed):
                continue  # taken meanwhile (another submission) or done: nothing to do here
            job = backend.submit_one(slot, RunJob(cwd), (argv, str(row.run_dir)))
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


def _wait(args, sweep, backend, teachers: list[Row], runs: list[Row], queue: list[Row], argv: list[str], cwd: str) -> int:
    """``--wait``: one live progress line until every run has ended, then the tables."""
    from benchmark.sweep import format_duration

    line = LiveLine()
    announced: dict[Path, str] = {}
    poll = poll_seconds(backend.name)
    while True:
        if isinstance(backend, LocalBackend):
            backend.free_slots()  # reaps the jobs that have ended
        if isinstance(backend, LocalBackend) and queue:
            for job_id in _local_fill(backend, queue, argv, cwd, args):
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
        queued = {row.run_dir for row in queue}
        waiting = [a for row, a in assessed
                   if a.kind in ("running",) or (a.kind == "pending" and (a.live_job or row.run_dir in queued))]
        counts = {kind: sum(a.kind == kind for _, a in assessed) for kind in KINDS}
        counts["failed"] += sum(a.kind == "refused" for _, a in assessed)
        per_epoch = _seconds_per_epoch(a for _, a in assessed)
        eta = "ETA –"
        if per_epoch and waiting:
            left = sum(max(a.epochs - a.epochs_done, 0) for a in waiting)
            at_once = max(1, min(len(waiting), getattr(backend, "parallelism", None) or len(waiting)))
            eta = "ETA " + format_duration(left * per_epoch / at_once)
        note = "" if view.slurm_answering in (None, True) else " (scheduler not answering)"
        line.show(f"[{counts['completed']}/{len(runs)} completed] {counts['running']} running, {counts['pending']} pending, "
                  f"{counts['failed']} failed, {counts['lost']} lost | {eta}{note}")
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
    if not args.no_aggregate:
        from benchmark.aggregate import aggregate

        summary = aggregate([Path(args.work_dir)], Path(args.tables), Path(args.reports))
        say(f"tables in {args.tables}/, plots and report in {args.reports}/ ({summary})")
    say(f"{completed} run(s) completed, {failed} failed, {lost} lost" + (f", {not_run} not run" if not_run else ""))
    if lost or not_run:
        say(f"{lost + not_run} run(s) did not finish (their job ended first): submit the same command again to resume them")
    return EXIT_FAILED if failed or lost or not_run else 0


__all__ = ["RunJob", "TeacherJob", "submit_sweep", "print_status", "assess", "read_marker", "write_marker",
           "SchedulerView", "job_argv", "status_command", "MARKER_FILE", "JOBS_DIR"]
