"""Submission markers: ``<run_dir>/submitted.json`` says which job was submitted for a run, atomically."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.sweep.cluster.base import MARKER_FILE

# --------------------------------------------------------------------------- submission markers


@dataclass
class Marker:
    cluster: str  # "slurm" | "local"
    job_id: str
    host: str
    time: float
    log: str | None = None
    role: str = "run"
    previous: list = field(default_factory=list)

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))

    def describe(self) -> str:
        return f"job {self.job_id}" if self.cluster == "slurm" else f"local job {self.job_id} on {self.host}"


def read_marker(run_dir: str | os.PathLike) -> Marker | None:
    path = Path(run_dir) / MARKER_FILE
    try:
        data = json.loads(path.read_text())
        return Marker(
            str(data["cluster"]),
            str(data["job_id"]),
            str(data["host"]),
            float(data["time"]),
            data.get("log"),
            data.get("role", "run"),
            list(data.get("previous", [])),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: as if never submitted (the run's claim still guards it)


def write_marker(run_dir: str | os.PathLike, cluster: str, job_id: str, log: str | None, role: str = "run") -> Marker:
    from benchmark.store.atomic import write_text

    old = read_marker(run_dir)
    previous = ([{"cluster": old.cluster, "job_id": old.job_id, "time": old.time}] + old.previous)[:10] if old else []
    marker = Marker(cluster, str(job_id), socket.gethostname(), time.time(), log, role, previous)
    data = {
        "cluster": marker.cluster,
        "job_id": marker.job_id,
        "host": marker.host,
        "time": marker.time,
        "submitted_at": marker.when,
        "log": log,
        "role": role,
        "previous": previous,
    }
    write_text(Path(run_dir) / MARKER_FILE, json.dumps(data, indent=1, sort_keys=True) + "\n")
    return marker


# --------------------------------------------------------------------------- the scheduler's view
