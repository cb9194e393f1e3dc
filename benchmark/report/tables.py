"""Paper-style tables per suite: Markdown, LaTeX and a tidy CSV.

Layout as in the CRD/DKD papers: one column per teacher→student pair, the
Teacher and Student (trained alone) header rows, then one row per distillation
method with ``mean ± std (n)`` over seeds. Per pair the best method is bold and
the methods that a Welch t-test over seeds cannot separate from it carry a
dagger. A Δ block compares with the published number of the same suite, pair
and method for the same statistic (last epoch / best epoch).

Every table says which teacher each pair used (the "Teacher source" row and the
CSV's ``teacher_source`` / ``teacher_sha256`` columns): the community checkpoint
(sha256 prefix) or a teacher trained by the suite (its top-1). The published numbers
were obtained with the community teachers, so the Δ of a run whose teacher was not
the community one is marked § (not comparable).
"""
from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind

from benchmark.store.atomic import write_text
from benchmark.store.records import STUDENT_ROW, TEACHER_ROW
from methods import METHODS

from . import verdict as verdicts
from .load import COMMUNITY, TRAINED
from .published import Published, PublishedTable

Pair = tuple[str, str]  # (teacher, student)

# Row order and names come from the method registry (each method's ``table_order`` and ``display_name``).
METHOD_ORDER = (TEACHER_ROW,) + tuple(sorted(METHODS.module_dict, key=lambda name: (METHODS.get(name).table_order, name)))
DISPLAY = {TEACHER_ROW: "Teacher", **{name: METHODS.get(name).display_name or name for name in METHODS.module_dict}}
STATISTICS = {"last": ("last_top1", "last epoch"), "best": ("best_top1", "best epoch")}
ALPHA = 0.05
DEFAULT_RECIPE = "unified"
CSV_COLUMNS = ("suite", "statistic", "recipe", "epochs", "teacher", "student", "method", "mean", "std", "n",
               "published", "delta", "best", "indistinguishable_from_best", "values_from",
               "teacher_source", "teacher_sha256", "delta_comparable",
               "verdict", "p_value", "p_adjusted", "seeds_needed", "best_minus_last")  # the last five: .verdict

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
    community: str = "a community checkpoint given with --teachers (CIFAR-100: RepDistiller / mdistiller cifar_teachers.tar)"
    trained: str = "top-1 of the checkpoint used"
    no_delta: str | None = None  # replaces "Δ: no published numbers ..." when set
    bold: str = "Bold: the best distillation method of the pair (highest mean; the Teacher and Student rows are not candidates)."


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
    verdict: verdicts.Verdict | None = None  # vs the published number (see .verdict); None without one
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
    cells: dict[Pair, Cell] = field(default_factory=dict)

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
    pairs: list[Pair]
    rows: list[Row]
    recipes: list[str]  # distinct recipes, main first
    epochs: list[int]  # distinct epochs, main first
    notes: list[str]
    sources: list[tuple[str, str]]  # (statistic, source) of the published numbers: [1], [2], ...
    n_runs: int
    teachers: dict[Pair, PairTeacher] = field(default_factory=dict)

    @property
    def has_delta(self) -> bool:
        return bool(self.sources)

    @property
    def stem(self) -> str:
        return f"{safe_name(self.suite)}_{self.statistic}"


# --------------------------------------------------------------------------- pair order


def _normalise_pairs(pairs: Any) -> list[Any]:
    out: list[Any] = []
    for item in pairs or ():
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append((str(item[0]), str(item[1])))
        elif hasattr(item, "teacher") and hasattr(item, "student"):
            out.append((str(item.teacher), str(item.student)))
        elif hasattr(item, "name"):
            out.append(str(item.name))
    return out


def suite_pair_order(suite: str) -> list[Any] | None:
    """The pair order declared by ``benchmark.suites.get_suite(suite).pairs``, if available."""
    try:
        from benchmark.suites import get_suite  # optional: the suites may not be defined yet
    except ImportError:
        return None
    try:
        return _normalise_pairs(get_suite(suite).pairs)
    except Exception:  # noqa: BLE001 - an unknown suite (e.g. a test fixture) just falls back to sorting
        return None


def order_pairs(pairs: set[Pair], declared: list[Any] | None) -> list[Pair]:
    def position(pair: Pair) -> tuple[int, str, str]:
        if declared:
            for i, item in enumerate(declared):
                if item == pair or item == f"{pair[0]}-{pair[1]}":
                    return (i, "", "")
        return (len(declared or ()), pair[0], pair[1])

    return sorted(pairs, key=position)


