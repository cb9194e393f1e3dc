"""ONE run on MMEngine, in one process or N (DDP); never imports ``sweep/``.

``config`` builds a run's complete MMEngine config (the suite's part + the run-level overlay),
``trainer`` trains it in this process (one rank), ``launch.execute`` resumes or starts it here or
on N ranks; every MMEngine registration of the suite's training lives in ``hooks`` and ``model``.
"""

from __future__ import annotations

import benchmark.data  # noqa: F401  (the datasets and the batch preprocessor register themselves there)

from . import cohort, hooks, model  # noqa: F401  (the MMEngine registrations: metrics, hooks, wrappers, models)
from .config import CONFIG_DIR, RunSpec, apply_run_overlay, build_config
from .launch import execute, execute_cohort
from .trainer import STUDENT_EXPORT, new_record, suite_metrics, train

__all__ = [
    "CONFIG_DIR",
    "STUDENT_EXPORT",
    "RunSpec",
    "apply_run_overlay",
    "build_config",
    "execute",
    "execute_cohort",
    "new_record",
    "suite_metrics",
    "train",
]
