"""The table model: cells, rows, one metric's grid of a suite (:class:`SuiteTable`) and the rendered table of
one or several metrics (:class:`MetricTable`), with the constants and names the tables share."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy.stats import ttest_ind

from benchmark.store.records import STUDENT_ROW, TEACHER_ROW
from benchmark.suites.base import Pair
from methods import METHODS

from .load import COMMUNITY, TRAINED
from .published import Published

if TYPE_CHECKING:  # verdict.py imports this module only for its type hints
    from .verdict import Verdict

# One Pair everywhere: the suites' ``Pair`` is a (teacher, student) named tuple, so cells, published
# numbers and records are keyed by it directly.
PairKey = Pair

# Row order and names come from the method registry (each method's ``table_order`` and ``display_name``).
METHOD_ORDER = (TEACHER_ROW,) + tuple(
    sorted(METHODS.module_dict, key=lambda name: (METHODS.get(name).table_order, name))
)
DISPLAY = {TEACHER_ROW: "Teacher", **{name: METHODS.get(name).display_name or name for name in METHODS.module_dict}}
STATISTICS = {"last": ("last_top1", "last epoch"), "best": ("best_top1", "best epoch")}
ALPHA = 0.05
DEFAULT_RECIPE = "unified"
CSV_COLUMNS = (
    "suite",
    "statistic",
    "recipe",
    "epochs",
    "teacher",
    "student",
    "method",
    "mean",
    "std",
    "n",
    "published",
    "delta",
    "best",
    "indistinguishable_from_best",
    "values_from",
    "teacher_source",
    "teacher_sha256",
    "delta_comparable",
    "verdict",
    "p_value",
    "p_adjusted",
    "seeds_needed",
    "best_minus_last",
)  # the last five: .verdict

DAGGER, DDAGGER, PM, ARROW, DASH = "†", "‡", "±", "→", "–"
PILCROW = "¶"  # a row whose recipe is the suite's own choice, not a reference recipe
SECTION = "§"  # a Δ whose runs did not use the community teacher: not comparable with the published number
UNKNOWN = "unknown"
SHA_PREFIX = 12  # hex digits of a checkpoint's sha256 shown in the tables
TEACHER_SOURCE_LABEL = "Teacher source"


def safe_name(text: str) -> str:
    """A file-name-safe form of a suite name (the name itself is kept in titles and CSV)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", text).lstrip(".")
    return name or "_"


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def display_name(method: str) -> str:
    return DISPLAY.get(method, method)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when either side has fewer than 2 seeds.

    Zero variance on both sides gives no t statistic: equal means are then
    inseparable (p = 1), different means are separated (p = 0).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)
    if not math.isfinite(p):
        p = 1.0 if float(np.mean(a)) == float(np.mean(b)) else 0.0
    return p


@dataclass(frozen=True)
class Wording:
    """The sentences of a table's notes that depend on the suite's metric and teachers.

    The defaults are the classification tables' (top-1, community CIFAR-100 teachers).
    """

    metric: str = "top-1"  # in "the highest <metric> over each run's epochs"
    teacher_metric: str = "top-1"  # in the Teacher source row: "trained, <teacher_metric> X"
    fallback: str = "the teacher accuracy recorded in its distillation runs (teacher_top1)"
    community: str = (
        "a community checkpoint given with --teachers (CIFAR-100: RepDistiller / mdistiller cifar_teachers.tar)"
    )
    trained: str = "top-1 of the checkpoint used"
    no_delta: str | None = None  # replaces "Δ: no published numbers ..." when set
    bold: str = (
        "Bold: the best distillation method of the pair (highest mean; the Teacher and Student rows "
        "are not candidates)."
    )


CLASSIFICATION_WORDING = Wording()


# --------------------------------------------------------------------------- model


@dataclass
class Cell:
    values: tuple[float, ...]
    n: int
    mean: float
    std: float  # nan when n < 2
    recipe_hashes: tuple[str, ...] = ()
    world_sizes: tuple[int, ...] = ()  # DDP processes of the runs behind the cell
    from_teacher_top1: bool = False  # teacher accuracy taken from the runs' teacher_top1
    best: bool = False
    indistinguishable: bool = False
    p_value: float | None = None
    published: Published | None = None
    source_ref: int | None = None
    # Teacher of the cell's runs: "community", "trained", "unknown", or several joined by "+";
    # "" for a row that uses no teacher (the student trained alone).
    teacher_source: str = ""
    teacher_shas: tuple[str, ...] = ()  # distinct teacher checkpoint sha256 of the runs
    verdict: Verdict | None = None  # vs the published number (see .verdict); None without one
    p_adjusted: float | None = None  # the verdict's p, Benjamini–Hochberg over the table
    best_minus_last: tuple[float, ...] = ()  # best-epoch table: per run, best − last (paired over seeds)

    @property
    def delta(self) -> float | None:
        return None if self.published is None else self.mean - self.published.top1

    @property
    def delta_comparable(self) -> bool | None:
        """None without a Δ; False when the runs' teacher was not (only) the community checkpoint."""
        if self.delta is None:
            return None
        return self.teacher_source in ("", COMMUNITY)

    @classmethod
    def of(cls, values: Sequence[float], **kwargs: Any) -> "Cell":
        arr = np.asarray(values, dtype=np.float64)
        n = int(arr.size)
        std = float(np.std(arr, ddof=1)) if n >= 2 else math.nan
        return cls(tuple(float(v) for v in arr), n, float(np.mean(arr)), std, **kwargs)


