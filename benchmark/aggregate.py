"""Aggregate run records into paper-style tables, plots and a report index.

Usage::

    python benchmark/aggregate.py --work-dir work_dirs [--work-dir W2 ...] \\
        [--tables tables] [--reports reports] [--bench-json reports/bench/loss_complexity.json]

or, from the runner at the end of a sweep::

    from benchmark.report.aggregate import aggregate
    summary = aggregate(["work_dirs"], "tables", "reports")

Every ``record.json`` under the work dirs is read (recursively). Corrupt, partial or
unknown-schema files, failed and still-running runs (and duplicates of a run) are
skipped with one warning line each and counted. For each suite it writes
``<suite>_last.{md,tex,csv}`` (last-epoch top-1, the default) and
``<suite>_best.{md,tex,csv}`` to the tables dir (for a suite with several metrics per pair,
e.g. COCO: AP / AP50 / AP75 per pair, the best epoch chosen by mAP), the plots to the reports dir and
``reports/index.md`` (+ ``index.html``). Same records in, byte-identical files out.

Exit codes of the CLI: 0 ok, 1 no usable record, 2 a work dir does not exist.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark.report.aggregate import BENCH_JSON, AggregateSummary, aggregate  # noqa: E402

__all__ = ["AggregateSummary", "aggregate", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        dest="work_dirs",
        action="append",
        metavar="DIR",
        help="directory searched recursively for record.json (repeatable; default: work_dirs)",
    )
    parser.add_argument("--tables", default="tables", help="output dir of the tables (default: tables)")
    parser.add_argument("--reports", default="reports", help="output dir of the plots and index (default: reports)")
    parser.add_argument(
        "--bench-json",
        default=None,
        help=f"loss-complexity benchmark JSON (default: <reports>/{BENCH_JSON.as_posix()})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-record warnings")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
        )
    work_dirs = args.work_dirs or ["work_dirs"]
    missing = [w for w in work_dirs if not Path(w).is_dir()]
    if missing:
        print(f"error: work dir not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = aggregate(work_dirs, args.tables, args.reports, args.bench_json)
    if not summary.ok:
        print(
            f"error: no usable run record under {', '.join(work_dirs)} "
            f"({summary.found} record files: {summary.counts_line()})",
            file=sys.stderr,
        )
        return 1
    print(f"{summary}; index: {summary.index[0].as_posix()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