# --------------------------------------------------------------------------- building


def teacher_kinds(records: pd.DataFrame) -> list[str]:
    """The teacher source of each record: "community", "trained" or "unknown".

    What the record says (``teacher_source``, see :func:`benchmark.report.load.recorded_teacher_source`)
    when it says it; else derived from the teacher rows among ``records``: a teacher
    checkpoint sha256 equal to a community teacher row's is community; a sha256 of a
    network that has a trained teacher row (and matches no community one) is trained;
    anything else (no sha256, no teacher row to compare with) is unknown.
    """
    said = records["teacher_source"] if "teacher_source" in records else pd.Series([""] * len(records))
    is_teacher = (records["method"] == TEACHER_ROW).to_numpy()
    community_shas, trained_nets = set(), set()
    for teacher_row, net, sha, src in zip(is_teacher, records["teacher"], records["teacher_ckpt"], said):
        if teacher_row and src == COMMUNITY and sha:
            community_shas.add(sha)
        elif teacher_row and src == TRAINED:
            trained_nets.add(net)
    kinds = []
    for net, sha, src in zip(records["teacher"], records["teacher_ckpt"], said):
        if src in (COMMUNITY, TRAINED):
            kinds.append(src)
        elif sha and sha in community_shas:
            kinds.append(COMMUNITY)
        elif sha and net in trained_nets:
            kinds.append(TRAINED)
        else:
            kinds.append(UNKNOWN)
    return kinds


def _kind_text(kinds: Sequence[str]) -> str:
    return "+".join(sorted(set(kinds)))


def _pair_teacher(runs: pd.DataFrame) -> PairTeacher:
    """The teacher of one pair from its distillation runs (or, without any, from its teacher runs)."""
    is_teacher = runs["method"] == TEACHER_ROW
    kinds = tuple(sorted(set(runs["teacher_kind"])))
    shas = tuple(sorted({sha for sha, kind in zip(runs["teacher_ckpt"], runs["teacher_kind"])
                         if kind == COMMUNITY and sha}))
    top1: dict[str, float] = {}  # one value per distinct trained checkpoint
    for sha, kind, t_top1, last, teacher_row in zip(runs["teacher_ckpt"], runs["teacher_kind"], runs["teacher_top1"],
                                                    runs["last_top1"], is_teacher):
        value = float(last) if teacher_row else float(t_top1)
        if kind == TRAINED and math.isfinite(value):
            top1.setdefault(sha or f"value:{value!r}", value)
    return PairTeacher(kinds, shas, tuple(sorted(set(top1.values()))))


def _mode(values: Sequence[Any], prefer: Callable[[Any], Any]) -> Any:
    counts = Counter(values)
    return sorted(counts, key=lambda v: (-counts[v], prefer(v)))[0]


def _teacher_top1_cell(pair_records: pd.DataFrame) -> Cell | None:
    """Teacher accuracy from the runs' ``teacher_top1``: one value per distinct checkpoint."""
    rec = pair_records[np.isfinite(pair_records["teacher_top1"].to_numpy(dtype=float))]
    if rec.empty:
        return None
    values: dict[str, float] = {}
    for ckpt, top1 in zip(rec["teacher_ckpt"], rec["teacher_top1"]):
        key = ckpt if ckpt else f"value:{top1!r}"
        values.setdefault(key, float(top1))
    return Cell.of([values[k] for k in sorted(values)], from_teacher_top1=True)


