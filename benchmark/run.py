"""Run a benchmark sweep: teachers, then every (pair, method, seed), then the tables.

    python benchmark/run.py --suite digits --methods kd,fitnet,crd,dkd,ckd
    python benchmark/run.py --suite cifar100 --methods ckd,crd,dkd --data-root data --teachers teachers
    python benchmark/run.py --suite cifar100 --methods ckd,crd,dkd --dry-run

Every run has its own directory under ``<work-dir>/<suite>/<recipe>/<pair>/<method>/seed<k>``
with its MMEngine config, logs, last checkpoint, the exported student and ``record.json``.
Completed runs are skipped, interrupted ones resume from their last checkpoint, a run
whose loss becomes NaN is recorded as failed; nothing is overwritten silently.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.claims import claim, holder_of  # noqa: E402
from benchmark.errors import UsageError  # noqa: E402
from benchmark.records import RecordError, RunRecord, read_record, write_record  # noqa: E402

BASELINE = "ce"


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
        return (f"{self.pair.name} {self.method} seed{self.seed} (recipe {self.recipe.name} {self.recipe.hash}, "
                f"{schedule.epochs} ep, bs {schedule.batch_size}, lr {schedule.lr:g}{method_args})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmark/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="benchmark suite (cifar100, digits)")
    parser.add_argument("--methods", required=True, help="comma list of registered methods, e.g. kd,crd,dkd,ckd")
    parser.add_argument("--pairs", help="comma list of teacher-student pairs (default: all pairs of the suite)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds per (pair, method): 0..N-1 (default 3)")
    parser.add_argument("--recipe", help="recipe name (default: the suite's, 'unified')")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (milestones scale with it); for smoke runs")
    parser.add_argument("--batch-sizes", help="batch-size ablation: comma list; lr follows the linear rule from the recipe's batch")
    parser.add_argument("--data-root", default="data", help="folder holding the dataset (cifar-100-python/ for cifar100)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data-root if it is missing")
    parser.add_argument("--teachers", help="folder of teacher checkpoints in the community layout <name>_vanilla/ckpt_epoch_240.pth")
    parser.add_argument("--work-dir", default="work_dirs", help="where runs are kept (default work_dirs/)")
    parser.add_argument("--tables", default="tables", help="where tables are written (default tables/)")
    parser.add_argument("--reports", default="reports", help="where plots and the report are written (default reports/)")
    parser.add_argument("--no-baseline", action="store_true", help="do not add the student-alone (ce) runs")
    parser.add_argument("--no-aggregate", action="store_true", help="do not regenerate tables and reports at the end")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue interrupted runs from their last checkpoint (default); --no-resume refuses to touch them")
    parser.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed (their old record is kept as record.failed.json)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--num-workers", type=int, help="dataloader workers (default: the dataset config's)")
    parser.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms (slower)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--verbose", action="store_true", help="per-epoch progress lines and MMEngine's own logs")
    return parser.parse_args(argv)


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
                resolved = suite.resolve(recipe, pair, method).adjusted(args.epochs, batch_size)
                for seed in range(args.seeds):
                    extra = {}
                    if batch_size is not None:
                        base = suite.resolve(recipe, pair, method).schedule
                        extra = {"batch_size_ablation": True, "base_batch_size": base.batch_size, "base_lr": base.lr, "lr_rule": "linear"}
                    run_dir = Path(args.work_dir) / suite.name / variant_name(recipe, args.epochs, batch_size) / pair.name / method / f"seed{seed}"
                    runs.append(PlannedRun(pair, method, seed, resolved, run_dir, extra))
    return suite, recipe, pairs, runs


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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a user's kill): stop like Ctrl-C, leaving resumable runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def check_writable_dir(path: str, option: str) -> None:
    """Create ``path`` if needed and prove a file can be written there; else one-line UsageError."""
    from benchmark.atomic import write_text

    target = Path(path)
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = write_text(target / f".write-test-{os.getpid()}", "")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create or write there ({exc.strerror or type(exc).__name__})") from None


EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}: runs in progress keep their last checkpoint; run the same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class SweepOutcome:
    failed: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    completed: int = 0


def _main(args: argparse.Namespace) -> int:
    suite, recipe, pairs, runs = resolve_plan(args)
    from benchmark import teachers as teacher_stage

    teacher_names = sorted({p.teacher for p in pairs}, key=[p.teacher for p in pairs].index)
    stage = teacher_stage.TeacherStage(suite, recipe, args)
    needs_teacher = any(run.method != BASELINE for run in runs)
    if args.dry_run:
        print_plan(suite, recipe, pairs, runs, {name: stage.describe(name) for name in teacher_names})
        return 0

    # Everything that can be checked is checked before anything runs.
    if needs_teacher:
        stage.check_teacher_files(teacher_names)
    check_writable_dir(args.work_dir, "--work-dir")
    if not args.no_aggregate:
        check_writable_dir(args.tables, "--tables")
        check_writable_dir(args.reports, "--reports")
    if not args.verbose:
        logging.getLogger("mmengine").setLevel(logging.ERROR)
    if suite.cpu_threads and stage.device == "cpu":
        import torch

        torch.set_num_threads(suite.cpu_threads)
    from benchmark.checkpoints import CheckpointError
    from benchmark.claims import ClaimHeld
    from benchmark.data import DatasetNotFoundError

    outcome = SweepOutcome()
    teachers, held_teachers = {}, {}
    try:
        num_data = stage.num_train_samples()
        if needs_teacher:
            for name in teacher_names:
                try:
                    teachers[name] = stage.ensure(name, say)
                except ClaimHeld as held:
                    held_teachers[name] = held.holder
                    say(f"teacher {name}: held by another sweep ({held.holder}); the runs that need it are skipped")
    except (DatasetNotFoundError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None

    progress = Progress(runs)
    say(f"{len(runs)} run(s) planned in {args.work_dir}")
    for number, run in enumerate(runs, 1):
        prefix = f"[{number}/{len(runs)}] {run.label}"
        if run.method != BASELINE and run.pair.teacher in held_teachers:
            say(f"{prefix}: its teacher is held by another sweep ({held_teachers[run.pair.teacher]}); skipped")
            outcome.held.append(run.label)
            progress.finished(run, None)
            continue
        try:
            with claim(run.run_dir, say):
                run_one(run, prefix, args, suite, stage, teachers, num_data, progress, outcome)
        except ClaimHeld as held:
            say(f"{prefix}: held by another sweep ({held.holder}); skipped")
            outcome.held.append(run.label)
            progress.finished(run, None)
        except (CheckpointError, DatasetNotFoundError) as exc:
            raise UsageError(str(exc)) from None

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


def run_one(run: PlannedRun, prefix: str, args, suite, stage, teachers: dict, num_data: int, progress: "Progress", outcome: SweepOutcome) -> None:
    """One planned run, under its claim: skip, resume or start it, and record the outcome."""
    from benchmark.checkpoints import CheckpointError
    from benchmark.data import DatasetNotFoundError
    from benchmark.runner import RunSpec, execute, new_record

    state, record = existing_state(run)  # read only now that the run is ours
    if state == "completed":
        say(f"{prefix}: done before (top-1 last {record.last_top1:.2f}), skipped")
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
    spec = RunSpec(
        suite=suite, pair=run.pair, method=run.method, recipe=run.recipe, seed=run.seed, run_dir=run.run_dir,
        data_root=args.data_root, device=stage.device, num_workers=args.num_workers, deterministic=args.deterministic,
        teacher_checkpoint=teacher.path if teacher else None,
        teacher_checkpoint_sha256=teacher.sha256 if teacher else None,
        teacher_top1=teacher.top1 if teacher else None,
        extra={**run.extra, **({"teacher_source": teacher.source} if teacher else {})},
        log_level="INFO" if args.verbose else "ERROR",
    )
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
        say(f"{prefix}: top-1 last {record.last_top1:.2f} best {record.best_top1:.2f} in {elapsed:.1f}s "
            f"({record.images_per_s or 0:.0f} img/s) | {progress.eta()}")
    else:
        outcome.failed.append(run.label)
        say(f"{prefix}: FAILED: {record.failure}")


if __name__ == "__main__":
    raise SystemExit(main())
