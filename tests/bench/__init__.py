"""Benchmarks (``-m bench``) and the quick checks of the benchmark tools (default run)."""
