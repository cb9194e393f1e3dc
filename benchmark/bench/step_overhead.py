"""Distillation step overhead: each method's full training step against the CE-only floor.

    python -m benchmark.bench.step_overhead --teacher resnet32x4 --student resnet8x4 \\
        --batch-size 64 [--iters 5] [--methods kd,fitnet,crd,crd_kd,dkd,ckd] [--device cpu|cuda]
        [--threads 1] [--clock auto|cpu|wall] [--out reports/bench/step_overhead.json] [--no-profile]

floor  = teacher forward under ``torch.no_grad`` + student forward + CE + backward + SGD step;
method = the training's own step: :class:`benchmark.train.model.DistillationModel` in loss mode
         (teacher forward under no_grad with the method's feature taps, student forward, the
         method's loss terms) + backward + SGD step over the student and the method's parameters.

Every configuration has its own copies of the networks (same weights, so the same work;
nobody else's hooks) and the same fixed batch; one warm-up round, then ``--iters`` rounds,
each timing the floor and every method once, order rotated. Reported per method: the
ratio of medians (method / floor), the median of the per-round ratios, the wall-clock
ratio, the median time of each phase, and the method's own cost measured alone ("loss
fwd+bwd": its loss terms and their backward on one step's captured outputs) with the
"attributable" ratio 1 + loss / floor. The issue's target is ≤ 1.05x. Methods over it
end to end are profiled with ``torch.profiler`` (top operators of a step), and every
method costing > 0.5% of the floor gets a profile of its own loss, unless ``--no-profile``.

Clock: on a one-thread CPU run, process CPU time (``time.process_time``) by default. On the
shared 2-core development machine, wall times of the same 5-second step vary by 2x with
the neighbours' load (time slices lost to other processes); CPU time does not count
those (cache and memory-bandwidth contention still show: the "teacher ratio", identical
work in every configuration, gives the remaining noise). ``--clock wall`` forces wall
time (always used on CUDA, where the device is synchronised around each phase).

CRD's contrast indices are drawn by the data side (:class:`benchmark.data.contrast.ContrastSampler`,
in DataLoader workers) and arrive with the batch: they are pre-drawn here, and the draw
cost per batch is reported separately (it is on the step's critical path only with
``num_workers=0``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.store.checkpoints import save_community_checkpoint
from benchmark.train.model import DistillationModel
from methods import METHODS, Distiller, StepInputs

from .timing import (
    adaptive_ms,
    add_device_arguments,
    apply_device_arguments,
    env_info,
    median,
    synchronize,
    write_json_and_markdown,
)

# Every registered method that runs a teacher, in table order (the registry's facts).
DEFAULT_METHODS = tuple(
    sorted(
        (name for name in METHODS.module_dict if METHODS.get(name).needs_teacher),
        key=lambda name: METHODS.get(name).table_order,
    )
)
TARGET_RATIO = 1.05
PHASES = ("teacher_ms", "student_ms", "loss_ms", "backward_ms", "optimizer_ms")


def _sgd(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """RepDistiller's CIFAR-100 optimiser (SGD, lr 0.05, momentum 0.9, wd 5e-4)."""
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


@dataclass
class Batch:
    images: Tensor
    target: Tensor
    index: Tensor
    contrast_index: Tensor | None


