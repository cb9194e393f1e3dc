"""The in-process executor: preflight, the teacher stage, every run under its claim, the closing summary."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.store.claims import claim, holder_of
from benchmark.store.records import RECORD_FILE, write_record
from benchmark.sweep.console import EXIT_FAILED, EXIT_HELD, Progress, say
from benchmark.sweep.options import SweepOptions
from benchmark.sweep.plan import BASELINE, PlannedRun, Sweep, plan_sweep
from benchmark.sweep.state import existing_state
from benchmark.sweep.teachers import TeacherInfo


def unwritable_dir(path: str, option: str) -> str | None:
    """Why ``path`` cannot be created and written, in one line, or None; creates nothing (a look only)."""
    target = Path(path)
    existing = next((p for p in (target, *target.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{option} {path}: cannot create or write there ({existing} is not a folder)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{option} {path}: cannot create or write there (Permission denied)"
    return None


def check_writable_dir(path: str, option: str) -> None:
    """Create ``path`` if needed and prove a file can be written there; else one-line UsageError."""
    from benchmark.store.atomic import write_text

    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = write_text(target / f".write-test-{os.getpid()}", "")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"{option} {path}: cannot create or write there ({exc.strerror or type(exc).__name__})"
        ) from None


@dataclass
class SweepOutcome:
    failed: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    completed: int = 0


def preflight(sweep: Sweep) -> None:
    """Everything that can be checked is checked before anything runs.

    All problems are reported together (one line each, the data root first: without data no
    teacher can be trained and no run can start); the size of the training split is kept.
    """
    from benchmark.data import DatasetNotFoundError

    args = sweep.args
    problems = []
    try:
        sweep.num_data = sweep.stage.num_train_samples()
    except DatasetNotFoundError as exc:
        problems.append(str(exc))
    if args.sync_bn and (args.nproc == 1 or sweep.stage.device == "cpu"):
        problems.append("--sync-bn needs --nproc > 1 on CUDA devices (torch's SyncBatchNorm has no CPU kernels)")
    if sweep.needs_teacher:
        problems.append(sweep.stage.missing_teacher_files(sweep.teacher_names))
    outputs = [(args.work_dir, "--work-dir")] + (
        [] if args.no_aggregate else [(args.tables, "--tables"), (args.reports, "--reports")]
    )
    problems += [unwritable_dir(path, option) for path, option in outputs]  # looks only: nothing is created yet
    problems = [problem for problem in problems if problem]
    if problems:
        raise UsageError(*problems)
    for path, option in outputs:  # now created, and proven writable with a probe file
        check_writable_dir(path, option)
    if sweep.needs_teacher:
        sweep.stage.announce_training(sweep.teacher_names)
    if not args.verbose:
        logging.getLogger("mmengine").setLevel(logging.ERROR)
    if sweep.suite.cpu_threads and sweep.stage.device == "cpu":
        import torch

        torch.set_num_threads(sweep.suite.cpu_threads)


def prepare_teachers(sweep: Sweep) -> tuple[int, dict, dict]:
    """Size of the training split, the teachers ready for use, and those another sweep holds."""
    from benchmark.data import DatasetNotFoundError
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld

    teachers, held_teachers = {}, {}
    try:
        num_data = sweep.num_data if sweep.num_data is not None else sweep.stage.num_train_samples()
        if sweep.needs_teacher:
            for name in sweep.teacher_names:
                try:
                    teachers[name] = sweep.stage.ensure(name, say)
                except ClaimHeld as held:
                    held_teachers[name] = held.holder
                    say(f"teacher {name}: held by another sweep ({held.holder}); the runs that need it are skipped")
    except (DatasetNotFoundError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    return num_data, teachers, held_teachers


def execute_claimed(
    runs: list[PlannedRun],
    prefixes: list[str],
    sweep: Sweep,
    teachers: dict,
    held_teachers: dict,
    num_data: int,
    progress: "Progress",
    outcome: SweepOutcome,
) -> None:
    """A run — or the runs of one cohort — each under its own claim; those still to train train
    (together). Every executor (in-process, local processes, Slurm) comes through here."""
    from benchmark.data import DatasetNotFoundError
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld

    def skip_held(run: PlannedRun, message: str) -> None:
        say(message)
        outcome.held.append(run.label)
        progress.finished(run, None)

    with contextlib.ExitStack() as claims:
        members = []
        for run, prefix in zip(runs, prefixes):
            if run.method != BASELINE and run.pair.teacher in held_teachers:
                skip_held(
                    run, f"{prefix}: its teacher is held by another sweep ({held_teachers[run.pair.teacher]}); skipped"
                )
                continue
            try:
                claims.enter_context(claim(run.run_dir, say))
            except ClaimHeld as held:
                skip_held(run, f"{prefix}: held by another sweep ({held.holder}); skipped")
                continue
            try:
                admitted = admit(run, prefix, sweep.args, sweep.suite, sweep.stage, teachers, progress, outcome)
            except (CheckpointError, DatasetNotFoundError) as exc:
                raise UsageError(str(exc)) from None
            if admitted is not None:
                members.append((run, prefix, *admitted))
        if members:
            train_admitted(members, sweep.args, num_data, progress, outcome)


def train_admitted(members: list[tuple], args, num_data: int, progress: "Progress", outcome: SweepOutcome) -> None:
    """Claimed runs to train: ``(run, prefix, spec, record, resume)`` each; one alone, or a cohort."""
    from benchmark.data import DatasetNotFoundError
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.train import execute_cohort

    runs = [member[0] for member in members]
    if len(members) == 1:
        say(f"{members[0][1]}: {'resuming' if members[0][4] else 'starting'} | {progress.eta()}")
    else:
        say(
            f"cohort {runs[0].pair.name} seed{runs[0].seed}: "
            + ", ".join(f"{m[0].method} ({'resuming' if m[4] else 'starting'})" for m in members)
            + f" in one process | {progress.eta()}"
        )
    started = time.perf_counter()
    try:
        records = execute_cohort(
            [m[2] for m in members],
            num_data,
            [m[3] for m in members],
            [m[4] for m in members],
            progress=progress_printer(args, runs),
            say=say,
        )
    except (UsageError, CheckpointError, DatasetNotFoundError):
        raise  # the user's to fix: one line, and the sweep stops
    except Exception as exc:  # a bug or a crash: every record it took says so; the sweep goes on
        records = [m[3] for m in members]
        for run, record in zip(runs, records):
            crashed(run, record, exc)
    share = (time.perf_counter() - started) / len(members)  # for the ETA: the time per run
    for (run, prefix, *_rest), record in zip(members, records):
        report(run, prefix, record, share, progress, outcome)


def write_tables(args: SweepOptions) -> None:
    """The end of every sweep (in process or on a cluster): tables, plots and the report, unless --no-aggregate."""
    if args.no_aggregate:
        return
    from benchmark.report.aggregate import aggregate

    summary = aggregate([Path(args.work_dir)], Path(args.tables), Path(args.reports))
    say(f"tables in {args.tables}/, plots and report in {args.reports}/ ({summary})")


def finish(sweep: Sweep, outcome: SweepOutcome) -> int:
    """Tables and the closing summary; the exit code says what happened."""
    args = sweep.args
    write_tables(args)
    say(
        f"{outcome.completed} run(s) completed, {len(outcome.failed)} failed, {len(outcome.held)} held by another sweep"
    )
    if outcome.failed:
        say(f"{len(outcome.failed)} run(s) failed: " + "; ".join(outcome.failed))
        return EXIT_FAILED
    if outcome.held:
        say(f"{len(outcome.held)} run(s) held by another sweep: run the same command again once it has finished")
        return EXIT_HELD
    return 0


def print_plan(suite, recipe: str, pairs, runs: list[PlannedRun], teacher_plan: dict[str, str]) -> None:
    say(f"suite {suite.name}: {suite.description}")
    say(
        f"recipe {recipe}; {len(pairs)} pair(s) x {len({r.method for r in runs})} method(s) x {len({r.seed for r in runs})} seed(s) = {len(runs)} run(s)"
    )
    say("teachers:")
    for name, how in teacher_plan.items():
        say(f"  {name}: {how}")
    say("runs:")
    for run in runs:
        state, _ = existing_state(run)
        holder = holder_of(run.run_dir)
        held = f" (held by {holder})" if holder else ""
        say(f"  [{state:>11}] {run.label} -> {run.run_dir}{held}")


def show_dry_run(sweep: Sweep) -> None:
    """``--dry-run``: the plan with every run's state; with ``--print-config`` each run's complete config."""
    print_plan(
        sweep.suite,
        sweep.recipe,
        sweep.pairs,
        sweep.runs,
        {name: sweep.stage.describe(name) for name in sweep.teacher_names},
    )
    if sweep.solo_reason:
        say(f"every run trains alone ({sweep.solo_reason})")
    else:
        cohorts = sweep.cohorts()
        say(
            f"{len(cohorts)} lockstep cohort(s) of up to {max(len(c) for c in cohorts)} run(s): one data stream and "
            "one teacher forward per batch for the methods of a (pair, seed); --no-cohort trains each alone"
        )
    if sweep.args.print_config:
        print_configs(sweep)


def run_sweep(args: SweepOptions) -> int:
    """The in-process executor: teachers, then every planned run in turn, then the tables."""
    sweep = plan_sweep(args)
    if args.dry_run:
        show_dry_run(sweep)
        return 0
    preflight(sweep)
    num_data, teachers, held_teachers = prepare_teachers(sweep)
    outcome, progress = SweepOutcome(), Progress(sweep.runs)
    cohorts = sweep.cohorts()
    together = f"; {len(cohorts)} cohort(s)" if not sweep.solo_reason else ""
    say(f"{len(sweep.runs)} run(s) planned in {args.work_dir}{together}")
    numbers = {id(run): number for number, run in enumerate(sweep.runs, 1)}
    for cohort in cohorts:
        prefixes = [f"[{numbers[id(run)]}/{len(sweep.runs)}] {run.label}" for run in cohort]
        execute_claimed(cohort, prefixes, sweep, teachers, held_teachers, num_data, progress, outcome)
    return finish(sweep, outcome)


def run_single(args: SweepOptions, run_dir: str | list[str]) -> int:
    """Execute the planned run whose directory is ``run_dir`` — or the cohort of those listed —
    (the job of a cluster executor).

    The same plan, teacher stage and claims as the in-process sweep; returns 0 completed (or done
    before), 1 failed, 3 held by another process.
    """
    sweep = plan_sweep(args)
    wanted = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
    matching = [run for run in sweep.runs if Path(run.run_dir) in wanted]
    missing = sorted(set(map(str, wanted)) - {str(Path(run.run_dir)) for run in matching})
    if missing:
        raise UsageError(f"{missing[0]} is not a run of this sweep's plan")
    sweep.runs = matching
    sweep.pairs = list({id(run.pair): run.pair for run in matching}.values())
    preflight(sweep)
    num_data, teachers, held_teachers = prepare_teachers(sweep)
    outcome, progress = SweepOutcome(), Progress(matching)
    labels = [run.label for run in matching]
    execute_claimed(matching, labels, sweep, teachers, held_teachers, num_data, progress, outcome)
    return EXIT_FAILED if outcome.failed else EXIT_HELD if outcome.held else 0


def run_spec(run: PlannedRun, args, suite, stage, teacher=None):
    """The RunSpec of a planned run: what the command line and the teacher stage say about it."""
    from benchmark.train import RunSpec

    return RunSpec(
        suite=suite,
        pair=run.pair,
        method=run.method,
        recipe=run.recipe,
        seed=run.seed,
        run_dir=run.run_dir,
        data_root=args.data_root,
        device=stage.device,
        num_workers=args.num_workers,
        deterministic=args.deterministic,
        teacher_checkpoint=teacher.path if teacher else None,
        teacher_checkpoint_sha256=teacher.sha256 if teacher else None,
        teacher_top1=teacher.top1 if teacher else None,
        extra={**run.extra, **({"teacher_source": teacher.source} if teacher else {})},
        log_level="INFO" if args.verbose else "ERROR",
        world_size=args.nproc,
        sync_bn=args.sync_bn,
        tensorboard=args.tensorboard,
    )


def print_configs(sweep: Sweep) -> None:
    """``--print-config``: each planned run's complete MMEngine config, as the run would use it.

    No data or teacher file is read: the teacher's path is where the sweep would find or train
    it, and the training-set size (CRD's memory) is counted from the data when the run starts.
    """
    from benchmark.train import STUDENT_EXPORT, build_config

    for run in sweep.runs:
        teacher = None
        if run.method != BASELINE:
            name = run.pair.teacher
            path = sweep.stage.community_path(name) or sweep.stage.run_dir(name) / STUDENT_EXPORT
            teacher = TeacherInfo(path=str(path), sha256="", top1=None, source="planned")
        cfg = build_config(run_spec(run, sweep.args, sweep.suite, sweep.stage, teacher), None, check_files=False)
        say(f"# ---- {run.label} -> {run.run_dir}")
        say("# num_data (the training-set size) is counted from the data when the run starts")
        say(cfg.pretty_text)


def admit(
    run: PlannedRun, prefix: str, args, suite, stage, teachers: dict, progress: "Progress", outcome: SweepOutcome
):
    """A claimed run's state decides: skip it (None) or train it (its spec, record and whether it resumes)."""
    from benchmark.train import new_record

    state, record = existing_state(run)  # read only now that the run is ours
    if state == "completed":
        say(f"{prefix}: done before ({record.headline(best=False)}), skipped")
        outcome.completed += 1
        progress.finished(run, None)
        return None
    if state == "failed" and not args.retry_failed:
        say(f"{prefix}: failed before ({record.failure}); --retry-failed runs it again")
        outcome.failed.append(run.label)
        progress.finished(run, None)
        return None
    if state == "interrupted" and not args.resume:
        raise UsageError(f"{run.run_dir} holds an interrupted run; rerun with --resume to continue it")
    if state == "failed":
        (run.run_dir / RECORD_FILE).replace(run.run_dir / "record.failed.json")
    teacher = teachers.get(run.pair.teacher) if run.method != BASELINE else None
    spec = run_spec(run, args, suite, stage, teacher)
    resume = state == "interrupted"
    if record is None or not resume:
        record = new_record(spec)
    return spec, record, resume


def crashed(run: PlannedRun, record, exc: Exception) -> None:
    """A bug or a crash inside a run: its traceback in error.log, the record failed in one line."""
    (run.run_dir / "error.log").write_text(traceback.format_exc())
    record.status, record.failure = (
        "failed",
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (traceback in error.log)",
    )
    write_record(record, run.run_dir)


def report(run: PlannedRun, prefix: str, record, elapsed: float, progress: "Progress", outcome: SweepOutcome) -> None:
    progress.finished(run, elapsed)
    if record.status == "completed":
        outcome.completed += 1
        say(
            f"{prefix}: {record.headline()} in {elapsed:.1f}s ({record.images_per_s or 0:.0f} img/s) | {progress.eta()}"
        )
    else:
        outcome.failed.append(run.label)
        say(f"{prefix}: FAILED: {record.failure}")


def progress_printer(args, runs: list[PlannedRun]):
    """Per-epoch lines with --verbose or for long schedules, else None."""
    if args.verbose or any(run.recipe.schedule.epochs >= 20 for run in runs):
        return lambda line: say("    " + line)
    return None