def build_suite_tables(records: pd.DataFrame, suite: str, published: PublishedTable,
                       declared_pairs: list[Any] | None = None, wording: Wording = CLASSIFICATION_WORDING,
                       teacher_fallback: bool = True) -> list[SuiteTable]:
    """The 'last' and 'best' tables of one suite (``records``: its non-ablation runs).

    The value of a cell is ``last_top1`` / ``best_top1`` (see :func:`benchmark.report.load.with_metric`
    for another metric); ``teacher_fallback``: a pair without teacher runs gets its Teacher
    cell from the runs' ``teacher_top1`` (‡).
    """
    records = records.sort_values(["path"], kind="stable")
    records = records.assign(teacher_kind=teacher_kinds(records) if len(records) else [])
    students = records[records["method"] != TEACHER_ROW]
    teachers = records[records["method"] == TEACHER_ROW]
    pairs = order_pairs(set(zip(students["teacher"], students["student"])), declared_pairs)
    if not pairs:
        return []

    # Teacher runs of each pair: those recorded for exactly this pair, else any run of that teacher.
    teacher_pool: dict[Pair, pd.DataFrame] = {}
    for pair in pairs:
        exact = teachers[(teachers["teacher"] == pair[0]) & (teachers["student"] == pair[1])]
        if exact.empty:
            exact = teachers[teachers["teacher"] == pair[0]].drop_duplicates(
                ["recipe", "recipe_hash", "seed", "epochs", "batch_size"])
        teacher_pool[pair] = exact
    used = pd.concat([students, *teacher_pool.values()]).drop_duplicates(["path"])
    # Runs of one table cell: (teacher, student, method, recipe, epochs) -> runs sorted by seed.
    groups: dict[tuple, pd.DataFrame] = {}
    for pair in pairs:
        pool = pd.concat([students[(students["teacher"] == pair[0]) & (students["student"] == pair[1])],
                          teacher_pool[pair]])
        for key, sel in pool.groupby(["method", "recipe", "epochs"], sort=True):
            groups[(pair, key[0], key[1], int(key[2]))] = sel.sort_values(["seed", "path"], kind="stable")

    # The teacher of each pair: from its distillation runs, else from its teacher runs.
    pair_teachers: dict[Pair, PairTeacher] = {}
    for pair in pairs:
        pair_students = students[(students["teacher"] == pair[0]) & (students["student"] == pair[1])]
        distilled = pair_students[pair_students["method"] != STUDENT_ROW]
        basis = distilled if not distilled.empty else teacher_pool[pair]
        pair_teachers[pair] = _pair_teacher(basis) if not basis.empty else PairTeacher((UNKNOWN,))
        pair_teachers[pair].metric = wording.teacher_metric

    main_recipe = _mode(list(used["recipe"]), lambda r: (r != DEFAULT_RECIPE, r))
    main_epochs = _mode([int(e) for e in used["epochs"]], lambda e: -e)

    # Rows: one per (method, recipe, epochs) configuration found.
    configs: dict[str, set[tuple[str, int]]] = {}
    for method, recipe, epochs in zip(used["method"], used["recipe"], used["epochs"]):
        configs.setdefault(method, set()).add((recipe, int(epochs)))
    not_reference = {(m, r, int(e)) for m, r, e, flag in zip(used["method"], used["recipe"], used["epochs"], used["not_reference"]) if flag}
    rows: list[Row] = []
    for method in sorted(configs, key=method_sort_key):
        ordered = sorted(configs[method], key=lambda c: ((c[0], c[1]) != (main_recipe, main_epochs),
                                                         c[0] != main_recipe, c[1] != main_epochs, c[0], c[1]))
        for recipe, epochs in ordered:
            suffix = []
            if len(ordered) > 1:
                if recipe != main_recipe:
                    suffix.append(recipe)
                if epochs != main_epochs:
                    suffix.append(f"{epochs} ep")
            label = display_name(method) + (f" ({', '.join(suffix)})" if suffix else "")
            if (method, recipe, epochs) in not_reference:
                label += f" {PILCROW}"
            rows.append(Row(method, recipe, epochs, label))
    teacher_rows = [r for r in rows if r.method == TEACHER_ROW]
    fallback_pairs = [p for p in pairs if teacher_pool[p].empty] if teacher_fallback else []
    if fallback_pairs and not teacher_rows:
        rows.insert(0, Row(TEACHER_ROW, None, None, display_name(TEACHER_ROW)))

    # Mixed recipes / epochs / recipe hashes.
    mix_notes: list[str] = []
    for what, attr, main in (("recipes", "recipe", main_recipe), ("epochs", "epochs", main_epochs)):
        by_value: dict[Any, list[str]] = {}
        for row in rows:
            if row.recipe is not None:
                by_value.setdefault(getattr(row, attr), []).append(row.label)
        if len(by_value) > 1:
            parts = [f"{key} ({', '.join(by_value[key])})" for key in sorted(by_value) if key != main]
            parts.append(f"{main} (others)")
            mix_notes.append(f"This table mixes {what}: {'; '.join(parts)}.")
    recipes = [main_recipe] + sorted({r.recipe for r in rows if r.recipe and r.recipe != main_recipe})
    epochs_list = [main_epochs] + sorted({r.epochs for r in rows if r.epochs is not None and r.epochs != main_epochs})

    first_teacher = next((r for r in rows if r.method == TEACHER_ROW), None)
    tables = []
    for statistic, (column, _) in STATISTICS.items():
        table_rows = []
        for proto in rows:
            row = Row(proto.method, proto.recipe, proto.epochs, proto.label)
            for pair in pairs:
                sel = groups.get((pair, row.method, row.recipe, row.epochs))
                if sel is not None:
                    row.cells[pair] = Cell.of(sel[column].to_numpy(dtype=float),
                                              recipe_hashes=tuple(sorted(set(sel["recipe_hash"]))),
                                              world_sizes=tuple(sorted({int(w) for w in sel["world_size"]})))
                    if statistic == "best":  # the optimism of a best-epoch number, paired per run
                        gaps = sel["best_top1"].to_numpy(dtype=float) - sel["last_top1"].to_numpy(dtype=float)
                        row.cells[pair].best_minus_last = tuple(float(g) for g in gaps if math.isfinite(g))
                    if row.method != STUDENT_ROW:
                        row.cells[pair].teacher_source = _kind_text(sel["teacher_kind"])
                        row.cells[pair].teacher_shas = tuple(sorted({s for s in sel["teacher_ckpt"] if s}))
                elif proto is first_teacher and pair in fallback_pairs:
                    pair_runs = students[(students["teacher"] == pair[0]) & (students["student"] == pair[1])]
                    cell = _teacher_top1_cell(pair_runs)
                    if cell is not None:
                        distilled = pair_runs[pair_runs["method"] != STUDENT_ROW]
                        basis = distilled if not distilled.empty else pair_runs
                        cell.teacher_source = _kind_text(basis["teacher_kind"])
                        cell.teacher_shas = tuple(sorted({s for s in basis["teacher_ckpt"] if s}))
                        row.cells[pair] = cell
            table_rows.append(row)
        table = _finish(suite, statistic, pairs, table_rows, recipes, epochs_list, mix_notes,
                        published, n_runs=len(used), wording=wording)
        table.teachers = dict(pair_teachers)
        tables.append(table)
    return tables


