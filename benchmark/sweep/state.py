"""The state of a planned run, read from its directory: new, completed, failed or interrupted."""
from __future__ import annotations


from benchmark.errors import UsageError
from benchmark.store.records import RecordError, RunRecord, read_record

from benchmark.sweep.plan import PlannedRun


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
