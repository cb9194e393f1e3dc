"""A sweep: the plan (pairs × methods × seeds), the teacher stage, and every run under its claim.

``benchmark/run.py`` parses the command line and hands it here (or to another executor);
:func:`run_sweep` executes the plan in this process, one run after another, with progress and
ETA. Every executor runs a single run through :func:`run_one`, which claims the run directory,
reads its state only then, and skips, resumes or starts it.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from benchmark.store.claims import claim, holder_of
from benchmark.errors import UsageError
from benchmark.store.records import RecordError, RunRecord, read_record, write_record

BASELINE = "ce"
EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 1, 2, 3


@dataclass
class PlannedRun:
    pair: object
    method: str
    seed: int
    recipe: object
    run_dir: Path
    extra: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        schedule = self.recipe.schedule
        method_args = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in self.recipe.method.items() if k != "type")
        method_args += "".join(f", {k} {v}" for k, v in self.recipe.options.items())
        return (f"{self.pair.name} {self.method} seed{self.seed} (recipe {self.recipe.name} {self.recipe.hash}, "
                f"{schedule.epochs} ep, bs {schedule.batch_size}, lr {schedule.lr:g}{method_args})")


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def resolve_plan(args: argparse.Namespace):
    """Validate the command line and list the runs; raises UsageError with one line."""
    import methods
    from benchmark.suites import UnknownSuiteError, get_suite, variant_name

    try:
        suite = get_suite(args.suite)
    except UnknownSuiteError as exc:
        raise UsageError(str(exc)) from None
    chosen = _split(args.methods)
    if not chosen:
        raise UsageError("--methods is empty; registered methods: " + ", ".join(methods.method_names()))
    unknown = [m for m in chosen if m not in methods.METHODS.module_dict]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(methods.method_names())}")
    if not args.no_baseline and BASELINE not in chosen:
        chosen = [BASELINE] + chosen
    try:
        pairs = [suite.pair(name) for name in _split(args.pairs)] if args.pairs else list(suite.pairs)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    recipe = args.recipe or suite.default_recipe
    if recipe not in suite.recipes:
        raise UsageError(f"suite {suite.name!r} has no recipe {recipe!r}; its recipes: {', '.join(sorted(suite.recipes))}")
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    try:
        batch_sizes = [int(b) for b in _split(args.batch_sizes)] or [None]
    except ValueError:
        raise UsageError(f"--batch-sizes must be a comma list of integers, got {args.batch_sizes!r}") from None

    runs = []
    for pair in pairs:
        for method in chosen:
            for batch_size in batch_sizes:
                resolved = with_options(with_world_size(suite.resolve(recipe, pair, method).adjusted(args.epochs, batch_size), args), args)
                for seed in range(args.seeds):
                    extra = {}
                    if batch_size is not None:
                        base = suite.resolve(recipe, pair, method).schedule
                        extra = {"batch_size_ablation": True, "base_batch_size": base.batch_size, "base_lr": base.lr, "lr_rule": "linear"}
                    run_dir = Path(args.work_dir) / suite.name / variant_name(recipe, args.epochs, batch_size, args.nproc, args.amp, args.channels_last) / pair.name / method / f"seed{seed}"
                    runs.append(PlannedRun(pair, method, seed, resolved, run_dir, extra))
    return suite, recipe, pairs, runs


def with_world_size(resolved, args: argparse.Namespace):
    """The recipe as run on ``--nproc`` processes: the batch stays global; CKD's contrast is stated."""
    nproc = getattr(args, "nproc", 1)
    if nproc == 1:
        return resolved
    batch = resolved.schedule.batch_size
    if batch % nproc:
        raise UsageError(f"--nproc {nproc} does not divide the batch size {batch} (the recipe's batch is the global batch)")
    notes = (f"DDP over {nproc} processes, {batch // nproc} images each; lr unchanged",)
    method = dict(resolved.method)
    if method["type"] == "ckd" and method.get("contrast_rois") is not None:
        # Contrast groups of whole images on each process (COCO paper recipe): nothing to gather.
        notes += (f"CKD contrast within groups of {method['contrast_rois']} RoIs of each process (--ckd-contrast "
                  "does not apply)",)
    elif method["type"] == "ckd" and "contrast" not in resolved.method:  # a suite may fix it
        method["contrast"] = args.ckd_contrast
        notes += ("CKD negatives from the global batch" if args.ckd_contrast == "global" else
                  "CKD negatives from each process's batch only (as DataParallel computed the official loss per replica)",)
    if args.sync_bn:
        notes += ("SyncBatchNorm in the student",)
    from benchmark.suites import ResolvedRecipe

    return ResolvedRecipe(resolved.name, resolved.schedule, method, resolved.notes + notes, dict(resolved.options))