@dataclass
class StepRunner:
    """One configuration's networks, optimiser and step; ``__call__`` returns phase times (ms)."""

    name: str
    teacher: nn.Module
    student: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Batch
    device: torch.device
    method: Distiller | None = None  # None: the CE-only floor
    recorders: tuple[Any, Any] | None = None
    clock: str = "wall"  # or "cpu": this process's CPU time
    # The training's own DistillationModel: a method's step is exactly what MMEngine runs in a run.
    model: Any = None
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    wall_ms: list[float] = field(default_factory=list)

    def _clock(self) -> float:
        synchronize(self.device)
        return time.process_time() if self.clock == "cpu" else time.perf_counter()

    def __call__(self) -> float:
        if self.model is not None:
            return self._model_step()
        b = self.batch
        wall = time.perf_counter()
        t0 = self._clock()
        with torch.no_grad():
            logits_teacher = self.teacher(b.images)
        t1 = self._clock()
        logits_student = self.student(b.images)
        t2 = self._clock()
        if self.method is None:
            loss = F.cross_entropy(logits_student, b.target)
        else:
            rec_s, rec_t = self.recorders if self.recorders else (None, None)
            losses = self.method(
                StepInputs(
                    logits_student=logits_student,
                    target=b.target,
                    logits_teacher=logits_teacher,
                    epoch=240,
                    features_student=dict(rec_s.features) if rec_s else {},
                    features_teacher=dict(rec_t.features) if rec_t else {},
                    index=b.index,
                    contrast_index=b.contrast_index,
                )
            )
            loss = sum(losses.values())
        forward_ms = (1e3 * (t1 - t0), 1e3 * (t2 - t1), 1e3 * (self._clock() - t2))
        return self._backward_and_step(loss, t0, wall, forward_ms)

    def _backward_and_step(self, loss: Tensor, t0: float, wall: float, forward_ms: tuple[float, ...]) -> float:
        """Backward and SGD step, timed; records the phases (the forward ones given) and returns the step (ms)."""
        t3 = self._clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = self._clock()
        self.optimizer.step()
        t5 = self._clock()
        self.wall_ms.append(1e3 * (time.perf_counter() - wall))
        for phase, value in zip(PHASES, (*forward_ms, 1e3 * (t4 - t3), 1e3 * (t5 - t4))):
            self.phases[phase].append(value)
        return 1e3 * (t5 - t0)

    def _model_step(self) -> float:
        """One training step of the run's own model: its loss mode (teacher, student, method), backward, SGD.

        The phase split of the forward comes from the model's own timing (wall clock, as recorded
        in every run record); the step total uses this runner's clock like the floor's.
        """
        b = self.batch
        wall = time.perf_counter()
        t0 = self._clock()
        self.model.measure_time = True
        losses = self.model(b.images, b.target, b.index, b.contrast_index, mode="loss")
        timing = self.model.last_timing
        forward_ms = (timing["teacher_forward_ms"], timing["student_forward_ms"], timing["distill_loss_ms"])
        return self._backward_and_step(sum(losses.values()), t0, wall, forward_ms)


def build_runners(
    teacher_name: str,
    student_name: str,
    batch_size: int,
    methods: list[str],
    device: torch.device,
    num_data: int = 50_000,
    seed: int = 0,
    clock: str = "wall",
    image_size: int = 32,
    num_classes: int = 100,
) -> tuple[StepRunner, list[StepRunner]]:
    """The floor and one runner per method, all starting from the same weights and batch."""
    from benchmark.models import build_model

    torch.manual_seed(seed)
    teacher_proto = build_model(teacher_name, num_classes).to(device).eval().requires_grad_(False)
    student_proto = build_model(student_name, num_classes).to(device)
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(num_data, generator=gen)[:batch_size]
    images = torch.randn(batch_size, 3, image_size, image_size, generator=gen)
    target = torch.randint(num_classes, (batch_size,), generator=gen)

    def copies() -> tuple[nn.Module, nn.Module]:
        teacher = build_model(teacher_name, num_classes).to(device)
        teacher.load_state_dict(teacher_proto.state_dict())
        student = build_model(student_name, num_classes).to(device)
        student.load_state_dict(student_proto.state_dict())
        return teacher.eval().requires_grad_(False), student.train()

    def batch(k: int | None) -> Batch:
        contrast = None
        if k is not None:
            contrast = torch.randint(num_data, (batch_size, k + 1), generator=gen)
            contrast[:, 0] = index
            contrast = contrast.to(device)
        return Batch(images.to(device), target.to(device), index.to(device), contrast)

    teacher, student = copies()
    floor = StepRunner("floor", teacher, student, _sgd(list(student.parameters())), batch(None), device, clock=clock)
    with tempfile.TemporaryDirectory(prefix="kd-step-overhead-") as folder:
        teacher_file = save_community_checkpoint(teacher_proto, Path(folder) / "teacher.pth", epoch=0, accuracy=None)
        runners = []
        for name in methods:
            torch.manual_seed(seed)
            model = DistillationModel(
                student=student_name,
                method={"type": name},
                num_classes=num_classes,
                num_data=num_data,
                teacher=teacher_name,
                teacher_checkpoint=str(teacher_file),
                input_size=(3, image_size, image_size),
            ).to(device)
            model.student.load_state_dict(student_proto.state_dict())  # the floor's weights: the same work
            model.train()
            params = list(model.student.parameters()) + list(model.method.parameters())
            recorders = (model.student_recorder, model.teacher_recorder) if model.student_recorder else None
            runners.append(
                StepRunner(
                    name,
                    model.teacher,
                    model.student,
                    _sgd(params),
                    batch(model.method.contrast_k),
                    device,
                    model.method,
                    recorders,
                    clock=clock,
                    model=model,
                )
            )
    return floor, runners


