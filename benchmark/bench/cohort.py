"""Lockstep cohort vs the same runs one after another: training images/s and peak memory.

    python -m benchmark.bench.cohort [--workloads digits,cifar] [--steps N] [--device cuda --amp]

Six runs of one (pair, seed) — the student baseline (ce) and KD, FitNet, CRD, DKD, CKD — train
``--steps`` batches each (default 100 on digits, 8 on cifar), after ``--warmup`` batches:

- **alone**: each run in turn, as ``--no-cohort`` trains them: its own data loading and
  preprocessing, its own teacher forward;
- **cohort**: the six in lockstep, as a sweep trains them by default: one data stream, one
  preprocessing and one teacher forward per batch, then each member's own step.

Each arm runs in a fresh process (so peak memory is its own: CUDA's allocator peak, or the
process's max RSS on CPU). Reported: images/s summed over the six runs and the ratio cohort/alone.

Workloads: ``digits`` — the digits suite's real data (scikit-learn's load_digits at 32x32) through
a DataLoader, small_cnn_w32 → small_cnn_w8; ``cifar`` — resnet32x4 → resnet8x4 (100 classes, the
CIFAR-100 recipe's methods, CRD with K = 16384 over 50,000 samples) on synthetic CIFAR-shaped uint8
batches, so the ratio there shows the shared compute (preprocessing + teacher) without loading.
The teachers carry random weights (saved to a temporary checkpoint): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .timing import add_device_arguments, apply_device_arguments, env_info, write_json_and_markdown

METHODS = ("ce", "kd", "fitnet", "crd", "dkd", "ckd")
WORKLOADS = {
    "digits": dict(suite="digits", teacher="small_cnn_w32", student="small_cnn_w8", dataset="digits", steps=100),
    "cifar": dict(suite="cifar100", teacher="resnet32x4", student="resnet8x4", dataset="cifar100", steps=8),
}
BATCH_SIZE = 64


def _members(workload: dict, teacher_file: str, num_data: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each method's DistillationModel config, as a sweep builds it (the suite's unified recipe)."""
    from benchmark.suites import Pair, get_suite
    from benchmark.train.config import RunSpec, classification_config

    suite = get_suite(workload["suite"])
    pair = Pair(workload["teacher"], workload["student"])
    members = {}
    for method in METHODS:
        spec = RunSpec(
            suite=suite,
            pair=pair,
            method=method,
            recipe=suite.resolve("unified", pair, method),
            seed=seed,
            run_dir=Path(teacher_file).parent / method,
            teacher_checkpoint=teacher_file,
        )
        model = dict(classification_config(spec, num_data).model)
        model.pop("type")
        members[method] = model
    return members


def _contrast_k(members: dict[str, dict]) -> int | None:
    from methods import METHODS as REGISTRY

    values = [REGISTRY.get(c["method"]["type"]).negatives_per_sample(c["method"]) for c in members.values()]
    return next((k for k in values if k is not None), None)


def _batches(name: str, steps: int, contrast_k: int | None, num_data: int, with_contrast: bool):
    """The arm's batch stream: the digits DataLoader (real data), or synthetic CIFAR-shaped batches."""
    if name == "digits":
        from benchmark.data.digits import DigitsDistill

        dataset = DigitsDistill("train", contrast_k=contrast_k if with_contrast else None)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
        )
        while True:
            yield from loader
    generator = torch.Generator().manual_seed(0)
    fixed = []
    for _ in range(min(steps, 4)):
        batch = {
            "inputs": torch.randint(0, 256, (BATCH_SIZE, 3, 32, 32), dtype=torch.uint8, generator=generator),
            "target": torch.randint(0, 100, (BATCH_SIZE,), generator=generator),
            "index": torch.randint(0, num_data, (BATCH_SIZE,), generator=generator),
        }
        if with_contrast and contrast_k:
            batch["contrast_index"] = torch.randint(0, num_data, (BATCH_SIZE, contrast_k + 1), generator=generator)
        fixed.append(batch)
    while True:
        yield from fixed


def _wrapper(model: torch.nn.Module, device: str, amp: bool):
    from mmengine.optim import build_optim_wrapper

    import benchmark.train.hooks  # noqa: F401  (CPUAutocastOptimWrapper)

    cfg: dict[str, Any] = dict(
        type="OptimWrapper", optimizer=dict(type="SGD", lr=0.05, momentum=0.9, weight_decay=5e-4)
    )
    if amp:
        cfg.update(type="AmpOptimWrapper" if device != "cpu" else "CPUAutocastOptimWrapper", dtype="bfloat16")
    return build_optim_wrapper(model, cfg)


