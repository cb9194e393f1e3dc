"""Every table says which teacher each pair used, and marks the Δ that are not comparable.

Published CIFAR-100 numbers were obtained with the community teacher checkpoints
(RepDistiller / mdistiller ``cifar_teachers.tar``). A run distilled from a teacher the
suite trained itself, or from an unknown one, gets its Δ marked § in the md / tex
tables and ``delta_comparable = False`` in the CSV; the Student row (no teacher) never.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from benchmark.aggregate import aggregate
from benchmark.report import synthetic
from benchmark.report.load import recorded_teacher_source
from benchmark.report.synthetic import make_record
from benchmark.report.tables import SECTION
from benchmark.store.records import RunRecord

COMMUNITY_PAIR = ("resnet32x4", "resnet8x4")  # published: teacher 79.42, student 72.50, KD 73.33 (last epoch)
TRAINED_PAIR = ("resnet56", "resnet20")  # published: teacher 72.34, student 69.06, KD 70.66 (last epoch)
COMMUNITY_SHA = hashlib.sha256(b"resnet32x4_vanilla/ckpt_epoch_240.pth").hexdigest()
TRAINED_SHA = hashlib.sha256(b"work_dirs/cifar100/unified/teachers/resnet56/seed0/student.pth").hexdigest()


def community_teacher(teacher: str, sha: str, top1: float) -> RunRecord:
    """A teacher row as benchmark/teachers.py writes it for a community checkpoint: evaluated, no curve."""
    record = make_record("cifar100", teacher, teacher, "teacher", 0, top1)
    record.curve, record.best_top1, record.best_epoch, record.last_top5, record.best_top5 = [], top1, None, None, None
    record.teacher_checkpoint_sha256, record.teacher_top1 = sha, top1
    record.wall_time_s = record.images_per_s = None
    record.extra["source"] = f"community checkpoint teachers/{teacher}_vanilla/ckpt_epoch_240.pth"
    return record


def trained_teacher(teacher: str, top1: float) -> RunRecord:
    """A teacher trained by the suite: a normal training run record, no source."""
    return make_record("cifar100", teacher, teacher, "teacher", 0, top1)


def student_run(
    pair, method: str, seed: int, last: float, sha: str | None, teacher_top1: float | None, source: str | None = None
) -> RunRecord:
    record = make_record(
        "cifar100",
        *pair,
        method,
        seed,
        last,
        teacher_top1=teacher_top1,
        extra={"teacher_source": source} if source else None,
    )
    record.teacher_checkpoint_sha256 = sha
    return record


def write_all(root: Path, records: list[RunRecord]) -> None:
    for record in records:
        synthetic.write(root, record)


def base_records() -> list[RunRecord]:
    """Community teacher for COMMUNITY_PAIR, trained teacher for TRAINED_PAIR; no teacher_source in extra."""
    records = [community_teacher("resnet32x4", COMMUNITY_SHA, 79.42), trained_teacher("resnet56", 72.05)]
    for seed, (ce, kd) in enumerate([(72.40, 73.50), (72.60, 73.70)]):
        records.append(student_run(COMMUNITY_PAIR, "ce", seed, ce, COMMUNITY_SHA, 79.42))
        records.append(student_run(COMMUNITY_PAIR, "kd", seed, kd, COMMUNITY_SHA, 79.42))
    for seed, (ce, kd) in enumerate([(69.00, 70.50), (69.20, 70.90)]):
        records.append(student_run(TRAINED_PAIR, "ce", seed, ce, TRAINED_SHA, 72.05))
        records.append(student_run(TRAINED_PAIR, "kd", seed, kd, TRAINED_SHA, 72.05))
    return records


def tables_of(tmp_path: Path, records: list[RunRecord], name: str = "run") -> dict[str, str]:
    write_all(tmp_path / name / "w", records)
    aggregate([tmp_path / name / "w"], tmp_path / name / "t", tmp_path / name / "r")
    out = {
        ext: (tmp_path / name / "t" / f"cifar100_last.{ext}").read_text(encoding="utf-8")
        for ext in ("md", "tex", "csv")
    }
    out["index"] = (tmp_path / name / "r" / "index.md").read_text(encoding="utf-8")
    return out


def md_rows(md: str, table: int = 0) -> dict[str, list[str]]:
    """Rows of the ``table``-th Markdown table (0: results, 1: Δ) as label -> cells."""
    blocks, current = [], []
    for line in md.split("Notes:")[0].splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    rows = blocks[table]
    return {row[0]: row[1:] for row in rows[2:]} | {"header": rows[0][1:]}


def csv_frame(text: str) -> pd.DataFrame:
    from io import StringIO

    return pd.read_csv(StringIO(text), keep_default_na=False, dtype=str)


def csv_row(frame: pd.DataFrame, pair, method: str) -> pd.Series:
    sel = frame[(frame["teacher"] == pair[0]) & (frame["student"] == pair[1]) & (frame["method"] == method)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_community_vs_trained_teacher(tmp_path):
    out = tables_of(tmp_path, base_records())
    main, delta = md_rows(out["md"]), md_rows(out["md"], 1)
    columns = main["header"]
    assert columns == ["resnet56→resnet20", "resnet32x4→resnet8x4"]  # the suite's declared pair order
    trained, community = 0, 1
    # The source row: the community checkpoint by its sha256 prefix, the trained teacher by its top-1.
    assert main["Teacher source"][community] == f"community {COMMUNITY_SHA[:12]}"
    assert main["Teacher source"][trained] == "trained, top-1 72.05"
    assert list(main)[:3] == ["Teacher", "Teacher source", "Student"]
    # Δ marked for the rows that depend on the teacher, in the trained pair only.
    assert delta["Δ KD"][trained].endswith(SECTION) and delta["Δ Teacher"][trained].endswith(SECTION)
    assert not delta["Δ KD"][community].endswith(SECTION) and not delta["Δ Teacher"][community].endswith(SECTION)
    assert not any(cell.endswith(SECTION) for cell in delta["Δ Student"])  # the student alone uses no teacher
    assert delta["Δ KD"][community] == "+0.27 (73.33 [1])"  # (73.50 + 73.70) / 2 - 73.33
    assert delta["Δ KD"][trained] == f"+0.04 (70.66 [1]){SECTION}"  # (70.50 + 70.90) / 2 - 70.66
    assert f"- {SECTION}: teacher not the community checkpoint" in out["md"] and "Δ not comparable" in out["md"]
    assert "Teacher source: community <sha256[:12]>" in out["md"]

    tex = out["tex"]
    assert f"Teacher source & trained, top-1 72.05 & community {COMMUNITY_SHA[:12]} \\\\" in tex
    assert r"$\Delta$ KD & +0.04 (70.66 [1])$^\S$ & +0.27 (73.33 [1]) \\" in tex
    assert r"$^\S$: teacher not the community checkpoint" in tex
    assert "§" not in tex  # escaped for LaTeX

    frame = csv_frame(out["csv"])
    assert {"teacher_source", "teacher_sha256", "delta_comparable"} <= set(frame.columns)
    expected = {  # (pair, method): (teacher_source, teacher_sha256, delta_comparable)
        (COMMUNITY_PAIR, "teacher"): ("community", COMMUNITY_SHA[:12], "True"),
        (COMMUNITY_PAIR, "ce"): ("", "", "True"),
        (COMMUNITY_PAIR, "kd"): ("community", COMMUNITY_SHA[:12], "True"),
        (TRAINED_PAIR, "teacher"): ("trained", "", "False"),
        (TRAINED_PAIR, "ce"): ("", "", "True"),
        (TRAINED_PAIR, "kd"): ("trained", TRAINED_SHA[:12], "False"),
    }
    for (pair, method), values in expected.items():
        row = csv_row(frame, pair, method)
        assert (row["teacher_source"], row["teacher_sha256"], row["delta_comparable"]) == values, (pair, method)
    assert "community checkpoint for 1 pair(s), trained by the suite for 1 pair(s)" in out["index"]


def test_all_community_no_mark(tmp_path):
    records = [r for r in base_records() if TRAINED_PAIR[0] not in (r.teacher,)]
    out = tables_of(tmp_path, records)
    assert SECTION not in out["md"] and r"$^\S$" not in out["tex"]
    assert set(csv_frame(out["csv"])["delta_comparable"]) == {"True"}
    assert "§" not in out["index"]


def test_recorded_source_wins_over_derivation(tmp_path):
    """extra["teacher_source"] (written by the runner) is used as is; the sha256 derivation only fills gaps."""
    records = base_records()
    for record in records:
        if record.pair == "resnet56-resnet20" and record.method == "kd" and record.seed == 0:
            record.extra["teacher_source"] = "trained"  # agrees with the derivation
        if record.pair == "resnet32x4-resnet8x4" and record.method == "kd":
            record.extra["teacher_source"] = "community"
    out = tables_of(tmp_path, records)
    frame = csv_frame(out["csv"])
    assert csv_row(frame, COMMUNITY_PAIR, "kd")["teacher_source"] == "community"
    assert csv_row(frame, TRAINED_PAIR, "kd")["teacher_source"] == "trained"
    # A record saying "trained" although its sha256 is a community file's: its word is taken.
    odd = [r for r in base_records() if r.teacher == "resnet32x4"]
    for record in odd:
        if record.method == "kd":
            record.extra["teacher_source"] = "trained"
    out = tables_of(tmp_path, odd, "odd")
    row = csv_row(csv_frame(out["csv"]), COMMUNITY_PAIR, "kd")
    assert (row["teacher_source"], row["delta_comparable"]) == ("trained", "False")


def test_runner_source_without_teacher_rows(tmp_path):
    """With extra["teacher_source"] the source is known even when the teacher rows are elsewhere."""
    records = [r for r in base_records() if r.method != "teacher"]
    for record in records:
        record.extra["teacher_source"] = "community" if record.teacher == "resnet32x4" else "trained"
    out = tables_of(tmp_path, records)
    main = md_rows(out["md"])
    assert main["Teacher source"] == ["trained, top-1 72.05", f"community {COMMUNITY_SHA[:12]}"]
    delta = md_rows(out["md"], 1)
    assert delta["Δ KD"][0].endswith(SECTION) and not delta["Δ KD"][1].endswith(SECTION)


def test_unknown_teacher(tmp_path):
    """No teacher row and nothing recorded: the source is unknown and the Δ is marked, never assumed comparable."""
    records = [r for r in base_records() if r.method != "teacher"]
    for record in records:
        if record.teacher == "resnet56":
            record.teacher_checkpoint_sha256 = None
    out = tables_of(tmp_path, records)
    main, delta = md_rows(out["md"]), md_rows(out["md"], 1)
    assert main["Teacher source"] == ["unknown", "unknown"]
    assert all(cell.endswith(SECTION) for cell in delta["Δ KD"])
    assert "‡" in out["md"]  # the Teacher row comes from teacher_top1 (no teacher run records)
    frame = csv_frame(out["csv"])
    assert csv_row(frame, COMMUNITY_PAIR, "kd")["teacher_source"] == "unknown"
    assert csv_row(frame, TRAINED_PAIR, "kd")["teacher_sha256"] == ""
    assert "unknown for 2 pair(s)" in out["index"]


def test_mixed_teachers_in_one_cell(tmp_path):
    """Seeds distilled from different teachers: both are shown, and the Δ is marked."""
    records = base_records()
    records.append(student_run(COMMUNITY_PAIR, "kd", 2, 73.60, "f" * 64, 79.00, source="trained"))
    out = tables_of(tmp_path, records)
    main, delta = md_rows(out["md"]), md_rows(out["md"], 1)
    assert main["Teacher source"][1] == f"community {COMMUNITY_SHA[:12]}; trained, top-1 79.00"
    assert delta["Δ KD"][1].endswith(SECTION)
    row = csv_row(csv_frame(out["csv"]), COMMUNITY_PAIR, "kd")
    assert (row["teacher_source"], row["teacher_sha256"]) == ("community+trained", f"{COMMUNITY_SHA[:12]};ffffffffffff")
    assert "mixed for 1 pair(s)" in out["index"]


def test_deterministic(tmp_path):
    first = tables_of(tmp_path, base_records(), "a")
    second = tables_of(tmp_path, list(reversed(base_records())), "b")  # written in another order
    for key in ("md", "tex", "csv"):
        assert first[key] == second[key], key


@pytest.mark.parametrize(
    "method, extra, expected",
    [
        ("teacher", {"source": "community checkpoint t/resnet56_vanilla/ckpt_epoch_240.pth"}, "community"),
        ("teacher", {}, "trained"),
        ("teacher", {"source": "something else"}, "trained"),
        ("kd", {}, ""),
        ("kd", {"teacher_source": "community"}, "community"),
        ("kd", {"teacher_source": "Trained "}, "trained"),
        ("kd", {"teacher_source": "elsewhere"}, ""),  # not one of the two values: derived by the tables
        ("kd", {"teacher_source": 3}, ""),
    ],
)
def test_recorded_teacher_source(method, extra, expected):
    assert recorded_teacher_source(method, extra) == expected
