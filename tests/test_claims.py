"""Run-directory claims: flock (default) and the heartbeat lease (for filesystems without locks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.store import claims
from benchmark.store.claims import ClaimHeld, claim, holder_of

REPO = Path(__file__).resolve().parent.parent
quiet = dict(say=lambda _line: None)


@pytest.fixture(params=["flock", "lease"])
def mechanism(request, monkeypatch):
    monkeypatch.setenv("KD_CLAIM", request.param)
    return request.param


def test_a_claimed_directory_is_refused_naming_the_holder_and_free_again_after(mechanism, tmp_path):
    with claim(tmp_path / "run", **quiet):
        with pytest.raises(ClaimHeld, match=f"held by pid {os.getpid()} on "):
            with claim(tmp_path / "run", **quiet):
                pass
        assert holder_of(tmp_path / "run").startswith(f"pid {os.getpid()} on ")
    assert holder_of(tmp_path / "run") is None
    with claim(tmp_path / "run", **quiet):  # released: can be claimed again
        pass


def _hold_in_child(run_dir: Path, mechanism: str) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from benchmark.store.claims import claim\n"
        f"with claim({str(run_dir)!r}, say=lambda _l: None):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "KD_CLAIM": mechanism}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_killed_holder_does_not_leave_a_claim_behind(mechanism, tmp_path):
    child = _hold_in_child(tmp_path / "run", mechanism)
    try:
        with pytest.raises(ClaimHeld, match=f"pid {child.pid}"):
            with claim(tmp_path / "run", **quiet):
                pass
    finally:
        child.kill()
        child.wait()
    said: list[str] = []
    with claim(tmp_path / "run", say=said.append):  # flock: released by the kernel; lease: holder's pid is gone
        pass
    if mechanism == "lease":
        assert any("taking over the stale claim" in line and str(child.pid) in line for line in said)


def test_a_lease_whose_heartbeat_stopped_is_taken_over(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CLAIM", "lease")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = time.time() - 10 * claims.STALE_S
    # Another host: its pid cannot be checked, only its heartbeat.
    (run_dir / claims.LEASE_FILE).write_text(
        json.dumps({"host": "node-17", "pid": 4242, "since": old, "heartbeat": old})
    )
    said: list[str] = []
    with claim(run_dir, say=said.append) as holder:
        assert holder.pid == os.getpid()
    assert any("stale claim of pid 4242 on node-17" in line for line in said)
    assert list(run_dir.glob(claims.LEASE_FILE + ".stale-*"))  # set aside, not deleted


def test_a_live_lease_from_another_host_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CLAIM", "lease")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    now = time.time()
    (run_dir / claims.LEASE_FILE).write_text(
        json.dumps({"host": "node-17", "pid": 4242, "since": now, "heartbeat": now})
    )
    with pytest.raises(ClaimHeld, match="pid 4242 on node-17"):
        with claim(run_dir, **quiet):
            pass


def test_the_lease_heartbeat_is_refreshed(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CLAIM", "lease")
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    with claim(tmp_path / "run", **quiet) as holder:
        first = json.loads((tmp_path / "run" / claims.LEASE_FILE).read_text())["heartbeat"]
        deadline = time.time() + 120
        while (
            json.loads((tmp_path / "run" / claims.LEASE_FILE).read_text())["heartbeat"] == first
            and time.time() < deadline
        ):
            time.sleep(0.05)
        assert json.loads((tmp_path / "run" / claims.LEASE_FILE).read_text())["heartbeat"] > first
        assert holder.heartbeat > holder.since
    assert not (tmp_path / "run" / claims.LEASE_FILE).exists()  # released


def test_a_look_in_progress_never_makes_a_claim_fail(monkeypatch, tmp_path):
    """holder_of() takes a shared lock for an instant; a claimant that meets one waits it out."""
    import fcntl
    import threading

    monkeypatch.setenv("KD_CLAIM", "flock")
    run_dir = tmp_path / "run"
    with claim(run_dir, **quiet):
        pass
    look = os.open(run_dir / claims.CLAIM_FILE, os.O_RDONLY)
    fcntl.flock(look, fcntl.LOCK_SH)  # what holder_of() holds while it looks
    refused_once = threading.Event()
    only_probes = claims._only_probes

    def spy(fd):
        result = only_probes(fd)
        refused_once.set()
        return result

    monkeypatch.setattr(claims, "_only_probes", spy)

    def finish_the_look():
        assert refused_once.wait(120)  # the claimant met the look ...
        os.close(look)  # ... and the look ends (closing drops the lock)

    looker = threading.Thread(target=finish_the_look)
    looker.start()
    try:
        with claim(run_dir, **quiet) as holder:
            assert holder.pid == os.getpid()
            assert refused_once.is_set()
    finally:
        looker.join()
    assert holder_of(run_dir) is None


@pytest.mark.parametrize("mechanism_name", ["flock", "lease"])
def test_looks_from_another_process_never_refuse_a_claim(mechanism_name, monkeypatch, tmp_path):
    """A process calling holder_of() in a loop (a --status or a --wait poll) while claims come and go."""
    monkeypatch.setenv("KD_CLAIM", mechanism_name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = (
        "import os, sys\n"
        "from benchmark.store.claims import holder_of\n"
        f"run_dir = {str(run_dir)!r}\n"
        "print('looking', flush=True)\n"
        "while not os.path.exists(os.path.join(run_dir, 'stop')):\n"
        "    holder_of(run_dir)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "KD_CLAIM": mechanism_name}
    looker = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert looker.stdout.readline().strip() == "looking"
        for _ in range(500):
            with claim(run_dir, **quiet):  # raised ClaimHeld ~1% (flock) / ~40% (lease) of the time when a look claimed
                pass
    finally:
        (run_dir / "stop").touch()
        looker.wait(120)
    assert looker.returncode == 0


def test_a_look_takes_nothing_over_and_creates_nothing(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("KD_CLAIM", "flock")
    assert holder_of(run_dir) is None and not (run_dir / claims.CLAIM_FILE).exists()
    monkeypatch.setenv("KD_CLAIM", "lease")
    old = time.time() - 10 * claims.STALE_S
    stale = json.dumps({"host": "node-17", "pid": 4242, "since": old, "heartbeat": old})
    (run_dir / claims.LEASE_FILE).write_text(stale)
    assert holder_of(run_dir) is None  # stale: whoever claims next takes it over, not a look
    assert (run_dir / claims.LEASE_FILE).read_text() == stale and not list(run_dir.glob(claims.LEASE_FILE + ".stale-*"))