def _timed_steps(step, batches, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step(next(batches))
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _arm(arm: str, name: str, steps: int, warmup: int, device: str, amp: bool, threads: int) -> dict[str, float]:
    """One arm in this (fresh) process: seconds of training and the peak memory."""
    from mmengine.optim import OptimWrapperDict

    from benchmark.models import build_model
    from benchmark.store.checkpoints import save_community_checkpoint
    from benchmark.train.cohort import CohortModel
    from benchmark.train.model import DistillationModel

    if device == "cpu" and threads > 0:
        torch.set_num_threads(threads)
    workload = WORKLOADS[name]
    num_data = 1438 if name == "digits" else 50_000
    num_classes = 10 if name == "digits" else 100
    with tempfile.TemporaryDirectory() as folder:
        teacher_file = str(Path(folder) / "teacher.pth")
        torch.manual_seed(0)
        save_community_checkpoint(build_model(workload["teacher"], num_classes), teacher_file)
        members = _members(workload, teacher_file, num_data)
        contrast_k = _contrast_k(members)
        seconds = 0.0
        if arm == "cohort":
            cohort = CohortModel(members, data_preprocessor=members["ce"]["data_preprocessor"]).to(device)
            wrappers = OptimWrapperDict(**{m: _wrapper(cohort.members[m], device, amp) for m in METHODS})
            batches = _batches(name, steps, contrast_k, num_data, with_contrast=True)
            seconds = _timed_steps(lambda b: cohort.train_step(b, wrappers), batches, steps, warmup, device)
        else:
            for method, cfg in members.items():
                model = DistillationModel(**cfg).to(device)
                wrapper = _wrapper(model, device, amp)
                needs = cfg["method"]["type"] == "crd"
                batches = _batches(name, steps, contrast_k if needs else None, num_data, with_contrast=needs)
                seconds += _timed_steps(
                    lambda b, m=model, w=wrapper: m.train_step(b, w), batches, steps, warmup, device
                )
                del model, wrapper
    if device != "cpu":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return {"seconds": seconds, "peak_memory_mb": round(peak, 1)}


def measure(name: str, steps: int, warmup: int, device: str, amp: bool, threads: int) -> dict[str, Any]:
    """Both arms of one workload, each in a fresh process; images/s over the six runs and the ratio."""
    context = multiprocessing.get_context("spawn")
    arms = {}
    for arm in ("alone", "cohort"):
        with context.Pool(1) as pool:
            arms[arm] = pool.apply(_arm, (arm, name, steps, warmup, device, amp, threads))
    images = len(METHODS) * steps * BATCH_SIZE
    for result in arms.values():
        result["images_per_s"] = round(images / result["seconds"], 1)
        result["seconds"] = round(result["seconds"], 3)
    return {
        "workload": name,
        "pair": f"{WORKLOADS[name]['teacher']} -> {WORKLOADS[name]['student']}",
        "methods": list(METHODS),
        "batch_size": BATCH_SIZE,
        "steps": steps,
        **arms,
        "speedup": round(arms["alone"]["seconds"] / arms["cohort"]["seconds"], 3),
        "memory_ratio": round(arms["cohort"]["peak_memory_mb"] / arms["alone"]["peak_memory_mb"], 3),
    }


def to_markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    lines = [
        "# Lockstep cohort vs runs one after another",
        "",
        f"{env['device']}, torch {env['torch']}, {env['threads']} thread(s), {env['date']}; "
        f"amp {report['amp']}; six runs ({', '.join(METHODS)}), batch {BATCH_SIZE}, the steps per run below, "
        "after 2 unmeasured ones. Produced by `python -m benchmark.bench.cohort`.",
        "",
        "| workload | pair | steps | alone img/s | cohort img/s | speed-up | peak MB alone | peak MB cohort |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workload']} | {r['pair']} | {r['steps']} | {r['alone']['images_per_s']} | {r['cohort']['images_per_s']} | "
            f"{r['speedup']:.2f}x | {r['alone']['peak_memory_mb']} | {r['cohort']['peak_memory_mb']} |"
        )
    lines += [
        "",
        "img/s: training images per second summed over the six runs. Peak memory: CUDA allocator peak, "
        "or the arm's process max RSS on CPU.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="digits,cifar", help="comma list of: " + ", ".join(WORKLOADS))
    parser.add_argument(
        "--steps", type=int, default=None, help="measured batches per run (default: 100 on digits, 8 on cifar)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured batches per run first (default 2)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (AmpOptimWrapper on CUDA)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/cohort.json"))
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    apply_device_arguments(parser, args)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    results = []
    for name in names:
        steps = args.steps or WORKLOADS[name]["steps"]
        result = measure(name, steps, args.warmup, args.device, args.amp, args.threads)
        print(
            f"{name}: alone {result['alone']['images_per_s']} img/s, cohort {result['cohort']['images_per_s']} img/s "
            f"-> {result['speedup']:.2f}x; peak {result['alone']['peak_memory_mb']} -> {result['cohort']['peak_memory_mb']} MB",
            flush=True,
        )
        results.append(result)
    report = {"env": env_info(args.device), "amp": args.amp, "results": results}
    json_path, md_path = write_json_and_markdown(report, args.out, to_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return report


if __name__ == "__main__":
    main()