def contrast_draw_ms(batch_size: int, k: int = 16384, num_data: int = 50_000, repeats: int = 3) -> float:
    """Data-side cost of one batch of CRD contrast indices (CIFAR-100-like labels)."""
    import numpy as np

    from benchmark.data.contrast import ContrastSampler

    targets = np.arange(num_data) % 100
    sampler = ContrastSampler(targets, k, rng=np.random.default_rng(0))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(batch_size):
            sampler.draw(i)
        times.append(1e3 * (time.perf_counter() - start))
    return median(times)


def loss_only(runner: StepRunner) -> Callable[[], None]:
    """The runner's method alone: forward+backward of its loss terms on one step's outputs.

    The networks run once to capture logits and features; those become leaves (student
    side requiring grad), so a call costs exactly the method's own work, as the step's
    loss phase plus the part of its backward that lies inside the method.
    """
    assert runner.method is not None
    b = runner.batch
    with torch.no_grad():
        logits_teacher = runner.teacher(b.images)
        logits_student = runner.student(b.images)
    rec_s, rec_t = runner.recorders if runner.recorders else (None, None)
    features_s = {k: v.detach().requires_grad_() for k, v in (rec_s.features if rec_s else {}).items()}
    features_t = {k: v.detach() for k, v in (rec_t.features if rec_t else {}).items()}
    logits_student = logits_student.detach().requires_grad_()
    step = StepInputs(
        logits_student=logits_student,
        target=b.target,
        logits_teacher=logits_teacher,
        epoch=240,
        features_student=features_s,
        features_teacher=features_t,
        index=b.index,
        contrast_index=b.contrast_index,
    )
    leaves = [logits_student, *features_s.values(), *runner.method.parameters()]

    def call() -> None:
        sum(runner.method(step).values()).backward()
        for leaf in leaves:
            leaf.grad = None

    return call


def profile_call(fn: Callable[[], object], device: torch.device, calls: int = 2, top: int = 12) -> str:
    """Top operators by self time over ``calls`` calls (CPU, plus CUDA when on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=top)


def profile_step(runner: StepRunner, steps: int = 2, top: int = 12) -> str:
    """Top operators of whole steps; the runner's phase log is left as it was."""
    phases, wall = {k: list(v) for k, v in runner.phases.items()}, list(runner.wall_ms)
    table = profile_call(runner, runner.device, steps, top)
    runner.phases, runner.wall_ms = phases, wall
    return table


def measure(floor: StepRunner, runners: list[StepRunner], iters: int, warmup: int = 1) -> dict[str, list[float]]:
    """Step times (ms) per configuration, round-robin with rotated order."""
    all_runners = [floor, *runners]
    for _ in range(warmup):
        for runner in all_runners:
            runner()
    for runner in all_runners:
        runner.phases = {p: [] for p in PHASES}
        runner.wall_ms = []
    times: dict[str, list[float]] = {r.name: [] for r in all_runners}
    for round_ in range(iters):
        shift = round_ % len(all_runners)
        for runner in all_runners[shift:] + all_runners[:shift]:
            times[runner.name].append(runner())
    return times


