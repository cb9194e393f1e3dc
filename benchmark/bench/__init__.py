"""Performance benchmarks of the distillation methods (CPU or CUDA).

- :mod:`.complexity`: loss forward+backward time and peak memory vs batch size (and CRD's
  bank size) -> ``reports/bench/loss_complexity.{json,md}``;
- :mod:`.step_overhead`: a full distillation training step against the CE-only floor ->
  ``reports/bench/step_overhead.{json,md}``;
- :mod:`.crd_scoring`: CRD's memory scoring, reference row gather vs full-bank matmul ->
  ``reports/bench/crd_scoring.{json,md}``.

Timings are medians of repetitions after warm-up; configurations that are compared are
run interleaved in one process, so load from other processes hits all of them alike.

Rule: scripts run with ``python -m``; each measures its baseline in the same run, nothing imports them.
"""
