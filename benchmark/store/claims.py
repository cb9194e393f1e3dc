"""Claims on run directories: one process at a time executes a run, never two.

A sweep claims a run directory (a student run or a teacher's) before it reads its state
or touches anything in it, and releases it when the run ends. Two sweeps on one work dir
— two terminals, or array jobs on shared storage — then never execute the same run.

Two mechanisms, one interface (:func:`claim`):

- ``flock`` (default): an exclusive, non-blocking ``fcntl.flock`` on ``<run_dir>/.claim``.
  The kernel releases it when the holder dies, however it dies, so there are no stale claims.
  The holder writes who it is (host, pid, since) into the file for the others' messages.
- ``lease``, for filesystems where locks are unreliable (some NFS set-ups) — chosen with
  ``KD_CLAIM=lease``, or automatically when ``flock`` is not supported: ``<run_dir>/.lease``
  is created exclusively (``O_EXCL``) with host, pid and a heartbeat that a background thread
  refreshes every ``HEARTBEAT_S`` seconds. A lease whose heartbeat is older than ``STALE_S``
  (or whose process is gone, on the same host) is stale: it is taken over, and that is said.

:func:`holder_of` (status, plans, a job checking who beat it) only looks: it takes a *shared*
lock for an instant (``flock``) or reads the lease, so a probe never makes a claim fail. A
claimant that finds only such probes (the shared lock is still available) waits them out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

CLAIM_FILE = ".claim"
LEASE_FILE = ".lease"
HEARTBEAT_S = float(os.environ.get("KD_CLAIM_HEARTBEAT_S", 30))
STALE_S = float(os.environ.get("KD_CLAIM_STALE_S", 120))
PROBE_GRACE_S = 10.0  # a claimant waits this long at most for momentary probes (holder_of) to let go


class ClaimHeld(Exception):
    """The run directory is claimed by another live process."""

    def __init__(self, run_dir: Path, holder: str) -> None:
        super().__init__(f"{run_dir} is held by {holder}")
        self.run_dir, self.holder = run_dir, holder


@dataclass
class Holder:
    host: str
    pid: int
    since: float
    heartbeat: float

    @classmethod
    def me(cls) -> "Holder":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host} since {started}"

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def parse(cls, text: str) -> "Holder | None":
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), float(data["since"]), float(data["heartbeat"]))
        except (ValueError, KeyError, TypeError):
            return None


def _describe(text: str) -> str:
    holder = Holder.parse(text)
    return holder.describe() if holder else "another process (no holder information yet)"


def mechanism() -> str:
    return "lease" if os.environ.get("KD_CLAIM", "").lower() == "lease" else "flock"


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, say: Callable[[str], object] = print) -> Iterator[Holder]:
    """Hold ``run_dir`` for the duration of the block; raises :class:`ClaimHeld` at once if taken."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if mechanism() == "flock":
        try:
            with _flock(run_dir) as holder:
                yield holder
            return
        except _FlockUnsupported:
            say(f"note: file locks are not supported under {run_dir}; using a heartbeat lease instead")
    with _lease(run_dir, say) as holder:
        yield holder


def holder_of(run_dir: str | os.PathLike) -> str | None:
    """Who holds ``run_dir`` right now (for plans and status), or None; takes nothing.

    It must not claim the directory to find out: a claim taken for a look would make a real
    claimant fail at that instant (a job would skip its run as "held", and a second look by
    that job could even see the looker as the holder and give the run up).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    if mechanism() == "flock":
        try:
            return _flock_holder(run_dir)
        except _FlockUnsupported:
            pass
    return _lease_holder(run_dir)


class _FlockUnsupported(Exception):
    pass


_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _flock_nb(fd: int, operation: int) -> bool:
    """A non-blocking flock: True if taken, False if another open file holds a conflicting lock."""
    import fcntl

    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise _FlockUnsupported() from None
        raise
    return True


def _only_probes(fd: int) -> bool:
    """The exclusive lock was refused: True if only shared locks (probes) are in the way."""
    import fcntl

    if not _flock_nb(fd, fcntl.LOCK_SH):
        return False  # an exclusive holder: a real claim
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _flock_holder(run_dir: Path) -> str | None:
    import fcntl

    path = run_dir / CLAIM_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None  # never claimed
    try:
        if _flock_nb(fd, fcntl.LOCK_SH):  # shared: other lookers do not conflict, a claim does
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _describe(path.read_text())
    finally:
        os.close(fd)


def _lease_holder(run_dir: Path) -> str | None:
    path = run_dir / LEASE_FILE
    try:
        current = Holder.parse(path.read_text())
        if _stale(current, path):
            return None  # the next claimant takes it over
    except FileNotFoundError:
        return None
    return current.describe() if current else "another process (no holder information yet)"


@contextlib.contextmanager
def _flock(run_dir: Path) -> Iterator[Holder]:
    import fcntl

    path = run_dir / CLAIM_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None
        while not _flock_nb(fd, fcntl.LOCK_EX):
            if not _only_probes(fd):
                raise ClaimHeld(run_dir, _describe(path.read_text()))
            # Only holder_of() looks are in the way: they let go within microseconds.
            deadline = deadline or time.monotonic() + PROBE_GRACE_S
            if time.monotonic() > deadline:
                raise ClaimHeld(run_dir, "processes that keep looking at it (holder_of) for longer than expected")
            time.sleep(0.001)
        holder = Holder.me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.to_json().encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # released: nobody holds it (the file stays, the lock goes)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _stale(holder: Holder | None, path: Path) -> bool:
    now = time.time()
    if holder is None:  # unreadable: judge by the file's age
        return now - path.stat().st_mtime > STALE_S
    if holder.host == socket.gethostname() and holder.pid != os.getpid():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return now - holder.heartbeat > STALE_S


@contextlib.contextmanager
def _lease(run_dir: Path, say: Callable[[str], object]) -> Iterator[Holder]:
    path = run_dir / LEASE_FILE
    holder = Holder.me()
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                current = Holder.parse(path.read_text())
                stale = _stale(current, path)
            except FileNotFoundError:  # released between our two looks: try again
                continue
            if not stale:
                raise ClaimHeld(run_dir, current.describe() if current else "another process") from None
            aside = path.with_name(f"{LEASE_FILE}.stale-{int(time.time())}-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)  # only one taker wins the O_EXCL create below
                say(
                    f"taking over the stale claim of {current.describe() if current else 'an unknown process'} on {run_dir}"
                )
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(holder.to_json())
        break
    else:
        raise ClaimHeld(run_dir, "another process (the lease changed hands while we looked)")

    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            holder.heartbeat = time.time()
            tmp = path.with_name(f".{LEASE_FILE}.{os.getpid()}.tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(holder.to_json())
                os.replace(tmp, path)

    thread = threading.Thread(target=beat, name=f"lease-heartbeat {run_dir}", daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["claim", "holder_of", "ClaimHeld", "Holder", "mechanism", "CLAIM_FILE", "LEASE_FILE"]