def summarise(
    floor: StepRunner, runners: list[StepRunner], times: dict[str, list[float]], loss_ms: dict[str, float] | None = None
) -> dict[str, Any]:
    floor_ms = median(times["floor"])
    floor_teacher = median(floor.phases["teacher_ms"])
    rows = []
    for runner in runners:
        step = times[runner.name]
        paired = [m / f for m, f in zip(step, times["floor"])]
        ratio = median(step) / floor_ms
        rows.append(
            {
                "method": runner.name,
                "step_ms": round(median(step), 3),
                "ratio": round(ratio, 4),
                "wall_ratio": round(median(runner.wall_ms) / median(floor.wall_ms), 4),
                # Same work as the floor's teacher forward (taps aside): its ratio shows the noise.
                "teacher_ratio": round(median(runner.phases["teacher_ms"]) / floor_teacher, 4),
                "paired_ratio": round(median(paired), 4),
                "paired_ratio_iqr": [round(q, 4) for q in _quartiles(paired)],
                "within_target": ratio <= TARGET_RATIO,
                **(
                    {}
                    if loss_ms is None
                    else {
                        "loss_fwd_bwd_ms": round(loss_ms[runner.name], 3),
                        # The method's own work on top of the floor; what the end-to-end ratio would be without noise.
                        "attributable_ratio": round(1 + loss_ms[runner.name] / floor_ms, 4),
                    }
                ),
                "phases_ms": {p: round(median(v), 3) for p, v in runner.phases.items()},
                "extra_params": sum(p.numel() for p in runner.method.parameters()) if runner.method else 0,
            }
        )
    return {
        "clock": floor.clock,
        "floor_ms": round(floor_ms, 3),
        "floor_wall_ms": round(median(floor.wall_ms), 3),
        "floor_phases_ms": {p: round(median(v), 3) for p, v in floor.phases.items()},
        "methods": rows,
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0])
    q = statistics.quantiles(values, n=4)
    return (q[0], q[2])


_CLOCKS = {
    "cpu": "CPU time of this process (time.process_time: time slices lost to other processes on a shared "
    "machine do not count; one thread, so it equals the compute time)",
    "wall": "wall time (time.perf_counter, device synchronised)",
}


