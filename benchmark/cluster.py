"""Kept for one release: submitit jobs queued before the move to ``benchmark.sweep.cluster`` unpickle."""

from benchmark.sweep.cluster.jobs import RunJob, TeacherJob  # noqa: F401
