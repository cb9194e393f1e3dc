"""Published top-1 numbers to compare with (``benchmark/published_numbers.csv``).

Columns: suite, teacher, student, method, top1, statistic, source, and the optional ``runs``
(how many runs the number averages) and ``std`` (their std), filled only where the source
states them (the verdicts of :mod:`.verdict` take m = 1 when ``runs`` is empty). The ``student``
rows (the student trained alone) are our ``ce`` rows; ``teacher`` rows are the
teacher trained alone. CKD has no published numbers and none are invented. Model names
are the sources' (``ResNet34``); per suite they are mapped to the zoo's
(``resnet34_in1k`` in suite ``imagenet``) when the table is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.store.records import STUDENT_ROW, TEACHER_ROW

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "published_numbers.csv"
_METHOD_MAP = {"student": STUDENT_ROW, "teacher": TEACHER_ROW}
# Per suite: the papers' model names in the CSV -> the zoo's names (the CSV keeps the sources' spelling).
_MODEL_MAP = {
    "imagenet": {
        "ResNet18": "resnet18_in1k",
        "ResNet34": "resnet34_in1k",
        "ResNet50": "resnet50_in1k",
        "MobileNetV1": "mobilenetv1_in1k",
    },
}


@dataclass(frozen=True)
class Published:
    top1: float
    statistic: str  # as printed in the CSV, e.g. "last epoch, single run"
    source: str
    runs: int | None = None  # runs averaged, where the source states it
    std: float | None = None  # std over those runs, where the source states it

    @property
    def stated(self) -> bool:
        """Whether the statistic text says last or best epoch."""
        return self.statistic.strip().lower().startswith(("last", "best"))

    @property
    def kind(self) -> str:
        """'last' or 'best': which of our tables it is comparable with.

        A number whose statistic is neither (a released checkpoint evaluated as is, or a paper that
        does not say) is a final model's: it is compared with the last-epoch table, the default.
        """
        text = self.statistic.strip().lower()
        return "best" if text.startswith("best") else "last"


PublishedTable = dict[tuple[str, str, str, str], Published]  # (suite, teacher, student, method)


def load_published(path: str | os.PathLike | None = None) -> PublishedTable:
    """Read the published numbers; a missing file gives an empty table."""
    path = Path(path) if path is not None else PUBLISHED_CSV
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    table: PublishedTable = {}
    for row in frame.itertuples(index=False):
        try:
            top1 = float(row.top1)
        except ValueError:
            continue  # an empty or non-numeric cell is no published number
        method = _METHOD_MAP.get(row.method.strip(), row.method.strip())
        suite = row.suite.strip()
        names = _MODEL_MAP.get(suite, {})
        teacher, student = (names.get(name.strip(), name.strip()) for name in (row.teacher, row.student))
        key = (suite, teacher, student, method)
        table[key] = Published(
            top1,
            row.statistic.strip(),
            row.source.strip(),
            _optional(getattr(row, "runs", ""), int),
            _optional(getattr(row, "std", ""), float),
        )
    return table


def _optional(text: str, kind: type) -> int | float | None:
    """An optional CSV cell: empty (or unreadable) -> None."""
    try:
        return kind(text.strip()) if text and text.strip() else None
    except ValueError:
        return None
