"""Records in, paper-style tables, plots and the report index out: :func:`aggregate` (the library side
of ``benchmark/aggregate.py``; the sweeps call it at their end). Same records in, byte-identical files out."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # the heavy imports (pandas, scipy, matplotlib) happen in aggregate()
    from benchmark.report.index import Block
    from benchmark.report.load import LoadResult

log = logging.getLogger("benchmark.aggregate")

BENCH_JSON = Path("bench") / "loss_complexity.json"  # relative to the reports dir


@dataclass
class AggregateSummary:
    found: int = 0  # record.json files found
    loaded: int = 0  # completed, unique runs used
    skipped_corrupt: int = 0  # partial / corrupt / unknown schema
    failed: int = 0
    running: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason)
    suites: list[str] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    index: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. plots skipped and why

    def counts_line(self) -> str:
        line = (
            f"{self.loaded} loaded, {self.skipped_corrupt} skipped (corrupt), "
            f"{self.failed} failed runs, {self.running} running"
        )
        if self.duplicates:
            line += f", {self.duplicates} duplicates ignored"
        return line

    def __str__(self) -> str:
        return (
            f"{self.counts_line()}; {len(self.suites)} suites, {len(self.tables)} table files, "
            f"{len(self.plots)} plot files"
        )

    @property
    def ok(self) -> bool:
        return self.loaded > 0


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def aggregate(
    work_dirs: Iterable[str | os.PathLike] | str | os.PathLike,
    tables_dir: str | os.PathLike = "tables",
    reports_dir: str | os.PathLike = "reports",
    bench_json: str | os.PathLike | None = None,
) -> AggregateSummary:
    """Aggregate every run record under ``work_dirs`` into tables, plots and the index.

    ``bench_json`` defaults to ``<reports_dir>/bench/loss_complexity.json``; the
    complexity plot is skipped with a note when it is absent. Raises
    :class:`FileNotFoundError` when a work dir does not exist. With no usable
    record, only the index (with the counts) is written and ``summary.ok`` is False.
    """
    if isinstance(work_dirs, (str, os.PathLike)):
        work_dirs = [work_dirs]
    work_dirs = [Path(w) for w in work_dirs]
    for work_dir in work_dirs:
        if not work_dir.is_dir():
            raise FileNotFoundError(f"work dir not found: {work_dir}")
    from benchmark.report import index as index_mod
    from benchmark.report import plots, tables
    from benchmark.report.load import load_records, with_metric
    from benchmark.report.published import load_published

    tables_dir, reports_dir = Path(tables_dir), Path(reports_dir)
    bench_path = Path(bench_json) if bench_json is not None else reports_dir / BENCH_JSON

    loaded = load_records(work_dirs)
    summary = AggregateSummary(
        found=loaded.found,
        loaded=len(loaded.records),
        skipped_corrupt=loaded.count("corrupt"),
        failed=loaded.count("failed"),
        running=loaded.count("running"),
        duplicates=loaded.count("duplicate"),
        skipped=[(s.path, s.kind, s.reason) for s in loaded.skipped],
    )
    frame = loaded.records
    published = load_published()
    sections: list[tuple[str, list, list[tuple[str, list[Path]]], list[str]]] = []

    for suite in sorted(set(frame["suite"])):
        runs = frame[frame["suite"] == suite]
        spec = tables.suite_metric_spec(suite, runs)
        if spec is not None:  # several metrics per pair (COCO: AP, AP50, AP75); plots show the primary one
            runs = with_metric(runs, spec.metrics[0])
        main, ablation = runs[~runs["ablation"].astype(bool)], runs[runs["ablation"].astype(bool)]
        if spec is None:
            suite_tables = tables.build_suite_tables(main, suite, published, tables.suite_pair_order(suite))
            written = [tables.write_table(table, tables_dir) for table in suite_tables]
            primary_tables, label = suite_tables, "top-1"
        else:
            suite_tables = tables.build_metric_tables(main, suite, spec, tables.suite_pair_order(suite))
            written = [tables.write_metric_table(table, tables_dir) for table in suite_tables]
            primary_tables, label = [t.primary for t in suite_tables], spec.labels[0]
        suite_plots: list[tuple[str, list[Path]]] = []
        notes: list[str] = []
        for paths in written:
            summary.tables += paths
        if not suite_tables:
            notes.append("no table: no student runs outside the batch-size ablation")
        if suite_tables:
            last = primary_tables[0]
            suite_plots.append(("Training curves", plots.plot_curves(last, main, reports_dir, metric_label=label)))
            runtime = plots.plot_runtime(last, main, reports_dir)
            if runtime:
                suite_plots.append(("Time per iteration", runtime))
            else:
                notes.append("runtime plot skipped: no run recorded its runtime")
        batch = plots.plot_batch_size(suite, ablation, main, reports_dir, metric_label=label)
        if batch:
            suite_plots.append(("Accuracy vs batch size", batch))
        for _, paths in suite_plots:
            summary.plots += paths
        summary.suites.append(suite)
        sections.append((suite, suite_tables, suite_plots, notes))

    complexity: list[Path] = []
    if bench_path.is_file():
        try:
            complexity = plots.plot_complexity(bench_path, reports_dir)
        except ValueError as exc:
            summary.notes.append(f"complexity plot skipped: {bench_path.as_posix()}: {exc}")
    else:
        summary.notes.append(f"complexity plot skipped: no benchmark JSON at {bench_path.as_posix()}")
    summary.plots += complexity
    for note in summary.notes:
        log.info(note)

    blocks = _index_blocks(summary, loaded, sections, complexity, tables_dir, reports_dir)
    summary.index = index_mod.write_index(blocks, reports_dir, "Knowledge-distillation benchmark results")
    return summary


def _links(paths: Sequence[Path], start: Path) -> str:
    return " · ".join(f"[{p.suffix[1:]}]({_rel(p, start)})" for p in paths)


def _teachers_item(table) -> str:
    """One line: how many pairs used the community teacher checkpoint, a trained one, or an unknown one."""
    from benchmark.report.tables import SECTION

    counts: dict[str, int] = {}
    for pair in table.pairs:
        teacher = table.teachers.get(pair)
        kinds = teacher.kinds if teacher is not None else ("unknown",)
        key = kinds[0] if len(kinds) == 1 else "mixed"
        counts[key] = counts.get(key, 0) + 1
    words = {
        "community": "the community checkpoint",
        "trained": "trained by the suite",
        "unknown": "unknown",
        "mixed": "mixed",
    }
    parts = [f"{words[k]} for {counts[k]} pair(s)" for k in ("community", "trained", "unknown", "mixed") if k in counts]
    line = "Teachers: " + ", ".join(parts)
    if set(counts) - {"community"}:
        line += f"; a Δ vs published is marked {SECTION} (not comparable) where the teacher is not the community one"
    return line


def _index_blocks(
    summary: AggregateSummary, loaded: LoadResult, sections, complexity: list[Path], tables_dir: Path, reports_dir: Path
) -> list[Block]:
    blocks: list[Block] = [("h1", "Knowledge-distillation benchmark results")]
    blocks.append(("p", f"**Runs**: {loaded.found} record files found: {summary.counts_line()}."))
    if not summary.ok:
        blocks.append(("p", "No usable run record: no table or plot was written."))
    blocks += _verdict_blocks(sections)
    for suite, suite_tables, suite_plots, notes in sections:
        blocks.append(("h2", f"Suite `{suite}`"))
        items = []
        for table in suite_tables:
            words = "last epoch (default)" if table.statistic == "last" else "best epoch"
            paths = [tables_dir / f"{table.stem}.{ext}" for ext in ("md", "tex", "csv")]
            shown = " / ".join(table.spec.labels) if hasattr(table, "spec") else "top-1"
            items.append(f"Table, {shown} at the {words}: {_links(paths, reports_dir)}")
        if suite_tables:
            items.append(_teachers_item(suite_tables[0]))
        for name, paths in suite_plots:
            items.append(f"{name}: {_links(paths, reports_dir)}")
        items += [f"Note: {note}" for note in notes]
        blocks.append(("ul", items))
        for name, paths in suite_plots:
            blocks.append(("img", f"{suite}: {name}", _rel(paths[0], reports_dir)))
    blocks.append(("h2", "Loss complexity"))
    if complexity:
        blocks.append(("ul", [f"Loss cost vs batch size: {_links(complexity, reports_dir)}"]))
        blocks.append(("img", "loss cost vs batch size", _rel(complexity[0], reports_dir)))
    else:
        blocks.append(("p", "; ".join(n for n in summary.notes if n.startswith("complexity")) or "none"))
    blocks.append(("h2", "Environment of the runs"))
    if loaded.env:
        rows = [
            [key, ", ".join(f"{value} ({count})" for value, count in sorted(values.items()))]
            for key, values in sorted(loaded.env.items())
        ]
        blocks.append(("p", "Distinct values over the loaded runs (number of runs in parentheses)."))
        blocks.append(("table", ["key", "values"], rows))
    else:
        blocks.append(("p", "No environment recorded."))
    if summary.skipped:
        blocks.append(("h2", "Skipped records"))
        blocks.append(("table", ["record", "kind", "reason"], [list(s) for s in summary.skipped]))
    return blocks


def _verdict_blocks(sections) -> list[Block]:
    """One screen: per suite and table, how many published numbers we reproduce, miss, exceed or cannot tell yet."""
    from benchmark.report import verdict as verdicts

    rows = [row for suite, suite_tables, _, _ in sections for row in verdicts.index_rows(suite, suite_tables)]
    if not rows:
        return []
    return [
        ("h2", "Verdicts vs published numbers"),
        (
            "p",
            "Cells with a comparable published number (same suite, pair, method, statistic, community "
            "teacher), by verdict; the rule is in each table's notes. Inconclusive cells list the seeds "
            "that would settle them (never: more seeds cannot).",
        ),
        ("table", verdicts.INDEX_HEADERS, rows),
    ]
