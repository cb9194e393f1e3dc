"""Reproducibility benchmark suite for knowledge distillation (runners, suites, aggregation)."""
