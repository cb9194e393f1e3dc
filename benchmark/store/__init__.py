"""Files and their guarantees: run records, checkpoints, run claims, atomic writes.

Rule: ``store/`` imports nothing of the benchmark but ``benchmark.errors`` and ``benchmark.faults``;
everything above it (``train/``, ``sweep/``, the reports) reads and writes run files through it.
"""
