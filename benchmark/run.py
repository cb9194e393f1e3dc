"""Run a benchmark sweep (the command line is described in ``benchmark/sweep/options.py``).

python benchmark/run.py --help
"""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.errors import UsageError  # noqa: E402
from benchmark.sweep.console import EXIT_USAGE  # noqa: E402
from benchmark.sweep.in_process import run_sweep  # noqa: E402
from benchmark.sweep.options import parse_args  # noqa: E402


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or a user's kill): stop like Ctrl-C, leaving resumable runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning, module="mmengine")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.nproc < 1:
            raise UsageError("--nproc must be at least 1")
        if args.status:
            from benchmark.sweep.status import print_status

            return print_status(args)
        if args.cluster:
            from benchmark.sweep.cluster.submit import submit_sweep

            return submit_sweep(args)
        return run_sweep(args)
    except UsageError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"{what}: runs in progress keep their last checkpoint; run the same command again to resume",
            file=sys.stderr,
        )
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
