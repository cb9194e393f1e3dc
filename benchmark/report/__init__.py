"""Aggregation of run records into paper-style tables, plots and an index.

The entry point is :func:`benchmark.report.aggregate.aggregate` (and its CLI); this
package holds the pieces:

- :mod:`.load`: find and read ``record.json`` files, skip and count what cannot be used;
- :mod:`.published`: the published numbers (``benchmark/published_numbers.csv``);
- :mod:`.tables`: per-suite tables (Markdown, LaTeX, tidy CSV), Welch marking, deltas;
- :mod:`.plots`: batch-size, loss-complexity, training-curve and runtime plots;
- :mod:`.index`: ``reports/index.md`` and ``index.html``.

Everything here is deterministic: the same records give byte-identical files.

Rule: a leaf — records in, tables/plots/index out; it reads run files through ``store/`` only.
"""