def to_markdown(report: dict[str, Any]) -> str:
    env, cfg, res = report["env"], report["config"], report["result"]
    lines = [
        "# Distillation step overhead",
        "",
        f"{cfg['teacher']} → {cfg['student']}, B={cfg['batch_size']}, {cfg['iters']} interleaved rounds after "
        f"{cfg['warmup']} warm-up; {env['device']}, {env['threads']} thread(s), torch {env['torch']}, {env['date']}. "
        f"Clock: {_CLOCKS[res['clock']]}.",
        f"Floor (teacher no-grad forward + student CE forward/backward + SGD step): **{res['floor_ms']:.1f} ms** "
        f"(phases: " + ", ".join(f"{k[:-3]} {v:.1f}" for k, v in res["floor_phases_ms"].items()) + f"; "
        f"wall {res['floor_wall_ms']:.1f} ms).",
        f"Target: ≤ {TARGET_RATIO}x the floor. 'teacher ratio' compares the teacher forward, the same work in every "
        "configuration: its distance from 1 is the measurement noise.",
        "",
        "'loss fwd+bwd' is the method alone (its loss terms and their backward on one step's captured outputs, "
        "median of ≥ 5 calls); 'attributable' = 1 + that / floor, the overhead the method itself adds.",
        "",
        "| method | step ms | ratio (of medians) | per-round ratio: median [IQR] | wall-clock ratio | teacher ratio | "
        "loss fwd+bwd ms | attributable | loss ms (in step) | backward ms | optimizer ms | ≤ target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in res["methods"]:
        ph = row["phases_ms"]
        lo, hi = row["paired_ratio_iqr"]
        lines.append(
            f"| {row['method']} | {row['step_ms']:.1f} | {row['ratio']:.3f} | {row['paired_ratio']:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{row['wall_ratio']:.3f} | {row['teacher_ratio']:.3f} | "
            f"{row.get('loss_fwd_bwd_ms', float('nan')):.1f} | {row.get('attributable_ratio', float('nan')):.3f} | "
            f"{ph['loss_ms']:.1f} | {ph['backward_ms']:.1f} | {ph['optimizer_ms']:.1f} | {'yes' if row['within_target'] else 'NO'} |"
        )
    if "contrast_draw_ms" in res:
        lines += [
            "",
            f"CRD contrast-index draw (data side, {cfg['batch_size']} samples, K=16384, one process): "
            f"{res['contrast_draw_ms']:.1f} ms per batch — off the step when DataLoader workers draw it.",
        ]
    for name, table in report.get("profiles", {}).items():
        lines += [
            "",
            f"## Profile of a `{name}` step (end-to-end ratio over target): top operators by self time",
            "",
            "```",
            table,
            "```",
        ]
    for name, table in report.get("loss_profiles", {}).items():
        lines += ["", f"## Where `{name}`'s own time goes (loss forward+backward alone)", "", "```", table, "```"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--num-data", type=int, default=50_000, help="CRD bank size (CIFAR-100 train set)")
    parser.add_argument("--image-size", type=int, default=32, help="input side (32 for CIFAR-100, 224 for ImageNet)")
    parser.add_argument("--num-classes", type=int, default=100, help="classes (100 CIFAR-100, 1000 ImageNet)")
    add_device_arguments(parser)
    parser.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="auto: CPU time on a one-thread CPU run, else wall time",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench/step_overhead.json"))
    parser.add_argument("--no-profile", action="store_true", help="do not profile methods over the target")
    args = parser.parse_args(argv)
    apply_device_arguments(parser, args)
    device = torch.device(args.device)
    clock = args.clock
    if clock == "auto":
        clock = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    methods = [m for m in args.methods.split(",") if m]
    floor, runners = build_runners(
        args.teacher,
        args.student,
        args.batch_size,
        methods,
        device,
        args.num_data,
        clock=clock,
        image_size=args.image_size,
        num_classes=args.num_classes,
    )
    times = measure(floor, runners, args.iters, args.warmup)
    clock_fn = time.process_time if clock == "cpu" else time.perf_counter
    loss_ms = {
        r.name: median(adaptive_ms(loss_only(r), device, min_time_s=1.0, min_repeats=5, clock=clock_fn))
        for r in runners
    }
    result = summarise(floor, runners, times, loss_ms)
    result["times_ms"] = times
    if any(r.method is not None and r.method.contrast_k for r in runners):
        result["contrast_draw_ms"] = round(contrast_draw_ms(args.batch_size, num_data=args.num_data), 3)
    report: dict[str, Any] = {
        "env": env_info(device),
        "config": {
            "teacher": args.teacher,
            "student": args.student,
            "batch_size": args.batch_size,
            "image_size": args.image_size,
            "num_classes": args.num_classes,
            "clock": clock,
            "iters": args.iters,
            "warmup": args.warmup,
            "num_data": args.num_data,
            "target_ratio": TARGET_RATIO,
        },
        "result": result,
    }
    if not args.no_profile:
        by_name: dict[str, StepRunner] = {r.name: r for r in runners}
        report["profiles"] = {
            row["method"]: profile_step(by_name[row["method"]]) for row in result["methods"] if not row["within_target"]
        }
        # Where a method's own time goes, for those costing more than 0.5% of the floor.
        report["loss_profiles"] = {
            row["method"]: profile_call(loss_only(by_name[row["method"]]), device, calls=3, top=10)
            for row in result["methods"]
            if row["attributable_ratio"] > 1.005
        }
    markdown = to_markdown(report)
    write_json_and_markdown(report, args.out, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
