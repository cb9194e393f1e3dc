"""What a sweep prints: the plan, progress with an ETA, durations; its exit codes."""

from __future__ import annotations

from benchmark.store.claims import holder_of
from benchmark.sweep.plan import PlannedRun
from benchmark.sweep.state import existing_state

EXIT_FAILED, EXIT_USAGE, EXIT_HELD = 1, 2, 3


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