def _finish(suite: str, statistic: str, pairs: list[Pair], rows: list[Row], recipes: list[str],
            epochs: list[int], mix_notes: list[str], published: PublishedTable, n_runs: int,
            wording: Wording = CLASSIFICATION_WORDING) -> SuiteTable:
    # Best per pair and the Welch marking.
    for pair in pairs:
        candidates = [r.cells[pair] for r in rows if not r.is_header and pair in r.cells]
        if not candidates:
            continue
        top = max(c.mean for c in candidates)
        best = next(c for c in candidates if c.mean == top)
        for cell in candidates:
            if cell.mean == top:
                cell.best = True
                continue
            cell.p_value = welch_p(cell.values, best.values)
            cell.indistinguishable = cell.p_value is None or cell.p_value >= ALPHA

    # Published numbers of the same statistic.
    sources: list[tuple[str, str]] = []  # (statistic, source) of the published numbers used
    other: dict[str, list[str]] = {}
    for row in rows:
        for pair in pairs:
            pub = published.get((suite, pair[0], pair[1], row.method))
            if pub is None:
                continue
            if pub.kind != statistic:
                if row.label not in other.setdefault(pub.kind or pub.statistic, []):
                    other[pub.kind or pub.statistic].append(row.label)
                continue
            cell = row.cells.get(pair)
            if cell is None:
                continue
            cell.published = pub
            ref = (pub.statistic, pub.source)
            if ref not in sources:
                sources.append(ref)
            cell.source_ref = sources.index(ref) + 1
    verdicts.apply_verdicts(suite, rows, pairs)

    notes = ["Mean ± std over seeds, (n) = number of seeds; std with ddof=1, omitted when n = 1. "
             "Columns: teacher→student."]
    notes.append(wording.bold)
    notes.append(f"{DAGGER}: the difference to the pair's best method cannot be separated by a Welch t-test "
                 f"over seeds (p ≥ {ALPHA:g}, or fewer than 2 seeds on either side).")
    if any(c.from_teacher_top1 for r in rows for c in r.cells.values()):
        notes.append(f"{DDAGGER}: no teacher run records for this pair; {wording.fallback}, "
                     "n = distinct teacher checkpoints.")
    if statistic == "best":
        notes.append(f"Best epoch: the highest {wording.metric} over each run's epochs, selected on the evaluation set "
                     "and therefore optimistic; the last-epoch table is the default.")
    notes.extend(mix_notes)
    mixed_hashes = []
    for row in rows:
        hashes = sorted({h for c in row.cells.values() for h in c.recipe_hashes})
        if len(hashes) > 1:
            mixed_hashes.append(f"{row.label} ({', '.join(hashes)})")
    if mixed_hashes:
        notes.append("Rows whose seeds come from different resolved recipes (recipe_hash): "
                     + "; ".join(mixed_hashes) + ".")
    if any(row.label.endswith(PILCROW) for row in rows):
        notes.append(f"{PILCROW}: not a reference recipe — no reference code defines this method on this suite; "
                     "the suite's own stated choice (see the recipe notes in the run records).")
    mixed_worlds = [f"{row.label} ({', '.join(map(str, sizes))} processes)" for row in rows
                    if len(sizes := sorted({w for c in row.cells.values() for w in c.world_sizes})) > 1]
    if mixed_worlds:
        notes.append("Rows mixing runs on different numbers of DDP processes: " + "; ".join(mixed_worlds) + ".")
    stat_words = STATISTICS[statistic][1]
    if sources:
        notes.append(f"Δ = our mean − the published top-1 of the same suite, pair and method at the {stat_words} "
                     f"(published value and source in parentheses); {DASH} = no published number "
                     "(CKD has none).")
        for i, (stat, source) in enumerate(sources, 1):
            notes.append(f"[{i}] {stat}: {source}.")
    else:
        notes.append(wording.no_delta or f"Δ: no published numbers at the {stat_words} for these pairs in suite '{suite}'.")
    notes.append(f"{TEACHER_SOURCE_LABEL}: community <sha256[:{SHA_PREFIX}]> = {wording.community}, the runs distilled from it; "
                 f"trained = a teacher trained alone by this suite ({wording.trained}); "
                 "unknown = not recorded in the runs.")
    if any(c.delta_comparable is False for r in rows for c in r.cells.values()):
        notes.append(f"{SECTION}: teacher not the community checkpoint (trained by the suite, or unknown): "
                     "Δ not comparable, the published numbers used the community teachers.")
    for kind in sorted(other):
        words = STATISTICS[kind][1] if kind in STATISTICS else kind
        ref = f" (compared in {safe_name(suite)}_{kind})" if kind in STATISTICS else ""
        notes.append(f"Published numbers at the {words} exist for {', '.join(other[kind])}{ref}; "
                     "they are not comparable with this table's statistic.")
    table = SuiteTable(suite, statistic, pairs, rows, recipes, epochs, notes, sources, n_runs)
    table.notes += verdicts.notes(table)
    return table