def with_options(resolved, args: argparse.Namespace):
    """--amp (bf16 autocast) and --channels-last: recorded in the recipe, so they are part of the run's identity."""
    options = dict(resolved.options)
    if getattr(args, "amp", False):
        options["amp"] = "bfloat16"
    if getattr(args, "channels_last", False):
        options["channels_last"] = True
    if options == resolved.options:
        return resolved
    from benchmark.suites import ResolvedRecipe

    return ResolvedRecipe(resolved.name, resolved.schedule, resolved.method, resolved.notes, options)


def existing_state(run: PlannedRun) -> tuple[str, RunRecord | None]:
    """'new' | 'completed' | 'failed' | 'interrupted' for a planned run, checking it is the same recipe."""
    path = run.run_dir / "record.json"
    if not path.exists():
        return "new", None
    try:
        record = read_record(path)
    except RecordError as exc:
        raise UsageError(f"cannot trust {path} ({exc}); move it away to run again") from None
    if record.recipe_hash != run.recipe.hash:
        raise UsageError(
            f"{run.run_dir} holds a run of another recipe (hash {record.recipe_hash}, now {run.recipe.hash}); use another --work-dir"
        )
    return ("interrupted" if record.status == "running" else record.status), record


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Sweep progress with an ETA from the measured seconds per training epoch."""

    def __init__(self, runs: list[PlannedRun]) -> None:
        self.total = len(runs)
        self.remaining_epochs = sum(r.recipe.schedule.epochs for r in runs)
        self.done = 0
        self.seconds = 0.0
        self.epochs_done = 0

    def finished(self, run: PlannedRun, seconds: float | None) -> None:
        self.done += 1
        self.remaining_epochs -= run.recipe.schedule.epochs
        if seconds is not None:
            self.seconds += seconds
            self.epochs_done += run.recipe.schedule.epochs

    def eta(self) -> str:
        if not self.epochs_done:
            return "ETA –"
        return "ETA " + format_duration(self.seconds / self.epochs_done * self.remaining_epochs)


def say(message: str) -> None:
    print(message, flush=True)


def print_plan(suite, recipe: str, pairs, runs: list[PlannedRun], teacher_plan: dict[str, str]) -> None:
    say(f"suite {suite.name}: {suite.description}")
    say(f"recipe {recipe}; {len(pairs)} pair(s) x {len({r.method for r in runs})} method(s) x {len({r.seed for r in runs})} seed(s) = {len(runs)} run(s)")
    say("teachers:")
    for name, how in teacher_plan.items():
        say(f"  {name}: {how}")
    say("runs:")
    for run in runs:
        state, _ = existing_state(run)
        holder = holder_of(run.run_dir)
        held = f" (held by {holder})" if holder else ""
        say(f"  [{state:>11}] {run.label} -> {run.run_dir}{held}")


def check_writable_dir(path: str, option: str) -> None:
    """Create ``path`` if needed and prove a file can be written there; else one-line UsageError."""
    from benchmark.store.atomic import write_text

    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = write_text(target / f".write-test-{os.getpid()}", "")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create or write there ({exc.strerror or type(exc).__name__})") from None


@dataclass
class SweepOutcome:
    failed: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    completed: int = 0


@dataclass
class Sweep:
    """A resolved command line: the suite, its recipe, pairs and planned runs, the teacher stage."""

    args: argparse.Namespace
    suite: object
    recipe: str
    pairs: list
    runs: list[PlannedRun]
    stage: object
    num_data: int | None = None  # size of the training split, once preflight has counted it

    @property
    def teacher_names(self) -> list[str]:
        return sorted({p.teacher for p in self.pairs}, key=[p.teacher for p in self.pairs].index)

    @property
    def needs_teacher(self) -> bool:
        return any(run.method != BASELINE for run in self.runs)


def plan_sweep(args: argparse.Namespace) -> Sweep:
    from benchmark.teachers import TeacherStage

    suite, recipe, pairs, runs = resolve_plan(args)
    return Sweep(args, suite, recipe, pairs, runs, TeacherStage(suite, recipe, args))


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
    if getattr(args, "sync_bn", False) and (args.nproc == 1 or sweep.stage.device == "cpu"):
        problems.append("--sync-bn needs --nproc > 1 on CUDA devices (torch's SyncBatchNorm has no CPU kernels)")
    if sweep.needs_teacher:
        problems.append(sweep.stage.missing_teacher_files(sweep.teacher_names))
    outputs = [(args.work_dir, "--work-dir")] + ([] if args.no_aggregate else [(args.tables, "--tables"), (args.reports, "--reports")])
    for path, option in outputs:
        try:
            check_writable_dir(path, option)
        except UsageError as exc:
            problems.append(str(exc))
    problems = [problem for problem in problems if problem]
    if problems:
        raise UsageError(*problems)
    if sweep.needs_teacher:
        sweep.stage.announce_training(sweep.teacher_names)
    if not args.verbose:
        logging.getLogger("mmengine").setLevel(logging.ERROR)
    if sweep.suite.cpu_threads and sweep.stage.device == "cpu":
        import torch

        torch.set_num_threads(sweep.suite.cpu_threads)


def prepare_teachers(sweep: Sweep) -> tuple[int, dict, dict]:
    """Size of the training split, the teachers ready for use, and those another sweep holds."""
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld
    from benchmark.data import DatasetNotFoundError

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


def execute_claimed(run: PlannedRun, prefix: str, sweep: Sweep, teachers: dict, held_teachers: dict, num_data: int,
                    progress: "Progress", outcome: SweepOutcome) -> None:
    """One run under its claim; every executor (in-process, local processes, Slurm) comes through here."""
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.store.claims import ClaimHeld
    from benchmark.data import DatasetNotFoundError

    if run.method != BASELINE and run.pair.teacher in held_teachers:
        say(f"{prefix}: its teacher is held by another sweep ({held_teachers[run.pair.teacher]}); skipped")
        outcome.held.append(run.label)
        progress.finished(run, None)
        return
    try:
        with claim(run.run_dir, say):
            run_one(run, prefix, sweep.args, sweep.suite, sweep.stage, teachers, num_data, progress, outcome)
    except ClaimHeld as held:
        say(f"{prefix}: held by another sweep ({held.holder}); skipped")
        outcome.held.append(run.label)
        progress.finished(run, None)
    except (CheckpointError, DatasetNotFoundError) as exc:
        raise UsageError(str(exc)) from None


def finish(sweep: Sweep, outcome: SweepOutcome) -> int:
    """Tables and the closing summary; the exit code says what happened."""
    args = sweep.args
    if not args.no_aggregate:
        from benchmark.aggregate import aggregate

        summary = aggregate([Path(args.work_dir)], Path(args.tables), Path(args.reports))
        say(f"tables in {args.tables}/, plots and report in {args.reports}/ ({summary})")
    say(f"{outcome.completed} run(s) completed, {len(outcome.failed)} failed, {len(outcome.held)} held by another sweep")
    if outcome.failed:
        say(f"{len(outcome.failed)} run(s) failed: " + "; ".join(outcome.failed))
        return EXIT_FAILED
    if outcome.held:
        say(f"{len(outcome.held)} run(s) held by another sweep: run the same command again once it has finished")
        return EXIT_HELD
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """The in-process executor: teachers, then every planned run in turn, then the tables."""
    sweep = plan_sweep(args)
    if args.dry_run:
        print_plan(sweep.suite, sweep.recipe, sweep.pairs, sweep.runs, {name: sweep.stage.describe(name) for name in sweep.teacher_names})
        if args.print_config:
            print_configs(sweep)
        return 0
    preflight(sweep)
    num_data, teachers, held_teachers = prepare_teachers(sweep)
    outcome, progress = SweepOutcome(), Progress(sweep.runs)
    say(f"{len(sweep.runs)} run(s) planned in {args.work_dir}")
    for number, run in enumerate(sweep.runs, 1):
        execute_claimed(run, f"[{number}/{len(sweep.runs)}] {run.label}", sweep, teachers, held_teachers, num_data, progress, outcome)
    return finish(sweep, outcome)


def run_single(args: argparse.Namespace, run_dir: str) -> int:
    """Execute the one planned run whose directory is ``run_dir`` (the job of a cluster executor).

    The same plan, teacher stage and :func:`execute_claimed` as the in-process sweep; returns
    0 completed (or done before), 1 failed, 3 held by another process.
    """
    sweep = plan_sweep(args)
    matching = [run for run in sweep.runs if Path(run.run_dir) == Path(run_dir)]
    if not matching:
        raise UsageError(f"{run_dir} is not a run of this sweep's plan")
    run = matching[0]
    sweep.runs = [run]
    sweep.pairs = [run.pair]
    preflight(sweep)
    num_data, teachers, held_teachers = prepare_teachers(sweep)
    outcome = SweepOutcome()
    execute_claimed(run, run.label, sweep, teachers, held_teachers, num_data, Progress([run]), outcome)
    return EXIT_FAILED if outcome.failed else EXIT_HELD if outcome.held else 0


def run_spec(run: PlannedRun, args, suite, stage, teacher=None):
    """The RunSpec of a planned run: what the command line and the teacher stage say about it."""
    from benchmark.train import RunSpec

    return RunSpec(
        suite=suite, pair=run.pair, method=run.method, recipe=run.recipe, seed=run.seed, run_dir=run.run_dir,
        data_root=args.data_root, device=stage.device, num_workers=args.num_workers, deterministic=args.deterministic,
        teacher_checkpoint=teacher.path if teacher else None,
        teacher_checkpoint_sha256=teacher.sha256 if teacher else None,
        teacher_top1=teacher.top1 if teacher else None,
        extra={**run.extra, **({"teacher_source": teacher.source} if teacher else {})},
        log_level="INFO" if args.verbose else "ERROR",
        world_size=args.nproc, sync_bn=args.sync_bn, tensorboard=args.tensorboard,
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
            teacher = SimpleNamespace(path=str(path), sha256=None, top1=None, source="planned")
        cfg = build_config(run_spec(run, sweep.args, sweep.suite, sweep.stage, teacher), None, check_files=False)
        say(f"# ---- {run.label} -> {run.run_dir}")
        say("# num_data (the training-set size) is counted from the data when the run starts")
        say(cfg.pretty_text)


def run_one(run: PlannedRun, prefix: str, args, suite, stage, teachers: dict, num_data: int, progress: "Progress", outcome: SweepOutcome) -> None:
    """One planned run, under its claim: skip, resume or start it, and record the outcome."""
    from benchmark.store.checkpoints import CheckpointError
    from benchmark.data import DatasetNotFoundError
    from benchmark.train import execute, new_record

    state, record = existing_state(run)  # read only now that the run is ours
    if state == "completed":
        say(f"{prefix}: done before ({record.headline(best=False)}), skipped")
        outcome.completed += 1
        progress.finished(run, None)
        return
    if state == "failed" and not args.retry_failed:
        say(f"{prefix}: failed before ({record.failure}); --retry-failed runs it again")
        outcome.failed.append(run.label)
        progress.finished(run, None)
        return
    if state == "interrupted" and not args.resume:
        raise UsageError(f"{run.run_dir} holds an interrupted run; rerun with --resume to continue it")
    if state == "failed":
        (run.run_dir / "record.json").replace(run.run_dir / "record.failed.json")
    teacher = teachers.get(run.pair.teacher) if run.method != BASELINE else None
    spec = run_spec(run, args, suite, stage, teacher)
    resume = state == "interrupted"
    if record is None or not resume:
        record = new_record(spec)
    say(f"{prefix}: {'resuming' if resume else 'starting'} | {progress.eta()}")
    started = time.perf_counter()
    show = (lambda line: say("    " + line)) if (args.verbose or run.recipe.schedule.epochs >= 20) else None
    try:
        record = execute(spec, num_data, record, resume=resume, progress=show, say=say)
    except (UsageError, CheckpointError, DatasetNotFoundError):
        raise  # the user's to fix: one line, and the sweep stops
    except Exception as exc:  # a bug or a crash inside one run: record it, keep the sweep going
        (run.run_dir / "error.log").write_text(traceback.format_exc())
        record.status, record.failure = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (traceback in error.log)"
        write_record(record, run.run_dir)
    elapsed = time.perf_counter() - started
    progress.finished(run, elapsed)
    if record.status == "completed":
        outcome.completed += 1
        say(f"{prefix}: {record.headline()} in {elapsed:.1f}s "
            f"({record.images_per_s or 0:.0f} img/s) | {progress.eta()}")
    else:
        outcome.failed.append(run.label)
        say(f"{prefix}: FAILED: {record.failure}")
