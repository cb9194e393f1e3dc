"""Building the tables from run records: the rows, cells, best-method marks, published numbers and notes of
every table of a suite."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from benchmark.store.records import STUDENT_ROW, TEACHER_ROW
from benchmark.suites import Suite, UnknownSuiteError
from benchmark.suites.base import Pair

from . import verdict as verdicts
from .load import COMMUNITY, TRAINED, with_metric
from .model import (
    ALPHA,
    ARROW,
    CLASSIFICATION_WORDING,
    DAGGER,
    DASH,
    DDAGGER,
    DEFAULT_RECIPE,
    PILCROW,
    SECTION,
    SHA_PREFIX,
    STATISTICS,
    TEACHER_SOURCE_LABEL,
    UNKNOWN,
    Cell,
    MetricSpec,
    MetricTable,
    PairKey,
    PairTeacher,
    Row,
    SuiteTable,
    Wording,
    display_name,
    method_sort_key,
    safe_name,
    welch_p,
)
from .published import PublishedTable

METRIC_LABELS = {"mAP": "AP"}  # column label of a record's metric name (COCO's AP is mAP@[.50:.95])

# --------------------------------------------------------------------------- pair order


def declared_suite(suite: str) -> Suite | None:
    """The registered suite of that name; None for an unknown one (a test fixture's suite: sorted pairs,
    metrics from the records)."""
    try:
        from benchmark.suites import get_suite  # looked up per call: tests swap the registry module
    except ImportError:  # the registry swapped for None: no suite is declared
        return None
    try:
        return get_suite(suite)
    except UnknownSuiteError:
        return None


def _as_declared(item: Pair | PairKey | str) -> Pair | str:
    """A declared pair as a :class:`Pair`; a name ("teacher-student") stays a name."""
    if isinstance(item, (Pair, str)):
        return item
    return Pair(*map(str, item))


def suite_pair_order(suite: str) -> list[Pair | str] | None:
    """The pair order declared by ``benchmark.suites.get_suite(suite).pairs``; None for an unknown suite."""
    declared = declared_suite(suite)
    return None if declared is None else [_as_declared(item) for item in declared.pairs or ()]


def order_pairs(pairs: set[PairKey], declared: Sequence[Pair | str] | None) -> list[PairKey]:
    """The declared pairs first, in their order; the others after them, sorted."""

    def position(key: PairKey) -> tuple[int, str, str]:
        pair = Pair(*key)  # a record's (teacher, student) key
        for i, item in enumerate(declared or ()):
            if item == pair or item == pair.name:
                return (i, "", "")
        return (len(declared or ()), key[0], key[1])

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
    shas = tuple(
        sorted({sha for sha, kind in zip(runs["teacher_ckpt"], runs["teacher_kind"]) if kind == COMMUNITY and sha})
    )
    top1: dict[str, float] = {}  # one value per distinct trained checkpoint
    for sha, kind, t_top1, last, teacher_row in zip(
        runs["teacher_ckpt"], runs["teacher_kind"], runs["teacher_top1"], runs["last_top1"], is_teacher
    ):
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


def build_suite_tables(
    records: pd.DataFrame,
    suite: str,
    published: PublishedTable,
    declared_pairs: Sequence[Pair | str] | None = None,
    wording: Wording = CLASSIFICATION_WORDING,
    teacher_fallback: bool = True,
) -> list[SuiteTable]:
    """The 'last' and 'best' tables of one suite (``records``: its non-ablation runs).

    The value of a cell is ``last_top1`` / ``best_top1`` (see :func:`benchmark.report.load.with_metric`
    for another metric); ``teacher_fallback``: a pair without teacher runs gets its Teacher
    cell from the runs' ``teacher_top1`` (‡).
    """
    records = records.sort_values(["path"], kind="stable")
    records = records.assign(teacher_kind=teacher_kinds(records) if len(records) else [])
    students = records[records["method"] != TEACHER_ROW]
    teachers = records[records["method"] == TEACHER_ROW]
    pairs = order_pairs({Pair(t, s) for t, s in zip(students["teacher"], students["student"])}, declared_pairs)
    if not pairs:
        return []

    # Teacher runs of each pair: those recorded for exactly this pair, else any run of that teacher.
    teacher_pool: dict[PairKey, pd.DataFrame] = {}
    for pair in pairs:
        exact = teachers[(teachers["teacher"] == pair[0]) & (teachers["student"] == pair[1])]
        if exact.empty:
            exact = teachers[teachers["teacher"] == pair[0]].drop_duplicates(
                ["recipe", "recipe_hash", "seed", "epochs", "batch_size"]
            )
        teacher_pool[pair] = exact
    used = pd.concat([students, *teacher_pool.values()]).drop_duplicates(["path"])
    # Runs of one table cell: (teacher, student, method, recipe, epochs) -> runs sorted by seed.
    groups: dict[tuple, pd.DataFrame] = {}
    for pair in pairs:
        pool = pd.concat(
            [students[(students["teacher"] == pair[0]) & (students["student"] == pair[1])], teacher_pool[pair]]
        )
        for key, sel in pool.groupby(["method", "recipe", "epochs"], sort=True):
            groups[(pair, key[0], key[1], int(key[2]))] = sel.sort_values(["seed", "path"], kind="stable")

    # The teacher of each pair: from its distillation runs, else from its teacher runs.
    pair_teachers: dict[PairKey, PairTeacher] = {}
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
    not_reference = {
        (m, r, int(e))
        for m, r, e, flag in zip(used["method"], used["recipe"], used["epochs"], used["not_reference"])
        if flag
    }
    rows: list[Row] = []
    for method in sorted(configs, key=method_sort_key):
        ordered = sorted(
            configs[method],
            key=lambda c: (
                (c[0], c[1]) != (main_recipe, main_epochs),
                c[0] != main_recipe,
                c[1] != main_epochs,
                c[0],
                c[1],
            ),
        )
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
                    row.cells[pair] = Cell.of(
                        sel[column].to_numpy(dtype=float),
                        recipe_hashes=tuple(sorted(set(sel["recipe_hash"]))),
                        world_sizes=tuple(sorted({int(w) for w in sel["world_size"]})),
                    )
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
        table = _finish(
            suite,
            statistic,
            pairs,
            table_rows,
            recipes,
            epochs_list,
            mix_notes,
            published,
            n_runs=len(used),
            wording=wording,
        )
        table.teachers = dict(pair_teachers)
        tables.append(table)
    return tables


def _finish(
    suite: str,
    statistic: str,
    pairs: list[PairKey],
    rows: list[Row],
    recipes: list[str],
    epochs: list[int],
    mix_notes: list[str],
    published: PublishedTable,
    n_runs: int,
    wording: Wording = CLASSIFICATION_WORDING,
) -> SuiteTable:
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

    notes = [
        "Mean ± std over seeds, (n) = number of seeds; std with ddof=1, omitted when n = 1. Columns: teacher→student."
    ]
    notes.append(wording.bold)
    notes.append(
        f"{DAGGER}: the difference to the pair's best method cannot be separated by a Welch t-test "
        f"over seeds (p ≥ {ALPHA:g}, or fewer than 2 seeds on either side)."
    )
    if any(c.from_teacher_top1 for r in rows for c in r.cells.values()):
        notes.append(
            f"{DDAGGER}: no teacher run records for this pair; {wording.fallback}, n = distinct teacher checkpoints."
        )
    if statistic == "best":
        notes.append(
            f"Best epoch: the highest {wording.metric} over each run's epochs, selected on the evaluation set "
            "and therefore optimistic; the last-epoch table is the default."
        )
    notes.extend(mix_notes)
    mixed_hashes = []
    for row in rows:
        hashes = sorted({h for c in row.cells.values() for h in c.recipe_hashes})
        if len(hashes) > 1:
            mixed_hashes.append(f"{row.label} ({', '.join(hashes)})")
    if mixed_hashes:
        notes.append(
            "Rows whose seeds come from different resolved recipes (recipe_hash): " + "; ".join(mixed_hashes) + "."
        )
    if any(row.label.endswith(PILCROW) for row in rows):
        notes.append(
            f"{PILCROW}: not a reference recipe — no reference code defines this method on this suite; "
            "the suite's own stated choice (see the recipe notes in the run records)."
        )
    mixed_worlds = [
        f"{row.label} ({', '.join(map(str, sizes))} processes)"
        for row in rows
        if len(sizes := sorted({w for c in row.cells.values() for w in c.world_sizes})) > 1
    ]
    if mixed_worlds:
        notes.append("Rows mixing runs on different numbers of DDP processes: " + "; ".join(mixed_worlds) + ".")
    stat_words = STATISTICS[statistic][1]
    if sources:
        notes.append(
            f"Δ = our mean − the published top-1 of the same suite, pair and method at the {stat_words} "
            f"(published value and source in parentheses); {DASH} = no published number "
            "(CKD has none)."
        )
        for i, (stat, source) in enumerate(sources, 1):
            notes.append(f"[{i}] {stat}: {source}.")
    else:
        notes.append(
            wording.no_delta or f"Δ: no published numbers at the {stat_words} for these pairs in suite '{suite}'."
        )
    notes.append(
        f"{TEACHER_SOURCE_LABEL}: community <sha256[:{SHA_PREFIX}]> = {wording.community}, "
        "the runs distilled from it; "
        f"trained = a teacher trained alone by this suite ({wording.trained}); "
        "unknown = not recorded in the runs."
    )
    if any(c.delta_comparable is False for r in rows for c in r.cells.values()):
        notes.append(
            f"{SECTION}: teacher not the community checkpoint (trained by the suite, or unknown): "
            "Δ not comparable, the published numbers used the community teachers."
        )
    for kind in sorted(other):
        words = STATISTICS[kind][1] if kind in STATISTICS else kind
        ref = f" (compared in {safe_name(suite)}_{kind})" if kind in STATISTICS else ""
        notes.append(
            f"Published numbers at the {words} exist for {', '.join(other[kind])}{ref}; "
            "they are not comparable with this table's statistic."
        )
    table = SuiteTable(suite, statistic, pairs, rows, recipes, epochs, notes, sources, n_runs)
    table.notes += verdicts.notes(table)
    return table


def suite_metric_spec(suite: str, records: pd.DataFrame) -> MetricSpec | None:
    """None for a classification suite (one top-1 table); else the suite's metrics per pair.

    Declared by the suite (``table_metrics``, ``metric_title``, ``table_notes`` of
    ``benchmark.suites.get_suite(suite)``), else taken from the records' ``metric_names``
    (their first three).
    """
    declared = declared_suite(suite)
    metrics = declared.table_metrics if declared is not None else ()
    if not metrics:
        names = sorted({tuple(n) for n in records.get("metric_names", pd.Series([], dtype=object)) if len(n)})
        if not names or all(set(n) <= {"top1", "top5"} for n in names):
            return None
        metrics = names[0][:3]
    labels = tuple(METRIC_LABELS.get(m, m) for m in metrics)
    title = (declared.metric_title if declared is not None else "") or ", ".join(labels) + " (%)"
    return MetricSpec(metrics, labels, title, declared.table_notes if declared is not None else ())


def _teacher_files_note(records: pd.DataFrame, pairs: list[PairKey]) -> str | None:
    parts = []
    for pair in pairs:
        sel = records[(records["teacher"] == pair[0]) & (records["student"] == pair[1])]
        files = sorted({f for f in sel.get("teacher_file", pd.Series([], dtype=object)) if f})
        if files:
            parts.append(f"{pair[0]}{ARROW}{pair[1]}: {', '.join(files)}")
    return ("Teacher checkpoint files of the runs: " + "; ".join(parts) + ".") if parts else None


def build_metric_tables(
    records: pd.DataFrame, suite: str, spec: MetricSpec, declared_pairs: Sequence[Pair | str] | None = None
) -> list[MetricTable]:
    """The 'last' and 'best' tables of a suite with several metrics per pair (``records``: its
    non-ablation runs). No Δ against published numbers is offered for them."""
    per_metric = [
        build_suite_tables(
            with_metric(records, metric), suite, {}, declared_pairs, wording=spec.wording, teacher_fallback=(i == 0)
        )
        for i, metric in enumerate(spec.metrics)
    ]
    if not per_metric or not per_metric[0]:
        return []
    out = []
    for s, statistic in enumerate(STATISTICS):
        tables = [metric_tables[s] for metric_tables in per_metric]
        notes = [note for note in tables[0].notes if note != verdicts.BEST_MINUS_LAST_NOTE]  # not rendered here
        columns = f"Columns: teacher→student, then {', '.join(spec.labels)} per pair" + (
            " (AP = mAP over IoU .50:.95)." if "AP" in spec.labels else "."
        )
        notes[0] = notes[0].replace("Columns: teacher→student.", columns)
        files = _teacher_files_note(records, tables[0].pairs)
        notes += ([files] if files else []) + list(spec.notes)
        out.append(MetricTable(suite, statistic, spec, tables, notes))
    return out


def build_tables(
    records: pd.DataFrame,
    suite: str,
    published: PublishedTable,
    spec: MetricSpec | None,
    declared_pairs: Sequence[Pair | str] | None = None,
) -> list[MetricTable]:
    """The 'last' and 'best' tables of a suite as rendered: top-1 for a classification suite (``spec`` None or
    not grouped), else one column per pair and metric of ``spec``."""
    if spec is None or not spec.grouped:
        return [MetricTable.classification(t) for t in build_suite_tables(records, suite, published, declared_pairs)]
    return build_metric_tables(records, suite, spec, declared_pairs)
