"""The state of a run, read from its directory: the ONE reader of record + claim + submission marker.

``new`` (no record), ``completed``, ``failed``, ``interrupted`` (its record says running),
or ``refused`` (a record that cannot be trusted, or one of another recipe: never touched).
The in-process sweep, the teacher stage and ``--status`` all start from :func:`read_state`;
``--status`` adds what the scheduler says (pending, lost) on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import UsageError
from benchmark.store.claims import holder_of
from benchmark.store.records import RECORD_FILE, RecordError, RunRecord, read_record
from benchmark.sweep.cluster.markers import Marker, read_marker

if TYPE_CHECKING:  # plan.py reaches this module through the teacher stage: no runtime import back
    from benchmark.sweep.plan import PlannedRun


@dataclass
class RunState:
    kind: str  # new | completed | failed | interrupted | refused
    record: RunRecord | None = None
    problem: str | None = None  # why a run is refused, in one line
    holder: str | None = None  # who holds the run's claim right now (with_claim=True)
    marker: Marker | None = None  # its submission marker, if a cluster sweep submitted it (with_claim=True)


def read_state(run_dir: Path, recipe_hash: str, with_claim: bool = False) -> RunState:
    """What ``run_dir`` holds for a run of the recipe ``recipe_hash``.

    ``with_claim`` also looks (without taking it) at the run's claim and its submission marker.
    """
    state = _from_record(Path(run_dir), recipe_hash)
    if with_claim:  # looked at after the record: a run that ends meanwhile is never taken for a lost one
        state.holder, state.marker = holder_of(run_dir), read_marker(run_dir)
    return state


def _from_record(run_dir: Path, recipe_hash: str) -> RunState:
    path = run_dir / RECORD_FILE
    if not path.exists():
        return RunState("new")
    try:
        record = read_record(path)
    except RecordError as exc:
        return RunState("refused", problem=f"cannot trust {path} ({exc}); move it away to run again")
    if record.recipe_hash != recipe_hash:
        return RunState(
            "refused",
            record,
            f"{run_dir} holds a run of another recipe (hash {record.recipe_hash}, "
            f"now {recipe_hash}); use another --work-dir",
        )
    if record.predates_method_streams:
        return RunState(
            "refused",
            record,
            f"{run_dir} holds a run recorded before per-method random streams (schema "
            f"{record.schema_version}); its seed drew other weights: use another --work-dir",
        )
    return RunState("interrupted" if record.status == "running" else record.status, record)


def existing_state(run: PlannedRun) -> tuple[str, RunRecord | None]:
    """'new' | 'completed' | 'failed' | 'interrupted' for a planned run; a refused one stops the sweep (one line)."""
    state = read_state(run.run_dir, run.recipe.hash)
    if state.kind == "refused":
        raise UsageError(state.problem)
    return state.kind, state.record


__all__ = ["RunState", "existing_state", "read_state"]
