"""A new suite is one file: registered from tests/, it plans, trains, records and tabulates through the real CLI.

No module of ``benchmark/train``, ``benchmark/sweep`` or ``benchmark/report`` knows this suite:
everything they need is declared on its :class:`~benchmark.suites.Suite` (pairs, recipes, dataset
config, method defaults, and the hooks with their defaults).
"""

from __future__ import annotations

import csv
from typing import Any

import pytest

from benchmark.store.records import read_record
from benchmark.suites import _SUITES as REGISTERED
from benchmark.suites import Pair, ResolvedRecipe, Schedule, Suite, get_suite, register_suite

NAME = "digits_wide_student"


def one_epoch(pair: Pair, method: str, method_cfg: dict[str, Any]) -> ResolvedRecipe:
    schedule = Schedule(epochs=1, batch_size=128, lr=0.05, kind="step", milestones=(1,))
    return ResolvedRecipe("unified", schedule, {"type": method, **method_cfg})


@pytest.fixture
def test_suite():
    """A second digits variant: its own student (a CNN of width 16), its own recipe, declared only here."""
    from benchmark.models.registry import _MODEL_ENTRIES, register_model
    from benchmark.models.small_cnn import TAPS, SmallCNN

    register_model(taps=TAPS, name="small_cnn_w16")(lambda num_classes=10: SmallCNN(16, num_classes))
    suite = register_suite(
        Suite(
            name=NAME,
            num_classes=10,
            pairs=(Pair("small_cnn_w32", "small_cnn_w16"),),
            recipes={"unified": one_epoch},
            dataset_base="digits",
            needs_data_root=False,
            cpu_threads=1,
            description="digits with a wider student (test-only)",
        )
    )
    yield suite
    REGISTERED.pop(NAME)
    _MODEL_ENTRIES.pop("small_cnn_w16")


def test_a_suite_registered_from_tests_runs_end_to_end(test_suite, tmp_path, capsys):
    from benchmark.run import main

    assert get_suite(NAME) is test_suite
    out_dirs = ["--work-dir", str(tmp_path / "w"), "--tables", str(tmp_path / "t"), "--reports", str(tmp_path / "r")]
    assert main(["--suite", NAME, "--methods", "kd", "--seeds", "1", *out_dirs]) == 0
    record = read_record(
        tmp_path / "w" / NAME / "unified" / "small_cnn_w32-small_cnn_w16" / "kd" / "seed0" / "record.json"
    )
    assert record.status == "completed" and record.suite == NAME and record.epochs == 1
    rows = list(csv.DictReader((tmp_path / "t" / f"{NAME}_last.csv").open()))
    assert {row["method"] for row in rows} == {"teacher", "ce", "kd"}
    assert all(row["student"] == "small_cnn_w16" for row in rows if row["method"] != "teacher")