# --------------------------------------------------------------------------- rendering


def _number(cell: Cell, pm: str) -> str:
    text = f"{cell.mean:.2f} {pm} {cell.std:.2f} ({cell.n})" if cell.n >= 2 else f"{cell.mean:.2f} ({cell.n})"
    return text


def _md_cell(cell: Cell) -> str:
    text = _number(cell, PM)
    if cell.from_teacher_top1:
        text += DDAGGER
    if cell.best:
        return f"**{text}**"
    if cell.indistinguishable:
        text += DAGGER
    return text


def _tex_cell(cell: Cell) -> str:
    text = tex_escape(_number(cell, PM))
    if cell.from_teacher_top1:
        text += r"$^\ddagger$"
    if cell.best:
        return rf"\textbf{{{text}}}"
    if cell.indistinguishable:
        text += r"$^\dagger$"
    return text


def _delta_text(cell: Cell | None, minus: str = "-") -> str | None:
    if cell is None or cell.delta is None:
        return None
    delta = round(cell.delta, 2) + 0.0  # no "-0.00"
    mark = "" if cell.delta_comparable else SECTION
    return f"{delta:+.2f}".replace("-", minus) + f" ({cell.published.top1:.2f} [{cell.source_ref}]){mark}"


def _teacher_source_cells(table: SuiteTable) -> list[str]:
    return [table.teachers[p].text if p in table.teachers else UNKNOWN for p in table.pairs]


def _source_row_index(table: SuiteTable) -> int:
    """Where the "Teacher source" row goes: right after the Teacher row, else first."""
    for i, row in enumerate(table.rows):
        if row.method == TEACHER_ROW:
            return i + 1
    return 0


def caption(table: SuiteTable) -> str:
    words = STATISTICS[table.statistic][1]
    recipe = ("Recipe" if len(table.recipes) == 1 else "Recipes") + ": " + ", ".join(table.recipes)
    epochs = ("Epochs" if len(table.epochs) == 1 else "Epochs") + ": " + ", ".join(str(e) for e in table.epochs)
    default = " (default)" if table.statistic == "last" else ""
    return (f"{table.suite}: top-1 accuracy (%) at the {words}{default}, mean ± std over seeds (n). "
            f"{recipe}. {epochs}.")


def title(table: SuiteTable) -> str:
    return f"{table.suite}: top-1 accuracy (%), {STATISTICS[table.statistic][1]}"


