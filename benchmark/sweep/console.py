"""What every executor of a sweep prints with: progress with an ETA, durations, ``say``; the exit codes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # plan.py reaches this module through the teacher stage: no runtime import back
    from benchmark.sweep.plan import PlannedRun

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
