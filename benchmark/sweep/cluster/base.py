"""What the cluster modules share: job states, limits and polling (exit codes and printing: the console's)."""

from __future__ import annotations

import os

from benchmark.sweep.console import EXIT_FAILED, EXIT_HELD, say  # noqa: F401  (one table, one printer)

MARKER_FILE = "submitted.json"
JOBS_DIR = "jobs"  # under --work-dir: submitit's pickles, sbatch files and job logs (<job id>_0_log.out)
SIGNAL_DELAY_S = 90  # USR2 this long before the time limit: checkpoint() requeues the job
MAX_TIMEOUTS = 20  # requeues after a time-out before submitit gives up (preemptions do not count)
DEFAULT_TIME_LIMIT_MIN = 24 * 60
LOCAL_TIMEOUT_MIN = 365 * 24 * 60  # LocalExecutor kills a job after its timeout (2 minutes by default)
SCHEDULER_TIMEOUT_S = 30
FRESH_SUBMISSION_S = 300  # a job the scheduler does not list yet is taken as queued for this long

# Slurm job states: still going (the run may yet execute) vs ended.
LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "RESV_DEL_HOLD",
    "STOPPED",
}
RUNNING, PENDING = "RUNNING", "PENDING"


def poll_seconds(cluster: str) -> float:
    default = 30.0 if cluster == "slurm" else 1.0
    return float(os.environ.get("KD_CLUSTER_POLL_S", default))


# --------------------------------------------------------------------------- command lines
