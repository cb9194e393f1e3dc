"""The state of every planned run from its directory and the scheduler: ``--status``, and what submission skips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from benchmark.store.records import RECORD_FILE
from benchmark.sweep.cluster.base import RUNNING, say
from benchmark.sweep.cluster.markers import Marker, read_marker
from benchmark.sweep.cluster.scheduler import SchedulerView
from benchmark.sweep.options import SweepOptions
from benchmark.sweep.state import read_state

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
    path = run_dir / RECORD_FILE
    for _attempt in range(5):
        before = _signature(path)
        assessment = _assess_once(run_dir, recipe_hash, epochs, view)
        if _signature(path) == before:
            break
    return assessment


def _assess_once(run_dir: Path, recipe_hash: str, epochs: int, view: SchedulerView) -> Assessment:
    from benchmark.sweep.console import format_duration

    state = read_state(run_dir, recipe_hash, with_claim=True)
    if state.kind == "refused":
        return Assessment("refused", state.problem)
    record, path = state.record, run_dir / RECORD_FILE
    done = len(record.curve) if record else 0
    total = record.epochs if record else epochs
    wall = record.wall_time_s if record else None
    marker = state.marker
    common = dict(record=record, marker=marker, epochs=total, epochs_done=done, wall_s=wall)
    if record is not None and record.status == "completed":
        best = f" (best {record.best_value():.2f} at epoch {record.best_epoch})" if record.best_epoch else ""
        return Assessment("completed", f"{record.metric_text()}{best}", **common)
    holder = state.holder
    job = f"{marker.describe()}, " if marker else ""
    if holder:
        if record is not None and record.curve:
            last = record.curve[-1]
            a = Assessment("running", "", holder=holder, **common)
            eta = a.eta_s
            a.detail = (
                f"epoch {last.epoch}/{total}, {record.metric_text(last)}, ETA {format_duration(eta) if eta is not None else '–'} "
                f"({job}{holder})"
            )
            return a
        return Assessment("running", f"starting ({job}{holder})", holder=holder, **common)
    state = view.state(marker)
    at = f" at epoch {done}/{total}" if record is not None else ""
    if record is not None and record.status == "failed":
        if marker and marker.time > path.stat().st_mtime and (state is None or SchedulerView.live(state)):
            return Assessment(
                "pending",
                f"queued again ({marker.describe()}, {state or 'state unknown'}) after failing: {record.failure}",
                job_state=state,
                **common,
            )
        return Assessment("failed", record.failure or "failed", job_state=state, **common)
    resume = f" to resume{at}" if record is not None else ""
    if marker is not None:
        if state is None:
            why = (
                "scheduler not answering"
                if marker.cluster == "slurm"
                else f"submitted on {marker.host}, cannot be checked from here"
            )
            verb = "queued" if record is not None else "submitted"
            return Assessment("pending", f"{verb} ({marker.describe()}){resume}, {why}", job_state=None, **common)
        if state == RUNNING:
            return Assessment("pending", f"{marker.describe()} is starting{resume}", job_state=state, **common)
        if SchedulerView.live(state):
            return Assessment("pending", f"queued ({marker.describe()}, {state}){resume}", job_state=state, **common)
        ended = "ended" if state == "ENDED" else f"ended {state}"
        if record is not None:
            return Assessment(
                "lost",
                f"record says running{at}, but {marker.describe()} {ended} and nothing holds it; "
                f"submit again to resume it{_log_hint(marker)}",
                job_state=state,
                **common,
            )
        return Assessment(
            "lost",
            f"{marker.describe()} {ended} before starting the run; submit again{_log_hint(marker)}",
            job_state=state,
            **common,
        )
    if record is not None:
        return Assessment(
            "lost", f"record says running{at}, but no live job holds it; submit again to resume it", **common
        )
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
        rows.append(
            Row(
                "teacher",
                f"teacher {name}",
                sweep.stage.run_dir(name),
                recipe.hash,
                recipe.schedule.epochs,
                teacher=name,
                community=sweep.stage.community_path(name),
            )
        )
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


def print_status(args: SweepOptions) -> int:
    """``--status``: every planned run's state from the run directories (and the scheduler when it answers)."""
    from benchmark.sweep.console import format_duration
    from benchmark.sweep.plan import plan_sweep

    sweep = plan_sweep(args)
    teachers, runs = teacher_rows(sweep), run_rows(sweep)
    view = _view_for(teachers + runs)
    say(
        f"suite {sweep.suite.name}, recipe {sweep.recipe}: {len(runs)} planned run(s) in {args.work_dir} ({_scheduler_line(view)})"
    )
    if teachers:
        say("teachers:")
        for row in teachers:
            if row.community is not None:
                a = row.assess(view)
                measured = (
                    f", {a.record.metric_text()}"
                    if a.kind == "completed"
                    else ", evaluated by the first run that needs it"
                )
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
        say(
            f"training left: {left} epoch(s), about {format_duration(left * per_epoch)} of run time at the measured "
            f"{per_epoch:.1f}s per epoch (divide by the jobs running at once)"
        )
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