@dataclass
class Row:
    method: str
    recipe: str | None  # None: the teacher row built only from teacher_top1
    epochs: int | None
    label: str
    cells: dict[PairKey, Cell] = field(default_factory=dict)

    @property
    def is_header(self) -> bool:
        return self.method in (TEACHER_ROW, STUDENT_ROW)


@dataclass
class PairTeacher:
    """Which teacher a pair's distillation runs used (its teacher runs when it has none)."""

    kinds: tuple[str, ...]  # sorted subset of ("community", "trained", "unknown")
    community_shas: tuple[str, ...] = ()  # sha256 of the community checkpoints used
    trained_top1: tuple[float, ...] = ()  # top-1 (the suite's primary metric) of the trained teachers used
    metric: str = "top-1"

    @property
    def text(self) -> str:
        parts = []
        for kind in self.kinds:
            if kind == COMMUNITY:
                shas = ", ".join(sha[:SHA_PREFIX] for sha in self.community_shas)
                parts.append(f"community {shas}" if shas else "community")
            elif kind == TRAINED:
                top1 = ", ".join(f"{t:.2f}" for t in self.trained_top1)
                parts.append(f"trained, {self.metric} {top1}" if top1 else "trained")
            else:
                parts.append(kind)
        return "; ".join(parts)


@dataclass
class SuiteTable:
    suite: str
    statistic: str  # "last" | "best"
    pairs: list[PairKey]
    rows: list[Row]
    recipes: list[str]  # distinct recipes, main first
    epochs: list[int]  # distinct epochs, main first
    notes: list[str]
    sources: list[tuple[str, str]]  # (statistic, source) of the published numbers: [1], [2], ...
    n_runs: int
    teachers: dict[PairKey, PairTeacher] = field(default_factory=dict)

    @property
    def has_delta(self) -> bool:
        return bool(self.sources)

    @property
    def stem(self) -> str:
        return f"{safe_name(self.suite)}_{self.statistic}"


DETECTION_WORDING = Wording(
    metric="mAP (AP50 and AP75 are those of the same epoch)",
    fallback="the teacher AP recorded in its distillation runs (teacher_top1; AP only)",
    community="the MMDetection checkpoint given with --teachers",
    trained="AP of the checkpoint used",
    teacher_metric="AP",
    no_delta="Δ vs published numbers: not offered for this suite.",
    bold="Bold: per pair and metric, the best distillation method (highest mean; the Teacher and Student rows "
    "are not candidates); † per metric likewise.",
)


@dataclass(frozen=True)
class MetricSpec:
    """What a suite with several metrics shows per pair (COCO: AP, AP50, AP75)."""

    metrics: tuple[str, ...]  # names in the records, the primary (best-epoch) metric first
    labels: tuple[str, ...]  # column labels
    title: str  # e.g. "bbox AP (%) on COCO val2017"
    notes: tuple[str, ...] = ()  # the suite's own notes (e.g. which teachers, why no Δ)
    wording: Wording = DETECTION_WORDING
    # True: one column per pair and metric, labelled, and a ``metric`` column in the CSV. False (classification):
    # one unlabelled column per pair, followed by the per-pair blocks (Δ, verdicts, best − last).
    grouped: bool = True


CLASSIFICATION_SPEC = MetricSpec(
    ("top1",), ("top-1",), "top-1 accuracy (%)", wording=CLASSIFICATION_WORDING, grouped=False
)


@dataclass
class MetricTable:
    """One rendered table: one statistic of a suite with one or several metrics per pair.

    One :class:`SuiteTable` per metric of ``spec``, all with the pairs and rows of the first (the primary
    metric's); a classification table is the one-metric case (:meth:`classification`).
    """

    suite: str
    statistic: str
    spec: MetricSpec
    tables: list[SuiteTable]
    notes: list[str]

    @property
    def primary(self) -> SuiteTable:
        return self.tables[0]

    @property
    def pairs(self) -> list[PairKey]:
        return self.primary.pairs

    @property
    def rows(self) -> list[Row]:
        return self.primary.rows

    @property
    def teachers(self) -> dict[PairKey, PairTeacher]:
        return self.primary.teachers

    @property
    def stem(self) -> str:
        return self.primary.stem

    @classmethod
    def classification(cls, table: SuiteTable) -> "MetricTable":
        """The top-1 table of a classification suite: its only metric, with its notes."""
        return cls(table.suite, table.statistic, CLASSIFICATION_SPEC, [table], table.notes)

    def cell(self, index: int, row: Row, pair: PairKey) -> Cell | None:
        """The cell of metric ``index`` in the row configured as ``row`` (same method, recipe, epochs)."""
        if index == 0:  # ``row`` is one of the primary table's own rows
            return row.cells.get(pair)
        for other in self.tables[index].rows:
            if (other.method, other.recipe, other.epochs) == (row.method, row.recipe, row.epochs):
                return other.cells.get(pair)
        return None