def render_markdown(table: SuiteTable) -> str:
    headers = ["Method"] + [f"{t}{ARROW}{s}" for t, s in table.pairs]
    align = ("left",) + ("right",) * len(table.pairs)
    body = []
    for row in table.rows:
        cells = [row.label]
        for pair in table.pairs:
            cell = row.cells.get(pair)
            if cell is None:
                cells.append(DASH)
                continue
            cells.append(_md_cell(cell))
        body.append(cells)
    body.insert(_source_row_index(table), [TEACHER_SOURCE_LABEL] + _teacher_source_cells(table))
    frame = pd.DataFrame(body, columns=headers)
    parts = [f"# {title(table)}", "", caption(table), "",
             frame.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    if table.has_delta:
        delta_rows = [["Δ " + row.label] + [_delta_text(row.cells.get(p)) or DASH for p in table.pairs]
                      for row in table.rows]
        dframe = pd.DataFrame(delta_rows, columns=headers)
        parts += ["Δ vs published (ours − published):", "",
                  dframe.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    parts += verdicts.markdown_blocks(table, headers, align)
    parts += ["Notes:", ""] + [f"- {note}" for note in table.notes] + [""]
    return "\n".join(parts)


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "Δ": r"$\Delta$", "≥": r"$\geq$",
        "→": r"$\to$", "−": r"$-$", "–": "--", "…": r"\ldots{}", "<": r"$<$", ">": r"$>$", "§": r"$^\S$",
        "≤": r"$\leq$", "·": r"$\cdot$", "√": r"$\surd$", "α": r"$\alpha$"}  # the last four: verdict notes


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def render_latex(table: SuiteTable) -> str:
    ncols = len(table.pairs) + 1
    lines = [
        "% Generated by benchmark/aggregate.py; do not edit. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(caption(table))}}}",
        rf"\label{{tab:{safe_name(table.suite)}-{table.statistic}}}",
        r"\begin{tabular}{l" + "r" * len(table.pairs) + "}",
        r"\toprule",
        " & ".join(["Method"] + [f"{tex_escape(t)}$\\to${tex_escape(s)}" for t, s in table.pairs]) + r" \\",
        r"\midrule",
    ]
    header_done = False
    source_at = _source_row_index(table)
    source_line = " & ".join(tex_escape(c) for c in [TEACHER_SOURCE_LABEL] + _teacher_source_cells(table)) + r" \\"
    for i, row in enumerate(table.rows):
        if i == source_at:
            lines.append(source_line)
        if not row.is_header and not header_done:
            lines.append(r"\midrule")
            header_done = True
        cells = [tex_escape(row.label)]
        for pair in table.pairs:
            cell = row.cells.get(pair)
            if cell is None:
                cells.append("--")
                continue
            cells.append(_tex_cell(cell))
        lines.append(" & ".join(cells) + r" \\")
    if source_at >= len(table.rows):
        lines.append(source_line)
    if table.has_delta:
        lines += [r"\midrule", rf"\multicolumn{{{ncols}}}{{l}}{{\emph{{$\Delta$ vs.\ published (ours $-$ published)}}}} \\"]
        for row in table.rows:
            cells = [tex_escape("Δ " + row.label)]
            cells += [tex_escape(_delta_text(row.cells.get(p), minus="−") or DASH) for p in table.pairs]
            lines.append(" & ".join(cells) + r" \\")
    lines += verdicts.latex_lines(table, tex_escape)
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", r"\footnotesize"]
    lines += [tex_escape(note) + r"\par" for note in table.notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def tidy_frame(table: SuiteTable) -> pd.DataFrame:
    out = []
    for row in table.rows:
        for pair in table.pairs:
            cell = row.cells.get(pair)
            if cell is None:
                continue
            header = row.is_header
            out.append({
                "suite": table.suite, "statistic": table.statistic,
                "recipe": row.recipe or "", "epochs": "" if row.epochs is None else str(row.epochs),
                "teacher": pair[0], "student": pair[1], "method": row.method,
                "mean": cell.mean, "std": cell.std, "n": cell.n,
                "published": cell.published.top1 if cell.published else math.nan,
                "delta": cell.delta if cell.delta is not None else math.nan,
                "best": "" if header else str(cell.best),
                "indistinguishable_from_best": "" if header else str(cell.indistinguishable),
                "values_from": "teacher_top1" if cell.from_teacher_top1 else "runs",
                "teacher_source": cell.teacher_source,
                "teacher_sha256": ";".join(sha[:SHA_PREFIX] for sha in cell.teacher_shas),
                "delta_comparable": "" if cell.delta_comparable is None else str(cell.delta_comparable),
                **verdicts.csv_fields(cell),
            })
    return pd.DataFrame(out, columns=list(CSV_COLUMNS))


def render_csv(table: SuiteTable) -> str:
    return tidy_frame(table).to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _write_renderings(table: Any, tables_dir: Path, renderers: Sequence[tuple[str, Callable[[Any], str]]]) -> list[Path]:
    """``<stem>.<ext>`` for each renderer, each written atomically: an interrupted aggregation leaves no half table."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    return [write_text(tables_dir / f"{table.stem}.{ext}", render(table)) for ext, render in renderers]


def write_table(table: SuiteTable, tables_dir: Path) -> list[Path]:
    return _write_renderings(table, tables_dir, (("md", render_markdown), ("tex", render_latex), ("csv", render_csv)))


# --------------------------------------------------------------------------- several metrics per pair


METRIC_LABELS = {"mAP": "AP"}  # column label of a record's metric name (COCO's AP is mAP@[.50:.95])

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


def suite_metric_spec(suite: str, records: pd.DataFrame) -> MetricSpec | None:
    """None for a classification suite (one top-1 table); else the suite's metrics per pair.

    Declared by the suite (``table_metrics``, ``metric_title``, ``table_notes`` of
    ``benchmark.suites.get_suite(suite)``), else taken from the records' ``metric_names``
    (their first three).
    """
    declared = None
    try:
        from benchmark.suites import get_suite

        declared = get_suite(suite)
    except Exception:  # noqa: BLE001 - an unknown suite (e.g. a test fixture): from the records
        declared = None
    metrics = declared.table_metrics if declared is not None else ()
    if not metrics:
        names = sorted({tuple(n) for n in records.get("metric_names", pd.Series([], dtype=object)) if len(n)})
        if not names or all(set(n) <= {"top1", "top5"} for n in names):
            return None
        metrics = names[0][:3]
    labels = tuple(METRIC_LABELS.get(m, m) for m in metrics)
    title = (declared.metric_title if declared is not None else "") or ", ".join(labels) + " (%)"
    return MetricSpec(metrics, labels, title, declared.table_notes if declared is not None else ())


@dataclass
class MetricTable:
    """One statistic of a suite with several metrics per pair: one :class:`SuiteTable` per metric,
    all with the pairs and rows of the first (the primary metric's)."""

    suite: str
    statistic: str
    spec: MetricSpec
    tables: list[SuiteTable]
    notes: list[str]

    @property
    def primary(self) -> SuiteTable:
        return self.tables[0]

    @property
    def pairs(self) -> list[Pair]:
        return self.primary.pairs

    @property
    def rows(self) -> list[Row]:
        return self.primary.rows

    @property
    def teachers(self) -> dict[Pair, PairTeacher]:
        return self.primary.teachers

    @property
    def stem(self) -> str:
        return self.primary.stem

    def cell(self, index: int, row: Row, pair: Pair) -> Cell | None:
        """The cell of metric ``index`` in the row configured as ``row`` (same method, recipe, epochs)."""
        for other in self.tables[index].rows:
            if (other.method, other.recipe, other.epochs) == (row.method, row.recipe, row.epochs):
                return other.cells.get(pair)
        return None


def _teacher_files_note(records: pd.DataFrame, pairs: list[Pair]) -> str | None:
    parts = []
    for pair in pairs:
        sel = records[(records["teacher"] == pair[0]) & (records["student"] == pair[1])]
        files = sorted({f for f in sel.get("teacher_file", pd.Series([], dtype=object)) if f})
        if files:
            parts.append(f"{pair[0]}{ARROW}{pair[1]}: {', '.join(files)}")
    return ("Teacher checkpoint files of the runs: " + "; ".join(parts) + ".") if parts else None


def build_metric_tables(records: pd.DataFrame, suite: str, spec: MetricSpec,
                        declared_pairs: list[Any] | None = None) -> list[MetricTable]:
    """The 'last' and 'best' tables of a suite with several metrics per pair (``records``: its
    non-ablation runs). No Δ against published numbers is offered for them."""
    from .load import with_metric

    per_metric = [build_suite_tables(with_metric(records, metric), suite, {}, declared_pairs, wording=spec.wording,
                                     teacher_fallback=(i == 0))
                  for i, metric in enumerate(spec.metrics)]
    if not per_metric or not per_metric[0]:
        return []
    out = []
    for s, statistic in enumerate(STATISTICS):
        tables = [metric_tables[s] for metric_tables in per_metric]
        notes = [note for note in tables[0].notes if note != verdicts.BEST_MINUS_LAST_NOTE]  # not rendered here
        columns = (f"Columns: teacher→student, then {', '.join(spec.labels)} per pair"
                   + (" (AP = mAP over IoU .50:.95)." if "AP" in spec.labels else "."))
        notes[0] = notes[0].replace("Columns: teacher→student.", columns)
        files = _teacher_files_note(records, tables[0].pairs)
        notes += ([files] if files else []) + list(spec.notes)
        out.append(MetricTable(suite, statistic, spec, tables, notes))
    return out


def metric_caption(table: MetricTable) -> str:
    words = STATISTICS[table.statistic][1]
    recipe = ("Recipe" if len(table.primary.recipes) == 1 else "Recipes") + ": " + ", ".join(table.primary.recipes)
    epochs = "Epochs: " + ", ".join(str(e) for e in table.primary.epochs)
    default = " (default)" if table.statistic == "last" else ""
    return f"{table.suite}: {table.spec.title} at the {words}{default}, mean ± std over seeds (n). {recipe}. {epochs}."


def metric_title(table: MetricTable) -> str:
    return f"{table.suite}: {table.spec.title}, {STATISTICS[table.statistic][1]}"


def render_metric_markdown(table: MetricTable) -> str:
    k = len(table.spec.labels)
    headers = ["Method"] + [f"{t}{ARROW}{s} {label}" for t, s in table.pairs for label in table.spec.labels]
    align = ("left",) + ("right",) * (len(headers) - 1)
    body = []
    for row in table.rows:
        cells = [row.label]
        for pair in table.pairs:
            for i in range(k):
                cell = table.cell(i, row, pair)
                cells.append(DASH if cell is None else _md_cell(cell))
        body.append(cells)
    source = [TEACHER_SOURCE_LABEL]
    for text in _teacher_source_cells(table.primary):
        source += [text] + [""] * (k - 1)
    body.insert(_source_row_index(table.primary), source)
    frame = pd.DataFrame(body, columns=headers)
    parts = [f"# {metric_title(table)}", "", metric_caption(table), "",
             frame.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    parts += ["Notes:", ""] + [f"- {note}" for note in table.notes] + [""]
    return "\n".join(parts)


def render_metric_latex(table: MetricTable) -> str:
    k = len(table.spec.labels)
    n = len(table.pairs)
    lines = [
        "% Generated by benchmark/aggregate.py; do not edit. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(metric_caption(table))}}}",
        rf"\label{{tab:{safe_name(table.suite)}-{table.statistic}}}",
        r"\begin{tabular}{l" + ("r" * k) * n + "}",
        r"\toprule",
        " & ".join(["Method"] + [rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(t)}$\to${tex_escape(s)}}}" for t, s in table.pairs]) + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(n)),
        " & ".join([""] + [tex_escape(label) for _ in table.pairs for label in table.spec.labels]) + r" \\",
        r"\midrule",
    ]
    source_at = _source_row_index(table.primary)
    source_cells = [tex_escape(TEACHER_SOURCE_LABEL)] + [rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(text)}}}"
                                                          for text in _teacher_source_cells(table.primary)]
    source_line = " & ".join(source_cells) + r" \\"
    header_done = False
    for i, row in enumerate(table.rows):
        if i == source_at:
            lines.append(source_line)
        if not row.is_header and not header_done:
            lines.append(r"\midrule")
            header_done = True
        cells = [tex_escape(row.label)]
        for pair in table.pairs:
            for m in range(k):
                cell = table.cell(m, row, pair)
                cells.append("--" if cell is None else _tex_cell(cell))
        lines.append(" & ".join(cells) + r" \\")
    if source_at >= len(table.rows):
        lines.append(source_line)
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", r"\footnotesize"]
    lines += [tex_escape(note) + r"\par" for note in table.notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


METRIC_CSV_COLUMNS = CSV_COLUMNS[:2] + ("metric",) + CSV_COLUMNS[2:]


def metric_tidy_frame(table: MetricTable) -> pd.DataFrame:
    frames = []
    for metric, sub in zip(table.spec.metrics, table.tables):
        frame = tidy_frame(sub)
        frame.insert(2, "metric", metric)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[list(METRIC_CSV_COLUMNS)]


def render_metric_csv(table: MetricTable) -> str:
    return metric_tidy_frame(table).to_csv(index=False, float_format="%.4f", lineterminator="\n")


def write_metric_table(table: MetricTable, tables_dir: Path) -> list[Path]:
    return _write_renderings(table, tables_dir, (("md", render_metric_markdown), ("tex", render_metric_latex), ("csv", render_metric_csv)))
