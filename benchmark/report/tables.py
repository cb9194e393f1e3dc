"""Paper-style tables per suite: Markdown, LaTeX and a tidy CSV.

Layout as in the CRD/DKD papers: one column per teacher→student pair (per pair and metric for a suite
with several metrics, e.g. COCO's AP / AP50 / AP75), the Teacher and Student (trained alone) header
rows, then one row per distillation method with ``mean ± std (n)`` over seeds. Per pair the best method
is bold and the methods that a Welch t-test over seeds cannot separate from it carry a dagger. A Δ block
compares with the published number of the same suite, pair and method for the same statistic (last
epoch / best epoch).

Every table says which teacher each pair used (the "Teacher source" row and the CSV's ``teacher_source``
/ ``teacher_sha256`` columns): the community checkpoint (sha256 prefix) or a teacher trained by the suite
(its top-1). The published numbers were obtained with the community teachers, so the Δ of a run whose
teacher was not the community one is marked § (not comparable).

This module is the public entry; the work is in :mod:`.model` (the table model), :mod:`.build` (from
run records) and :mod:`.render` (Markdown, LaTeX, CSV and the writer).
"""

from __future__ import annotations

from benchmark.suites.base import Pair

from .build import (
    METRIC_LABELS,
    build_metric_tables,
    build_suite_tables,
    build_tables,
    declared_suite,
    order_pairs,
    suite_metric_spec,
    suite_pair_order,
    teacher_kinds,
)
from .model import (
    ALPHA,
    ARROW,
    CLASSIFICATION_SPEC,
    CLASSIFICATION_WORDING,
    CSV_COLUMNS,
    DAGGER,
    DASH,
    DDAGGER,
    DEFAULT_RECIPE,
    DETECTION_WORDING,
    DISPLAY,
    METHOD_ORDER,
    PILCROW,
    PM,
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
from .render import (
    METRIC_CSV_COLUMNS,
    caption,
    render_csv,
    render_latex,
    render_markdown,
    table_frame,
    tex_escape,
    tidy_frame,
    title,
    write_table,
)

# The several-metrics names of before the one writer: the same functions.
write_metric_table = write_table

__all__ = [
    "ALPHA",
    "ARROW",
    "CLASSIFICATION_SPEC",
    "CLASSIFICATION_WORDING",
    "CSV_COLUMNS",
    "DAGGER",
    "DASH",
    "DDAGGER",
    "DEFAULT_RECIPE",
    "DETECTION_WORDING",
    "DISPLAY",
    "METHOD_ORDER",
    "METRIC_CSV_COLUMNS",
    "METRIC_LABELS",
    "PILCROW",
    "PM",
    "SECTION",
    "SHA_PREFIX",
    "STATISTICS",
    "TEACHER_SOURCE_LABEL",
    "UNKNOWN",
    "Cell",
    "MetricSpec",
    "MetricTable",
    "Pair",
    "PairKey",
    "PairTeacher",
    "Row",
    "SuiteTable",
    "Wording",
    "build_metric_tables",
    "build_suite_tables",
    "build_tables",
    "caption",
    "declared_suite",
    "display_name",
    "method_sort_key",
    "order_pairs",
    "render_csv",
    "render_latex",
    "render_markdown",
    "safe_name",
    "suite_metric_spec",
    "suite_pair_order",
    "table_frame",
    "teacher_kinds",
    "tex_escape",
    "tidy_frame",
    "title",
    "welch_p",
    "write_metric_table",
    "write_table",
]
