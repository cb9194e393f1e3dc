"""What the scheduler (Slurm, or the local processes) says about the jobs, asked once per poll."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable

from benchmark.sweep.cluster.base import (
    FRESH_SUBMISSION_S,
    LIVE_STATES,
    PENDING,
    RUNNING,
    SCHEDULER_TIMEOUT_S,
)
from benchmark.sweep.cluster.markers import Marker


def _local_alive(pid: int) -> bool:
    """A local job's controller (submitit.local._local) is alive: not gone, not a zombie, not another program."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            return b"submitit" in proc.joinpath("cmdline").read_bytes()
        except (OSError, IndexError):
            return False
    return True


class SchedulerView:
    """Job states for submission markers: Slurm through sacct (or squeue), local jobs by their pid.

    ``state(marker)`` is a Slurm-like state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED`` ...,
    ``ENDED`` for a local job that is gone) or None when it cannot be known (scheduler not answering,
    a local job of another host).
    """

    def __init__(self) -> None:
        self.slurm: dict[str, str] = {}
        self.slurm_answering: bool | None = None  # None: never asked (no Slurm marker)
        self.slurm_error = ""

    def refresh(self, markers: Iterable[Marker]) -> "SchedulerView":
        ids = sorted({m.job_id.split("_")[0] for m in markers if m and m.cluster == "slurm"})
        self.slurm = {}
        if not ids:
            self.slurm_answering = None
            return self
        self.slurm_error = ""
        answer = self._sacct(ids)
        if answer is None:
            answer = self._squeue(ids)
        self.slurm_answering = answer is not None
        self.slurm = answer or {}
        return self

    def _run(self, command: list[str]) -> str | None:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        else:
            if done.returncode == 0:
                return done.stdout
            why = ((done.stderr or done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        self.slurm_error = "; ".join(filter(None, [self.slurm_error, f"{command[0]}: {why}"]))
        return None

    def _sacct(self, ids: list[str]) -> dict[str, str] | None:
        from submitit.slurm.slurm import SlurmInfoWatcher

        command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
        for job_id in ids:
            command += ["-j", job_id]
        out = self._run(command)
        if out is None:
            return None
        info = SlurmInfoWatcher().read_info(out)
        return {job: (stats.get("State") or "UNKNOWN").split()[0] for job, stats in info.items()}

    def _squeue(self, ids: list[str]) -> dict[str, str] | None:
        from submitit.slurm.slurm import read_job_id

        out = self._run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
        if out is None:
            return None
        states: dict[str, str] = {}
        for line in out.splitlines():
            if "|" not in line:
                continue
            job, state = (part.strip() for part in line.split("|", 1))
            for parts in read_job_id(job):
                states["_".join(parts[:2])] = state
                if len(parts) >= 3:
                    for index in range(int(parts[1]), int(parts[2]) + 1):
                        states[f"{parts[0]}_{index}"] = state
        # squeue lists only jobs that are still there: the others have ended
        for job_id in ids:
            states.setdefault(job_id, "ENDED")
        return states

    def state(self, marker: Marker | None) -> str | None:
        if marker is None:
            return None
        if marker.cluster == "local":
            if marker.host != socket.gethostname():
                return None
            try:
                return RUNNING if _local_alive(int(marker.job_id)) else "ENDED"
            except ValueError:
                return None
        if not self.slurm_answering:
            return None
        state = self.slurm.get(marker.job_id)
        if state is None and "_" in marker.job_id:
            state = self.slurm.get(marker.job_id.split("_")[0])  # squeue: an array no longer listed has ended
        if state is None:  # not listed: just submitted (accounting lags), or long gone
            return PENDING if time.time() - marker.time < FRESH_SUBMISSION_S else "ENDED"
        return state

    @staticmethod
    def live(state: str | None) -> bool:
        return state in LIVE_STATES
