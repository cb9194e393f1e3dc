"""The benchmark tools themselves, on tiny sizes (default test run, not ``-m bench``)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from benchmark.bench import complexity, crd_scoring, step_overhead
from benchmark.bench.workloads import EMBEDDING_DIM, HINT_SHAPE, crd_k_for, loss_workload
from methods import method_names


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_complexity_quick_sweep_writes_the_documented_schema(tmp_path):
    out = tmp_path / "bench" / "loss_complexity.json"
    complexity.main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    complexity.validate_report(report)
    assert set(report["env"]) == {"torch", "device", "threads", "date"}
    rows = report["results"]
    assert {r["method"] for r in rows} == set(complexity.DEFAULT_METHODS)
    assert all(tuple(r) == complexity.RESULT_KEYS for r in rows)
    assert {r["n_data"] for r in rows if r["method"] == "crd"} == set(complexity.QUICK["crd_n"])
    assert all(r["n_data"] is None for r in rows if r["method"] != "crd")
    assert {r["batch_size"] for r in rows} == set(complexity.QUICK["batch_sizes"])
    markdown = out.with_suffix(".md").read_text()
    for label in ("| kd |", "| dkd |", "| ckd |", "| crd (N=200) |", "B=8"):
        assert label in markdown


def test_complexity_json_is_what_the_aggregator_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmark.report.plots import load_complexity

    out = tmp_path / "loss_complexity.json"
    complexity.main(["--quick", "--methods", "kd,crd", "--no-memory", "--out", str(out)])
    frame, env = load_complexity(out)
    assert set(frame["method"]) == {"kd", "crd"} and env["device"] == "cpu"


def test_validate_report_rejects_schema_drift():
    good = {
        "env": {"torch": "2", "device": "cpu", "threads": 1, "date": "d"},
        "results": [
            {"method": "crd", "batch_size": 4, "n_data": 100, "forward_backward_ms": 1.0, "peak_memory_mb": 0.5}
        ],
    }
    complexity.validate_report(good)
    bad_cases = []
    extra = copy.deepcopy(good)
    extra["results"][0]["nce_k"] = 3
    bad_cases.append(extra)
    no_n = copy.deepcopy(good)
    no_n["results"][0]["n_data"] = None
    bad_cases.append(no_n)
    kd_with_n = copy.deepcopy(good)
    kd_with_n["results"][0]["method"] = "kd"
    bad_cases.append(kd_with_n)
    nan = copy.deepcopy(good)
    nan["results"][0]["forward_backward_ms"] = float("nan")
    bad_cases.append(nan)
    env = copy.deepcopy(good)
    del env["env"]["date"]
    bad_cases.append(env)
    for case in bad_cases:
        with pytest.raises(ValueError):
            complexity.validate_report(case)


def test_crd_points_respect_the_memory_cap():
    points = complexity.sweep_points(["crd", "kd"], complexity.DEFAULT_BATCH_SIZES, complexity.DEFAULT_CRD_N)
    crd_500k = sorted(b for m, b, n in points if n == 500_000)
    assert crd_500k == [16, 32, 64, 128]
    assert len([p for p in points if p[2] == 50_000]) == len(complexity.DEFAULT_BATCH_SIZES)
    assert crd_k_for(5_000) == 2_500 and crd_k_for(50_000) == 16_384


@pytest.mark.parametrize("name", method_names())
def test_every_method_has_a_workload(name):
    workload = loss_workload(name, 4, n_data=300 if name.startswith("crd") else None)
    workload()
    workload()  # twice: CRD's Z is fixed and its banks updated; grads were reset in between
    assert all(t.grad is None for t in workload.leaves)


def test_workload_shapes_match_the_model_zoo():
    models = pytest.importorskip("benchmark.models")
    for name in ("resnet8x4", "resnet32x4"):
        model = models.build_model(name, 100).eval()
        with models.FeatureRecorder(model, models.feature_taps(name)) as recorder, torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
            assert tuple(recorder.features["hint"].shape[1:]) == HINT_SHAPE
            assert tuple(recorder.features["embedding"].shape[1:]) == (EMBEDDING_DIM,)


def test_crd_scoring_compare_tiny():
    result = crd_scoring.compare(batch_size=4, k=50, n_data=200, dim=8, repeats=2, with_loss=True)
    assert result["gather_ms"] > 0 and result["full_ms"] > 0 and result["speedup"] > 0
    assert len(result["gather_times_ms"]) == 2 and result["full_peak_memory_mb"] >= 0
    assert result["speedup_with_loss"] > 0 and len(result["full_with_loss_times_ms"]) == 2


def test_step_overhead_tiny(tmp_path):
    pytest.importorskip("benchmark.models")
    out = tmp_path / "step_overhead.json"
    report = step_overhead.main(
        [
            "--teacher",
            "resnet8",
            "--student",
            "resnet8",
            "--batch-size",
            "2",
            "--iters",
            "2",
            "--methods",
            "kd,fitnet,crd",
            "--num-data",
            "20000",
            "--no-profile",
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["config"]["teacher"] == "resnet8"
    rows = {row["method"]: row for row in report["result"]["methods"]}
    assert set(rows) == {"kd", "fitnet", "crd"}
    for row in rows.values():
        assert row["ratio"] > 0 and row["step_ms"] > 0 and set(row["phases_ms"]) == set(step_overhead.PHASES)
    assert rows["fitnet"]["extra_params"] > 0 and rows["kd"]["extra_params"] == 0
    assert report["result"]["contrast_draw_ms"] > 0
    assert "| crd |" in out.with_suffix(".md").read_text()


def test_crd_sync_benchmark_runs_two_gloo_processes_and_reports_the_overhead(tmp_path):
    from benchmark.bench import crd_sync

    out = tmp_path / "crd_sync.json"
    crd_sync.main(
        [
            "--nproc",
            "2",
            "--batch-size",
            "8",
            "--num-data",
            "512",
            "--nce-k",
            "16",
            "--feat-dim",
            "8",
            "--reps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert report["config"]["nproc"] == 2 and report["synchronised_ms"] > 0 and report["local_only_ms"] > 0
    assert report["sync_overhead_ms"] == pytest.approx(report["synchronised_ms"] - report["local_only_ms"], abs=2e-3)
    assert out.with_suffix(".md").read_text().startswith("# CRD memory step under DDP")
