"""``benchmark/run.py`` in its own process, without paying for the imports each time.

A new ``python benchmark/run.py`` spends about 8 of its 12 s (digits, 2 epochs, 2-core CPU)
importing torch, torchvision, MMEngine and scikit-learn. :func:`run_cli` and :class:`Cli` run the
command line's ``main(argv)`` in a process forked from a ``multiprocessing`` fork server that has
imported those modules once (one server per test process). The child is a process of its own —
its own pid, signals and exit status (``-N`` when killed by signal N, as ``subprocess`` reports it),
its own stdout/stderr, working directory and environment, and nothing inherited from the test
process (no file descriptors, locks or threads) — that starts in milliseconds.

What only a fresh interpreter shows, output printed while importing, is checked by the tests that
keep ``python benchmark/run.py`` (``fresh=True``): one of the one-line error checks and the DDP
launches.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_PY = str(REPO / "benchmark" / "run.py")
# What a run imports (a sweep, its runs, aggregation, --status, --cluster): imported once, in the server.
PRELOAD = [
    "benchmark.run",
    "benchmark.sweep.in_process",
    "benchmark.sweep.status",
    "benchmark.train.launch",
    "benchmark.data",
    "benchmark.report.build",
    "mmengine.runner",
    "sklearn.datasets",
]
_context = None


def _server():
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        # The server is a new interpreter that inherits this environment: it must find the repository.
        path = os.environ.get("PYTHONPATH", "")
        if str(REPO) not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [path])])
        _context = context
    return _context


def server():
    """The ``multiprocessing`` context whose processes are forked from the server that has imported ``PRELOAD``."""
    return _server()


def _ranks_from_a_fork_server() -> None:
    """``--nproc`` ranks started from a fork server that has imported ``PRELOAD`` once, instead of spawned.

    Their arguments are pickled to them as with ``spawn`` (the launch's contract); only the imports of
    each new interpreter are saved. The server is this process's own (started at the first launch).
    """
    import torch.multiprocessing

    start_processes = torch.multiprocessing.start_processes

    def from_fork_server(*args, **kwargs):
        _server()
        return start_processes(*args, **{**kwargs, "start_method": "forkserver"})

    torch.multiprocessing.start_processes = from_fork_server


def _child(
    argv: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str, ranks_forked: bool = False
) -> None:
    """In the forked process: what ``python benchmark/run.py ARGV`` does once its imports are done."""
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    # As Python sets them up for pipes: stdout block-buffered (lost if killed), stderr line-buffered.
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [RUN_PY, *argv]
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if ranks_forked:
        _ranks_from_a_fork_server()
    from benchmark.run import main

    code = main(list(argv))
    atexit._run_exitfuncs()  # what the interpreter runs at exit
    sys.exit(code)


class Cli:
    """``benchmark/run.py ARGS`` started in its own process (see the module's docstring); ``wait`` ends it."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | str | None = None,
        fresh: bool = False,
        ranks_forked: bool = False,
    ) -> None:
        self.args = [str(a) for a in args]
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = str(REPO)
        self._dir = Path(tempfile.mkdtemp(prefix="cli-"))
        self._out, self._err = self._dir / "stdout", self._dir / "stderr"
        cwd = str(cwd or REPO)
        if fresh:
            with self._out.open("w") as out, self._err.open("w") as err:
                self._proc = subprocess.Popen(
                    [sys.executable, RUN_PY, *self.args], cwd=cwd, env=env, stdout=out, stderr=err
                )
            self.pid = self._proc.pid
        else:
            self._proc = _server().Process(
                target=_child, args=(self.args, env, cwd, str(self._out), str(self._err), ranks_forked)
            )
            self._proc.start()
            self.pid = self._proc.pid

    def _returncode(self, timeout: float) -> int | None:
        if isinstance(self._proc, subprocess.Popen):
            try:
                return self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self._proc.join(timeout)
        return self._proc.exitcode

    def kill(self) -> None:
        if self._returncode(0) is None:
            self._proc.kill()
        self._returncode(30)

    def wait(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Its exit status and output once it has exited; killed (and TimeoutExpired raised) after ``timeout``."""
        code = self._returncode(timeout)
        if code is None:
            self.kill()
        out, err = (path.read_text(errors="replace") if path.exists() else "" for path in (self._out, self._err))
        shutil.rmtree(self._dir, ignore_errors=True)
        if code is None:
            raise subprocess.TimeoutExpired([RUN_PY, *self.args], timeout, out, err)
        return subprocess.CompletedProcess([RUN_PY, *self.args], code, out, err)


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 300,
    fresh: bool = False,
    ranks_forked: bool = False,
) -> subprocess.CompletedProcess:
    """``benchmark/run.py ARGS`` to its end: exit status, stdout, stderr (``fresh``: a new interpreter;
    ``ranks_forked``: its ``--nproc`` ranks from a fork server instead of spawned)."""
    return Cli(*args, env=env, cwd=cwd, fresh=fresh, ranks_forked=ranks_forked).wait(timeout)
