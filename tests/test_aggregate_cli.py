"""The aggregator's command line and edge cases (benchmark/aggregate.py, benchmark/report/).

Exit codes and one-line errors of ``main`` and of the script run as a user runs it, the API's
error on a missing work dir, a suite name that is not a safe file name, and the marks of table
rows that mix DDP world sizes or hold a recipe that is not a reference recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmark.aggregate import AggregateSummary, aggregate, main
from benchmark.report import synthetic
from benchmark.report.synthetic import make_record
from benchmark.store.records import write_record
from tests.aggregate_fixtures import ROOT

# --------------------------------------------------------------------------- CLI


def test_cli_missing_work_dir(tmp_path, capsys):
    assert main(["--work-dir", str(tmp_path / "nope"), "--tables", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "work dir not found" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_cli_empty_and_ok(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "--work-dir",
                str(tmp_path / "empty"),
                "--tables",
                str(tmp_path / "t"),
                "--reports",
                str(tmp_path / "r"),
                "-q",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "no usable run record" in err and err.count("\n") == 1
    synthetic.write(tmp_path / "w", make_record("s", "t", "st", "kd", 0, 70.0))
    assert (
        main(
            [
                "--work-dir",
                str(tmp_path / "w"),
                "--work-dir",
                str(tmp_path / "empty"),
                "--tables",
                str(tmp_path / "t"),
                "--reports",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    assert "1 loaded, 0 skipped (corrupt), 0 failed runs, 0 running" in capsys.readouterr().out
    assert (tmp_path / "t" / "s_last.md").is_file() and (tmp_path / "r" / "index.html").is_file()


def test_cli_script_exit_code(tmp_path):
    """``python benchmark/aggregate.py`` works as a script (no PYTHONPATH) and fails in one line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmark" / "aggregate.py"), "--work-dir", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: work dir not found: {tmp_path / 'missing'}"]


def test_aggregate_api_raises_on_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        aggregate([tmp_path / "missing"], tmp_path / "t", tmp_path / "r")
    assert AggregateSummary().counts_line() == "0 loaded, 0 skipped (corrupt), 0 failed runs, 0 running"


def test_odd_suite_name_is_a_safe_file_name(tmp_path):
    write_record(make_record("../odd suite", "t", "st", "kd", 0, 70.0), tmp_path / "w" / "run")
    summary = aggregate(tmp_path / "w", tmp_path / "t", tmp_path / "r")
    assert summary.suites == ["../odd suite"]
    assert sorted(p.name for p in summary.tables)[0] == "_odd_suite_best.csv"
    assert all(p.parent == tmp_path / "t" for p in summary.tables)
    assert "# ../odd suite: top-1" in (tmp_path / "t" / "_odd_suite_last.md").read_text()


def test_rows_mixing_world_sizes_are_marked(tmp_path):
    """Seeds of one row run on 1 and on 2 DDP processes: the table says so; a row on one size does not."""
    from benchmark.report.synthetic import ENV, make_record, write

    for seed in (0, 1):
        write(
            tmp_path / "w",
            make_record(
                "digits", "small_cnn_w32", "small_cnn_w8", "kd", seed, 90.0 + seed, env={**ENV, "world_size": 1 + seed}
            ),
        )
        write(
            tmp_path / "w",
            make_record(
                "digits", "small_cnn_w32", "small_cnn_w8", "dkd", seed, 91.0 + seed, env={**ENV, "world_size": 2}
            ),
        )
    aggregate([tmp_path / "w"], tmp_path / "t", tmp_path / "r")
    text = (tmp_path / "t" / "digits_last.md").read_text()
    assert "Rows mixing runs on different numbers of DDP processes: KD (1, 2 processes)." in text
    assert "DKD (" not in text.split("Rows mixing runs")[1].split("\n")[0]


def test_rows_of_non_reference_recipes_are_marked(tmp_path):
    """A recipe whose notes say "not a reference recipe" (FitNet on ImageNet) gets ¶ and a footnote."""
    from benchmark.report.synthetic import make_record, write

    for seed in (0, 1):
        write(
            tmp_path / "w",
            make_record(
                "digits",
                "small_cnn_w32",
                "small_cnn_w8",
                "fitnet",
                seed,
                90.0 + seed,
                extra={"recipe": {"notes": ["hint at stride 8; not a reference recipe"]}},
            ),
        )
        write(
            tmp_path / "w",
            make_record(
                "digits", "small_cnn_w32", "small_cnn_w8", "kd", seed, 91.0 + seed, extra={"recipe": {"notes": []}}
            ),
        )
    aggregate([tmp_path / "w"], tmp_path / "t", tmp_path / "r")
    text = (tmp_path / "t" / "digits_last.md").read_text()
    assert "| FitNet ¶" in text and "| KD ¶" not in text
    assert "¶: not a reference recipe" in text
