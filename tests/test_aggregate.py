"""Tests of the aggregator (benchmark/aggregate.py, benchmark/report/) on the fixture records.

The fixture records in tests/fixtures/records/ are written by
:func:`tests.aggregate_fixtures.build_fixture_records` (and checked against it here). The
golden tables in tests/golden/aggregate/ are compared byte for byte (here, and the COCO
tables in tests/test_aggregate_coco.py); to rewrite all of them after an intended change::

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_aggregate.py tests/test_aggregate_coco.py -q

Also here: skipping and counting bad records, Welch marks, Δ against published numbers,
footnotes, determinism, plots and the index. The command line and edge cases are in
tests/test_aggregate_cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from benchmark.aggregate import aggregate
from benchmark.report import synthetic
from benchmark.report.load import load_records
from benchmark.report.published import load_published
from benchmark.report.synthetic import make_record
from benchmark.report.tables import build_suite_tables, suite_pair_order, welch_p
from benchmark.store.records import SCHEMA_VERSION
from tests.aggregate_fixtures import (
    CIFAR,
    CIFAR_COMMUNITY,
    CIFAR_COMMUNITY_VALUES,
    CIFAR_VALUES,
    COMMUNITY_SHA,
    FIXTURE_VALUES,
    FIXTURES,
    GOLDEN,
    P1,
    P2,
    UPDATE,
    build_fixture_records,
)

# The tidy CSV prints floats with "%.4f": a number read back from it is within half a unit of
# the 4th decimal (5e-5) of the float64 the tables computed (whose own rounding error, a mean
# or std of <= 3 values near 100, is ~1e-13), so 5e-5 + a margin is the tolerance against
# a value computed here another way.
CSV_TOL = 1e-4


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixture_records_are_up_to_date(tmp_path):
    build_fixture_records(tmp_path / "records")
    fresh = _files(tmp_path / "records")
    if UPDATE:
        shutil.rmtree(FIXTURES, ignore_errors=True)
        shutil.copytree(tmp_path / "records", FIXTURES)
    assert _files(FIXTURES) == fresh, "fixtures differ from build_fixture_records(); run with UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    """The fixtures aggregated once (with a loss-complexity benchmark JSON)."""
    out = tmp_path_factory.mktemp("agg")
    bench = out / "reports" / "bench" / "loss_complexity.json"
    bench.parent.mkdir(parents=True)
    results = [
        {"method": m, "batch_size": b, "n_data": n, "forward_backward_ms": ms * b / 64, "peak_memory_mb": mb * b / 64}
        for m, n, ms, mb in (("kd", None, 0.2, 1.0), ("crd", 50000, 1.5, 30.0), ("ckd", None, 0.4, 2.0))
        for b in (64, 128, 256)
    ]
    bench.write_text(json.dumps({"env": {"device": "cpu", "torch": "2.13.0"}, "results": results}))
    summary = aggregate([FIXTURES], out / "tables", out / "reports")
    return summary, out


def _csv(out: Path, stem: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{stem}.csv", keep_default_na=False)


def _row(frame: pd.DataFrame, pair, method: str) -> pd.Series:
    sel = frame[(frame["teacher"] == pair[0]) & (frame["student"] == pair[1]) & (frame["method"] == method)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# --------------------------------------------------------------------------- golden files


GOLDEN_NAMES = [
    f"{suite}_{stat}.{ext}"
    for suite in ("fixture", "cifar100")
    for stat in ("last", "best")
    for ext in ("md", "csv", "tex")
]


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_tables(agg, name):
    _, out = agg
    produced = (out / "tables" / name).read_bytes()
    golden = GOLDEN / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(produced)
    assert golden.is_file(), f"missing golden {golden}; run with UPDATE_GOLDEN=1"
    assert produced == golden.read_bytes(), f"{name} differs from its golden file; UPDATE_GOLDEN=1 to accept"


def test_golden_numbers_are_robust_to_the_machine():
    """The golden files were written on one machine and are compared byte for byte on others.

    That is sound only if no printed digit or mark depends on the last bits of a float64
    computation (numpy's mean / std of <= 3 values near 100, scipy's Welch p-value), which
    may differ by a few ulps (~1e-13 here) between CPUs or library builds. So every printed
    number must be far (> 1e-6 in units of its last printed decimal) from a rounding
    boundary, every p-value far (> 1e-6) from ALPHA, and the best mean of a pair clear of
    the runner-up by > 1e-9 (or exactly equal to it).
    """
    import math

    from benchmark.report.tables import ALPHA

    published = load_published()
    loaded = load_records([FIXTURES]).records
    for suite in sorted(set(loaded["suite"])):
        runs = loaded[(loaded["suite"] == suite) & ~loaded["ablation"].astype(bool)]
        for table in build_suite_tables(runs, suite, published, suite_pair_order(suite)):
            for row in table.rows:
                for pair, cell in row.cells.items():
                    for what, value in (("mean", cell.mean), ("std", cell.std), ("delta", cell.delta)):
                        if value is None or not math.isfinite(value):
                            continue
                        for decimals in (2, 4):  # md / tex print 2 decimals, the CSV 4
                            scaled = abs(value) * 10**decimals
                            gap = abs(scaled - math.floor(scaled) - 0.5)
                            assert gap > 1e-6, (suite, table.statistic, row.label, pair, what, value, decimals)
                    if cell.p_value is not None:
                        assert abs(cell.p_value - ALPHA) > 1e-6, (suite, row.label, pair, cell.p_value)
            for pair in table.pairs:
                means = sorted(
                    (r.cells[pair].mean for r in table.rows if not r.is_header and pair in r.cells), reverse=True
                )
                if len(means) > 1:
                    assert means[0] == means[1] or means[0] - means[1] > 1e-9, (suite, pair, means[:2])


def test_written_files(agg):
    summary, out = agg
    assert summary.suites == ["cifar100", "fixture"]
    names = sorted(p.name for p in summary.tables)
    assert names == sorted(
        f"{s}_{t}.{e}" for s in ("cifar100", "fixture") for t in ("last", "best") for e in ("md", "tex", "csv")
    )


# --------------------------------------------------------------------------- skip and count


def test_bad_records_are_skipped_and_counted(agg):
    summary, _ = agg
    assert (summary.skipped_corrupt, summary.failed, summary.running, summary.duplicates) == (2, 1, 1, 0)
    n_good = (
        sum(len(v) for m in FIXTURE_VALUES.values() for v in m.values())
        + 12
        + sum(len(v) for v in CIFAR_VALUES.values())
        + sum(len(v) for v in CIFAR_COMMUNITY_VALUES.values())
    )
    assert summary.loaded == n_good
    assert summary.found == n_good + 4
    reasons = {Path(p).parent.parent.name + "/" + kind: reason for p, kind, reason in summary.skipped}
    assert "not valid JSON" in reasons["kd/corrupt"]
    assert f"unknown schema_version {SCHEMA_VERSION + 1}" in reasons["dkd/corrupt"]
    assert "loss is NaN" in reasons["crd/failed"]
    assert summary.counts_line().startswith(f"{n_good} loaded, 2 skipped (corrupt), 1 failed runs, 1 running")


def test_one_warning_line_per_skipped_record(caplog):
    with caplog.at_level(logging.WARNING, logger="benchmark.aggregate"):
        loaded = load_records([FIXTURES])
    warnings_ = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings_) == len(loaded.skipped) == 4
    for record in warnings_:
        assert record.exc_info is None and "\n" not in record.getMessage()
        assert "record.json" in record.getMessage()


def test_duplicates_and_garbage_never_crash(tmp_path):
    work = tmp_path / "w"
    rec = make_record("s", "t", "st", "kd", 0, 70.0)
    synthetic.write(work, rec)
    synthetic.write(work / "copy", rec)  # the same run twice: counted once
    odd = {**make_record("s", "t", "st", "dkd", 0, 71.0).to_dict(), "seed": "zero"}
    (work / "odd").mkdir()
    (work / "odd" / "record.json").write_text(json.dumps(odd))
    for i, text in enumerate(["", "[]", "null", '{"schema_version": 1}', "\xff\xfe", "[" * 100000]):
        (work / f"g{i}").mkdir()
        (work / f"g{i}" / "record.json").write_text(text, encoding="latin-1")
    summary = aggregate([work, work], tmp_path / "t", tmp_path / "r")  # the same dir twice: read once
    assert (summary.loaded, summary.duplicates, summary.skipped_corrupt) == (1, 1, 7)


# --------------------------------------------------------------------------- statistics


def test_welch_p():
    assert welch_p([1.0], [1.0, 2.0]) is None
    # Exact: with no variance welch_p returns these constants, it computes nothing.
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0  # no variance, same mean: inseparable
    assert welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0  # no variance, different means: separated
    assert 0.3 < welch_p([71.0, 71.6, 70.7], [71.4, 71.55, 71.3]) < 0.4


def test_welch_marking_in_fixture_tables(agg):
    _, out = agg
    frame = _csv(out, "fixture_last")
    expected = {
        P1: {"dkd": (True, False), "crd": (False, True), "kd": (False, False), "ckd": (False, False)},
        P2: {"ckd": (True, False), "dkd": (False, True), "crd": (False, False), "kd": (False, False)},
    }
    for pair, methods in expected.items():
        for method, (best, dagger) in methods.items():
            row = _row(frame, pair, method)
            assert (row["best"], row["indistinguishable_from_best"]) == (str(best), str(dagger)), (pair, method)
    md = (out / "tables" / "fixture_last.md").read_text()
    assert "71.10 ± 0.46 (3)†" in md  # CRD, P1
    assert "70.50 ± 0.30 (3) " in md and "70.50 ± 0.30 (3)†" not in md  # KD, P1


def test_welch_marking_constructed(tmp_path):
    values = {"dkd": [80.0, 80.2, 79.9], "crd": [79.8, 80.4, 79.6], "kd": [75.0, 75.1, 74.9], "fitnet": [79.0]}
    for method, seeds in values.items():
        for seed, last in enumerate(seeds):
            synthetic.write(tmp_path / "w", make_record("s", "t", "st", method, seed, last, teacher_top1=82.0))
    aggregate([tmp_path / "w"], tmp_path / "t", tmp_path / "r")
    frame = pd.read_csv(tmp_path / "t" / "s_last.csv", keep_default_na=False)
    flags = {
        m: (_row(frame, ("t", "st"), m)["best"], _row(frame, ("t", "st"), m)["indistinguishable_from_best"])
        for m in values
    }
    assert flags == {
        "dkd": ("True", "False"),
        "crd": ("False", "True"),  # close, noisy: must be marked
        "kd": ("False", "False"),  # 5 points below: must not be marked
        "fitnet": ("False", "True"),
    }  # one seed: cannot be tested, marked
    md = (tmp_path / "t" / "s_last.md").read_text()
    assert "**80.03 ± 0.15 (3)**" in md and "79.93 ± 0.42 (3)†" in md and "79.00 (1)†" in md
    assert "‡" in md  # no teacher run: from teacher_top1
    assert "82.00 (1)‡" in md


def test_best_in_bold(agg):
    _, out = agg
    md = (out / "tables" / "fixture_last.md").read_text()
    assert "**71.42 ± 0.13 (3)**" in md  # DKD, P1
    assert "**75.52 ± 0.08 (3)**" in md  # CKD, P2
    assert md.count("**") == 4  # one bold cell per pair
    tex = (out / "tables" / "fixture_last.tex").read_text()
    assert r"\textbf{71.42 $\pm$ 0.13 (3)}" in tex and r"71.10 $\pm$ 0.46 (3)$^\dagger$" in tex


def test_delta_against_published(agg):
    _, out = agg
    last, best = _csv(out, "cifar100_last"), _csv(out, "cifar100_best")
    kd = _row(last, CIFAR, "kd")
    assert float(kd["published"]) == pytest.approx(73.33, abs=CSV_TOL)  # printed "%.4f"
    assert float(kd["delta"]) == pytest.approx((73.50 + 73.70 + 73.40) / 3 - 73.33, abs=CSV_TOL)
    assert float(_row(last, CIFAR, "teacher")["delta"]) == pytest.approx(
        (79.30 + 79.50 + 79.45) / 3 - 79.42, abs=CSV_TOL
    )
    assert float(_row(last, CIFAR, "ce")["published"]) == pytest.approx(72.50, abs=CSV_TOL)  # 'student' -> ce
    # DKD is published at the best epoch: compared in the best table only.
    assert _row(last, CIFAR, "dkd")["delta"] == ""
    dkd_best = _row(best, CIFAR, "dkd")
    assert float(dkd_best["delta"]) == pytest.approx(76.40 - 76.32, abs=CSV_TOL)  # best = last + 0.3
    assert _row(best, CIFAR, "kd")["published"] == ""
    # CKD: no published number, never invented.
    assert _row(last, CIFAR, "ckd")["published"] == "" and _row(best, CIFAR, "ckd")["delta"] == ""
    md = (out / "tables" / "cifar100_last.md").read_text()
    assert "+0.20 (73.33 [1])" in md
    assert "CRD paper (Tian et al., ICLR 2020)" in md and "last epoch, single run" in md
    assert "Published numbers at the best epoch exist for DKD (compared in cifar100_best)" in md
    fixture_md = (out / "tables" / "fixture_last.md").read_text()
    assert "Δ: no published numbers at the last epoch" in fixture_md and "Δ vs published" not in fixture_md


def test_teacher_source_and_delta_mark(agg):
    _, out = agg
    last = _csv(out, "cifar100_last")
    community = COMMUNITY_SHA[:12]
    # CIFAR_COMMUNITY: the CE runs are derived community from their sha256, the KD runs say so.
    assert [
        (_row(last, CIFAR_COMMUNITY, m)["teacher_source"], _row(last, CIFAR_COMMUNITY, m)["delta_comparable"])
        for m in ("teacher", "ce", "kd")
    ] == [("community", "True"), ("", "True"), ("community", "True")]
    assert [_row(last, CIFAR, m)["delta_comparable"] for m in ("teacher", "ce", "kd", "fitnet", "dkd")] == [
        "False",
        "True",
        "False",
        "False",
        "",
    ]
    md = (out / "tables" / "cifar100_last.md").read_text()
    assert f"| Teacher source | community {community} |   trained, top-1 79.42 |" in md
    assert "+0.20 (73.33 [1])§" in md and "-0.11 (70.66 [1]) " in md  # KD: trained teacher vs community
    assert "+0.02 (72.50 [1]) " in md  # the Student row is never marked
    fixture_md = (out / "tables" / "fixture_last.md").read_text()
    assert "| Teacher source | trained, top-1 72.25 |              unknown |" in fixture_md
    assert "§" not in fixture_md  # no Δ in that suite, no mark


def test_published_numbers():
    table = load_published()
    assert table[("cifar100", "resnet32x4", "resnet8x4", "ce")].top1 == pytest.approx(72.50)
    assert table[("cifar100", "resnet32x4", "resnet8x4", "dkd")].kind == "best"
    assert not [k for k in table if k[3] == "ckd"]
    assert all(p.source for p in table.values())


def test_mixed_recipe_footnote(agg):
    _, out = agg
    md = (out / "tables" / "fixture_last.md").read_text()
    assert "This table mixes recipes: paper (CKD); unified (others)." in md
    assert "This table mixes epochs: 10 (CKD); 8 (others)." in md
    assert "Recipes: unified, paper. Epochs: 8, 10." in md
    cifar = (out / "tables" / "cifar100_last.md").read_text()
    assert "mixes" not in cifar and "Recipe: unified. Epochs: 8." in cifar


def test_best_epoch_table_is_labelled(agg):
    _, out = agg
    md = (out / "tables" / "fixture_best.md").read_text()
    assert md.startswith("# fixture: top-1 accuracy (%), best epoch")
    assert "at the best epoch" in md and "optimistic" in md
    assert (
        r"\caption{fixture: top-1 accuracy (\%) at the best epoch" in (out / "tables" / "fixture_best.tex").read_text()
    )


def test_teacher_from_teacher_top1_and_column_order(agg):
    _, out = agg
    frame = _csv(out, "fixture_last")
    teacher = _row(frame, P2, "teacher")
    assert (teacher["values_from"], int(teacher["n"])) == ("teacher_top1", 1)
    assert float(teacher["mean"]) == pytest.approx(75.61, abs=CSV_TOL)  # printed "%.4f"
    assert _row(frame, P1, "teacher")["values_from"] == "runs"
    md = (out / "tables" / "fixture_last.md").read_text()
    assert md.index("resnet56→resnet20") < md.index("wrn_40_2→wrn_16_2")
    rows = [line.split("|")[1].strip() for line in md.split("Notes:")[0].splitlines() if line.startswith("| ")]
    assert rows[1:] == ["Teacher", "Teacher source", "Student", "KD", "CRD", "DKD", "CKD"]


# --------------------------------------------------------------------------- determinism and plots


def test_deterministic(agg, tmp_path):
    summary, out = agg
    again = aggregate(
        [FIXTURES],
        tmp_path / "tables",
        tmp_path / "reports",
        bench_json=out / "reports" / "bench" / "loss_complexity.json",
    )
    for produced in summary.tables + summary.plots + summary.index:
        other = tmp_path / produced.relative_to(out)
        assert other.read_bytes() == produced.read_bytes(), produced.name
    assert len(again.plots) == len(summary.plots)


def test_plots_written(agg):
    summary, out = agg
    names = sorted(p.name for p in summary.plots)
    stems = ["cifar100_curves", "complexity", "fixture_batch_size", "fixture_curves", "fixture_runtime"]
    assert names == sorted(f"{s}.{e}" for s in stems for e in ("png", "svg"))
    for path in summary.plots:
        if path.suffix == ".png":
            assert path.stat().st_size > 1024 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")
    index = (out / "reports" / "index.md").read_text()
    assert "runtime plot skipped: no run recorded its runtime" in index  # cifar100 has no runtime


def test_index(agg):
    summary, out = agg
    index = (out / "reports" / "index.md").read_text()
    assert f"{summary.loaded} loaded, 2 skipped (corrupt), 1 failed runs, 1 running" in index
    for path in summary.tables + summary.plots:
        assert os.path.relpath(path, out / "reports").replace(os.sep, "/") in index
    assert "c0ffee000002" in index and "0123456789ab" in index and "world_size" in index
    assert "hostname" not in index
    html = (out / "reports" / "index.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and '<a href="../tables/fixture_last.md">md</a>' in html
    # The batch-size plot notes the lr rule.
    svg = (out / "reports" / "fixture_batch_size.svg").read_text()
    assert "lr scaled linearly with batch size" in svg


def test_complexity_plot_skipped_without_json(tmp_path):
    synthetic.write(tmp_path / "w", make_record("s", "t", "st", "kd", 0, 70.0))
    summary = aggregate(tmp_path / "w", tmp_path / "t", tmp_path / "r")
    assert not [p for p in summary.plots if p.stem == "complexity"]
    assert any("no benchmark JSON" in n for n in summary.notes)
    assert "no benchmark JSON" in (tmp_path / "r" / "index.md").read_text()
    (tmp_path / "bad.json").write_text('{"results": [{"method": "kd"}]}')
    summary = aggregate(tmp_path / "w", tmp_path / "t", tmp_path / "r", bench_json=tmp_path / "bad.json")
    assert summary.notes == [f"complexity plot skipped: {(tmp_path / 'bad.json').as_posix()}: no usable results"]


def test_declared_pair_order(monkeypatch, tmp_path):
    import types

    for t, s in (("a", "b"), ("z", "y")):
        synthetic.write(tmp_path / "w", make_record("s", t, s, "kd", 0, 70.0))
    suites = types.ModuleType("benchmark.suites")
    suites.get_suite = lambda name: types.SimpleNamespace(pairs=[("z", "y"), ("a", "b")])
    monkeypatch.setitem(sys.modules, "benchmark.suites", suites)
    records = load_records([tmp_path / "w"]).records
    table = build_suite_tables(records, "s", {}, suite_pair_order("s"))[0]
    assert table.pairs == [("z", "y"), ("a", "b")]
    suites.get_suite = lambda name: types.SimpleNamespace(pairs=["a-b", "z-y"])
    assert build_suite_tables(records, "s", {}, suite_pair_order("s"))[0].pairs == [("a", "b"), ("z", "y")]
    monkeypatch.setitem(sys.modules, "benchmark.suites", None)  # not importable: sorted
    assert suite_pair_order("s") is None
