"""The Markdown, LaTeX and tidy-CSV renderings of a table (one or several metrics per pair) and their writer."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchmark.store.atomic import write_text

from . import verdict as verdicts
from .model import (
    ARROW,
    CSV_COLUMNS,
    DAGGER,
    DASH,
    DDAGGER,
    PM,
    SECTION,
    SHA_PREFIX,
    STATISTICS,
    TEACHER_ROW,
    TEACHER_SOURCE_LABEL,
    UNKNOWN,
    Cell,
    MetricTable,
    SuiteTable,
    safe_name,
)

METRIC_CSV_COLUMNS = CSV_COLUMNS[:2] + ("metric",) + CSV_COLUMNS[2:]

_TEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "Δ": r"$\Delta$",
    "≥": r"$\geq$",
    "→": r"$\to$",
    "−": r"$-$",
    "–": "--",
    "…": r"\ldots{}",
    "<": r"$<$",
    ">": r"$>$",
    "§": r"$^\S$",
    "≤": r"$\leq$",
    "·": r"$\cdot$",
    "√": r"$\surd$",
    "α": r"$\alpha$",
}  # the last four: verdict notes


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------- pieces


def _number(cell: Cell, pm: str) -> str:
    return f"{cell.mean:.2f} {pm} {cell.std:.2f} ({cell.n})" if cell.n >= 2 else f"{cell.mean:.2f} ({cell.n})"


def _md_cell(cell: Cell | None) -> str:
    if cell is None:
        return DASH
    text = _number(cell, PM)
    if cell.from_teacher_top1:
        text += DDAGGER
    if cell.best:
        return f"**{text}**"
    if cell.indistinguishable:
        text += DAGGER
    return text


def _tex_cell(cell: Cell | None) -> str:
    if cell is None:
        return "--"
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


def _teacher_source_cells(table: MetricTable) -> list[str]:
    return [table.teachers[p].text if p in table.teachers else UNKNOWN for p in table.pairs]


def _source_row_index(table: MetricTable) -> int:
    """Where the "Teacher source" row goes: right after the Teacher row, else first."""
    for i, row in enumerate(table.rows):
        if row.method == TEACHER_ROW:
            return i + 1
    return 0


def _width(table: MetricTable) -> int:
    """Columns per pair: one per metric when grouped, else one (the primary metric's)."""
    return len(table.spec.labels) if table.spec.grouped else 1


def _body(table: MetricTable, render_cell) -> list[list[str]]:
    """Per row: its label, then its rendered cells (per pair, per metric)."""
    k = _width(table)
    return [
        [row.label] + [render_cell(table.cell(m, row, pair)) for pair in table.pairs for m in range(k)]
        for row in table.rows
    ]


def caption(table: MetricTable) -> str:
    words = STATISTICS[table.statistic][1]
    recipe = ("Recipe" if len(table.primary.recipes) == 1 else "Recipes") + ": " + ", ".join(table.primary.recipes)
    epochs = "Epochs: " + ", ".join(str(e) for e in table.primary.epochs)
    default = " (default)" if table.statistic == "last" else ""
    return f"{table.suite}: {table.spec.title} at the {words}{default}, mean ± std over seeds (n). {recipe}. {epochs}."


def title(table: MetricTable) -> str:
    return f"{table.suite}: {table.spec.title}, {STATISTICS[table.statistic][1]}"


# --------------------------------------------------------------------------- Markdown


def render_markdown(table: MetricTable) -> str:
    k = _width(table)
    if table.spec.grouped:
        headers = ["Method"] + [f"{t}{ARROW}{s} {label}" for t, s in table.pairs for label in table.spec.labels]
    else:
        headers = ["Method"] + [f"{t}{ARROW}{s}" for t, s in table.pairs]
    align = ("left",) + ("right",) * (len(headers) - 1)
    body = _body(table, _md_cell)
    source = [TEACHER_SOURCE_LABEL]
    for text in _teacher_source_cells(table):
        source += [text] + [""] * (k - 1)
    body.insert(_source_row_index(table), source)
    frame = pd.DataFrame(body, columns=headers)
    parts = [
        f"# {title(table)}",
        "",
        caption(table),
        "",
        frame.to_markdown(index=False, disable_numparse=True, colalign=align),
        "",
    ]
    if not table.spec.grouped:  # the per-pair blocks have one column per pair
        parts += _markdown_blocks(table.primary, headers, align)
    parts += ["Notes:", ""] + [f"- {note}" for note in table.notes] + [""]
    return "\n".join(parts)


def _markdown_blocks(table: SuiteTable, headers: list[str], align: tuple[str, ...]) -> list[str]:
    parts: list[str] = []
    if table.has_delta:
        delta_rows = [
            ["Δ " + row.label] + [_delta_text(row.cells.get(p)) or DASH for p in table.pairs] for row in table.rows
        ]
        dframe = pd.DataFrame(delta_rows, columns=headers)
        parts += [
            "Δ vs published (ours − published):",
            "",
            dframe.to_markdown(index=False, disable_numparse=True, colalign=align),
            "",
        ]
    return parts + verdicts.markdown_blocks(table, headers, align)


# --------------------------------------------------------------------------- LaTeX


def render_latex(table: MetricTable) -> str:
    k, n = _width(table), len(table.pairs)
    lines = [
        "% Generated by benchmark/aggregate.py; do not edit. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(caption(table))}}}",
        rf"\label{{tab:{safe_name(table.suite)}-{table.statistic}}}",
        r"\begin{tabular}{l" + ("r" * k) * n + "}",
        r"\toprule",
    ]
    if table.spec.grouped:  # a pair spans its metrics' columns, labelled on a second header line
        lines += [
            " & ".join(
                ["Method"]
                + [rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(t)}$\to${tex_escape(s)}}}" for t, s in table.pairs]
            )
            + r" \\",
            "".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(n)),
            " & ".join([""] + [tex_escape(label) for _ in table.pairs for label in table.spec.labels]) + r" \\",
        ]
        source = [rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(text)}}}" for text in _teacher_source_cells(table)]
    else:
        lines.append(
            " & ".join(["Method"] + [f"{tex_escape(t)}$\\to${tex_escape(s)}" for t, s in table.pairs]) + r" \\"
        )
        source = [tex_escape(text) for text in _teacher_source_cells(table)]
    lines.append(r"\midrule")
    source_at = _source_row_index(table)
    source_line = " & ".join([tex_escape(TEACHER_SOURCE_LABEL)] + source) + r" \\"
    header_done = False
    for i, (row, cells) in enumerate(zip(table.rows, _body(table, _tex_cell))):
        if i == source_at:
            lines.append(source_line)
        if not row.is_header and not header_done:
            lines.append(r"\midrule")
            header_done = True
        lines.append(" & ".join([tex_escape(cells[0])] + cells[1:]) + r" \\")
    if source_at >= len(table.rows):
        lines.append(source_line)
    if not table.spec.grouped:
        lines += _latex_blocks(table.primary)
    lines += [r"\bottomrule", r"\end{tabular}", "", r"\smallskip", r"\footnotesize"]
    lines += [tex_escape(note) + r"\par" for note in table.notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def _latex_blocks(table: SuiteTable) -> list[str]:
    lines: list[str] = []
    if table.has_delta:
        lines += [
            r"\midrule",
            rf"\multicolumn{{{len(table.pairs) + 1}}}{{l}}"
            r"{\emph{$\Delta$ vs.\ published (ours $-$ published)}} \\",
        ]
        for row in table.rows:
            cells = [tex_escape("Δ " + row.label)]
            cells += [tex_escape(_delta_text(row.cells.get(p), minus="−") or DASH) for p in table.pairs]
            lines.append(" & ".join(cells) + r" \\")
    return lines + verdicts.latex_lines(table, tex_escape)


# --------------------------------------------------------------------------- CSV


def tidy_frame(table: SuiteTable) -> pd.DataFrame:
    """One line per cell of one metric's grid."""
    out = []
    for row in table.rows:
        for pair in table.pairs:
            cell = row.cells.get(pair)
            if cell is None:
                continue
            header = row.is_header
            out.append(
                {
                    "suite": table.suite,
                    "statistic": table.statistic,
                    "recipe": row.recipe or "",
                    "epochs": "" if row.epochs is None else str(row.epochs),
                    "teacher": pair[0],
                    "student": pair[1],
                    "method": row.method,
                    "mean": cell.mean,
                    "std": cell.std,
                    "n": cell.n,
                    "published": cell.published.top1 if cell.published else math.nan,
                    "delta": cell.delta if cell.delta is not None else math.nan,
                    "best": "" if header else str(cell.best),
                    "indistinguishable_from_best": "" if header else str(cell.indistinguishable),
                    "values_from": "teacher_top1" if cell.from_teacher_top1 else "runs",
                    "teacher_source": cell.teacher_source,
                    "teacher_sha256": ";".join(sha[:SHA_PREFIX] for sha in cell.teacher_shas),
                    "delta_comparable": "" if cell.delta_comparable is None else str(cell.delta_comparable),
                    **verdicts.csv_fields(cell),
                }
            )
    return pd.DataFrame(out, columns=list(CSV_COLUMNS))


def table_frame(table: MetricTable) -> pd.DataFrame:
    """The tidy CSV's frame: every metric's lines, with a ``metric`` column when grouped."""
    if not table.spec.grouped:
        return tidy_frame(table.primary)
    frames = []
    for metric, sub in zip(table.spec.metrics, table.tables):
        frame = tidy_frame(sub)
        frame.insert(2, "metric", metric)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)[list(METRIC_CSV_COLUMNS)]


def render_csv(table: MetricTable) -> str:
    return table_frame(table).to_csv(index=False, float_format="%.4f", lineterminator="\n")


# --------------------------------------------------------------------------- files


RENDERERS = (("md", render_markdown), ("tex", render_latex), ("csv", render_csv))


def write_table(table: MetricTable | SuiteTable, tables_dir: Path) -> list[Path]:
    """``<stem>.md``, ``.tex`` and ``.csv`` of ``table`` (a :class:`SuiteTable`: its top-1 table), each written
    atomically: an interrupted aggregation leaves no half table."""
    if isinstance(table, SuiteTable):
        table = MetricTable.classification(table)
    tables_dir.mkdir(parents=True, exist_ok=True)
    return [write_text(tables_dir / f"{table.stem}.{ext}", render(table)) for ext, render in RENDERERS]
