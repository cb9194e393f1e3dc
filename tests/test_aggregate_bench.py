"""Benchmark of the aggregator: 1,000 synthetic records into all tables and plots.

The issue's target is < 10 s on the CI machine (2 shared CPU cores). Opt-in::

    .venv/bin/python -m pytest tests/test_aggregate_bench.py -m bench --benchmark-enable -q

The budget is checked against the process's CPU time (``time.process_time``):
on a shared machine the wall time also measures the neighbours. Both are
printed; pytest-benchmark's table shows the wall time. ``KD_AGGREGATE_BUDGET_S``
overrides the 10 s budget; ``KD_AGGREGATE_BUDGET_WALL=1`` checks the wall time instead.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from benchmark.aggregate import aggregate
from benchmark.report import load, plots, tables  # noqa: F401 - import cost is not part of the timing
from benchmark.report.synthetic import write_synthetic_sweep

N_RECORDS = 1000
BUDGET_S = float(os.environ.get("KD_AGGREGATE_BUDGET_S", "10"))
CHECK_WALL = os.environ.get("KD_AGGREGATE_BUDGET_WALL") == "1"


@pytest.mark.bench
def test_aggregate_1000_records(benchmark, tmp_path):
    work = tmp_path / "work"
    assert write_synthetic_sweep(work, N_RECORDS) == N_RECORDS
    bench_json = tmp_path / "loss_complexity.json"
    bench_json.write_text(
        json.dumps(
            {
                "env": {"device": "cpu"},
                "results": [
                    {
                        "method": m,
                        "batch_size": b,
                        "n_data": None,
                        "forward_backward_ms": 0.1 * b,
                        "peak_memory_mb": 0.5 * b,
                    }
                    for m in ("kd", "dkd", "ckd", "crd")
                    for b in (64, 128, 256, 512)
                ],
            }
        )
    )
    wall: list[float] = []
    cpu: list[float] = []

    def run():
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = aggregate([work], tmp_path / "tables", tmp_path / "reports", bench_json=bench_json)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        return summary

    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    assert summary.loaded == N_RECORDS
    assert len(summary.tables) == 2 * 2 * 3  # 2 suites x {last, best} x {md, tex, csv}
    assert len(summary.plots) == 2 * (2 * 3 + 1)  # curves, runtime, batch size per suite + complexity
    print(
        f"\naggregate(): {N_RECORDS} records in {wall[0]:.2f} s wall, {cpu[0]:.2f} s CPU "
        f"(budget {BUDGET_S:g} s {'wall' if CHECK_WALL else 'CPU'}; load average {os.getloadavg()[0]:.1f})"
    )
    spent = wall[0] if CHECK_WALL else cpu[0]
    assert spent < BUDGET_S, f"aggregate() took {spent:.2f} s for {N_RECORDS} records"
