"""The plan of a sweep: which (pair, method, batch size, seed) runs, with which resolved recipe, where."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import UsageError
from benchmark.sweep.options import SweepOptions

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
        method_args = "".join(
            f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}"
            for k, v in self.recipe.method.items()
            if k != "type"
        )
        method_args += "".join(f", {k} {v}" for k, v in self.recipe.options.items())
        return (
            f"{self.pair.name} {self.method} seed{self.seed} (recipe {self.recipe.name} {self.recipe.hash}, "
            f"{schedule.epochs} ep, bs {schedule.batch_size}, lr {schedule.lr:g}{method_args})"
        )


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def resolve_plan(args: SweepOptions):
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
        raise UsageError(
            f"unknown method(s) {', '.join(unknown)}; registered methods: {', '.join(methods.method_names())}"
        )
    if not args.no_baseline and BASELINE not in chosen:
        chosen = [BASELINE] + chosen
    try:
        pairs = [suite.pair(name) for name in _split(args.pairs)] if args.pairs else list(suite.pairs)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    recipe = args.recipe or suite.default_recipe
    if recipe not in suite.recipes:
        raise UsageError(
            f"suite {suite.name!r} has no recipe {recipe!r}; its recipes: {', '.join(sorted(suite.recipes))}"
        )
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    if args.cohort_size is not None and args.cohort_size < 1:
        raise UsageError("--cohort-size must be at least 1")
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
                resolved = with_options(
                    with_world_size(suite.resolve(recipe, pair, method).adjusted(args.epochs, batch_size), args), args
                )
                for seed in range(args.seeds):
                    extra = {}
                    if batch_size is not None:
                        base = suite.resolve(recipe, pair, method).schedule
                        extra = {
                            "batch_size_ablation": True,
                            "base_batch_size": base.batch_size,
                            "base_lr": base.lr,
                            "lr_rule": "linear",
                        }
                    run_dir = (
                        Path(args.work_dir)
                        / suite.name
                        / variant_name(recipe, args.epochs, batch_size, args.nproc, args.amp, args.channels_last)
                        / pair.name
                        / method
                        / f"seed{seed}"
                    )
                    runs.append(PlannedRun(pair, method, seed, resolved, run_dir, extra))
    return suite, recipe, pairs, runs


def with_world_size(resolved, args: SweepOptions):
    """The recipe as run on ``--nproc`` processes: the batch stays global; CKD's contrast is stated."""
    nproc = args.nproc
    if nproc == 1:
        return resolved
    batch = resolved.schedule.batch_size
    if batch % nproc:
        raise UsageError(
            f"--nproc {nproc} does not divide the batch size {batch} (the recipe's batch is the global batch)"
        )
    notes = (f"DDP over {nproc} processes, {batch // nproc} images each; lr unchanged",)
    method = dict(resolved.method)
    if method["type"] == "ckd" and method.get("contrast_rois") is not None:
        # Contrast groups of whole images on each process (COCO paper recipe): nothing to gather.
        notes += (
            f"CKD contrast within groups of {method['contrast_rois']} RoIs of each process (--ckd-contrast "
            "does not apply)",
        )
    elif method["type"] == "ckd" and "contrast" not in resolved.method:  # a suite may fix it
        method["contrast"] = args.ckd_contrast
        notes += (
            "CKD negatives from the global batch"
            if args.ckd_contrast == "global"
            else "CKD negatives from each process's batch only (as DataParallel computed the official loss per replica)",
        )
    if args.sync_bn:
        notes += ("SyncBatchNorm in the student",)
    from benchmark.suites import ResolvedRecipe

    return ResolvedRecipe(resolved.name, resolved.schedule, method, resolved.notes + notes, dict(resolved.options))


def with_options(resolved, args: SweepOptions):
    """--amp (bf16 autocast) and --channels-last: recorded in the recipe, so they are part of the run's identity."""
    options = dict(resolved.options)
    if args.amp:
        options["amp"] = "bfloat16"
    if args.channels_last:
        options["channels_last"] = True
    if options == resolved.options:
        return resolved
    from benchmark.suites import ResolvedRecipe

    return ResolvedRecipe(resolved.name, resolved.schedule, resolved.method, resolved.notes, options)


@dataclass
class Sweep:
    """A resolved command line: the suite, its recipe, pairs and planned runs, the teacher stage."""

    args: SweepOptions
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

    @property
    def solo_reason(self) -> str | None:
        """Why this sweep's runs train alone, or None: they train in lockstep cohorts."""
        if self.args.no_cohort:
            return "--no-cohort"
        return self.suite.solo_reason

    def cohorts(self) -> list[list[PlannedRun]]:
        """The planned runs grouped into cohorts: one (variant, pair, seed), at most --cohort-size
        runs each, in plan order; one run per group when the runs train alone."""
        if self.solo_reason:
            return [[run] for run in self.runs]
        return cohorts_of(self.runs, self.args.cohort_size)


def cohorts_of(runs: list[PlannedRun], size: int | None = None) -> list[list[PlannedRun]]:
    """Runs of one (suite, recipe variant, pair, seed) — ``<variant>/<pair>/<method>/seed<k>`` — that
    differ only by method, in plan order, split into groups of at most ``size``."""
    groups: dict[tuple[Path, str], list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault((run.run_dir.parent.parent, run.run_dir.name), []).append(run)
    step = size or max((len(group) for group in groups.values()), default=1)
    return [group[i : i + step] for group in groups.values() for i in range(0, len(group), step)]


def plan_sweep(args: SweepOptions) -> Sweep:
    from benchmark.sweep.teachers import TeacherStage

    suite, recipe, pairs, runs = resolve_plan(args)
    return Sweep(args, suite, recipe, pairs, runs, TeacherStage(suite, recipe, args))
