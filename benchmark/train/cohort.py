"""Lockstep cohorts: the runs of one (suite, recipe variant, pair, seed) that differ only by
method, trained in one process on one data stream with one teacher forward per batch.

Each member keeps what a run alone has: its student, method, optimizer wrapper, LR schedule,
loss, checkpoints (``<run dir>/mmengine/epoch_<k>.pth``, in the format of a run alone, so either
can resume the other), its record and its exported student. What is shared: the data loader
(sampler order, augmentation, CRD's contrast draws), the batch preprocessing and the frozen
teacher's forward (its feature taps feed every member's recorder). Each member's random draws
come from its own stream (:mod:`benchmark.train.streams`), so its curve and weights are those of
the same run trained alone, bit for bit on CPU.

One MMEngine Runner drives the cohort: :class:`CohortModel` holds the members (one
``DistillationModel`` each, sharing one teacher module), :class:`CohortOptimWrapperConstructor`
builds an ``OptimWrapperDict`` of the members' own wrappers, the param schedulers are a dict per
member, :class:`CohortTopKAccuracy` scores every member on the validation split, and
:class:`MemberHooks` gives each member the hooks of a run alone (record, timing) on its own view
of the outputs, metrics and checkpoints. A member whose loss becomes non-finite is recorded as
failed and dropped; the others go on.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.registry import HOOKS, METRICS, MODEL_WRAPPERS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from benchmark import faults
from benchmark.store.atomic import atomic_path
from benchmark.store.checkpoints import allow_mmengine_checkpoint_globals, epoch_checkpoints
from benchmark.store.records import RunRecord, write_record
from methods import METHODS, distributed

from .config import RunSpec, build_config
from .hooks import (
    RUN_STATE_KEY,
    EpochSeeder,
    NonFiniteLossError,
    RunRecordHook,
    StepTimingHook,
    topk_hits,
    unwrap,
)
from .model import DistillationModel, load_frozen_teacher
from .trainer import AtomicCheckpointRunner, build_runner, complete, suite_metrics

MEMBERS_KEY = "cohort_members"  # each member's part of a cohort checkpoint (its run state)
KEPT_CHECKPOINTS = 2  # as the CheckpointHook of a run alone (max_keep_ckpts)


@MODELS.register_module()
class CohortModel(BaseModel):
    """The members of a cohort (``{method: DistillationModel config}``) around one frozen teacher."""

    def __init__(
        self,
        members: dict[str, dict[str, Any]],
        data_preprocessor: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        needing = [cfg for cfg in members.values() if METHODS.get(cfg["method"]["type"]).needs_teacher]
        teachers = {(cfg["teacher"], cfg["teacher_checkpoint"]) for cfg in needing}
        if len(teachers) > 1:
            raise ValueError(f"the members of a cohort share one teacher, got {sorted(teachers)}")
        shared = None
        if teachers:
            name, checkpoint = teachers.pop()
            shared = load_frozen_teacher(name, checkpoint, needing[0]["num_classes"])
        built = {}
        for name, cfg in members.items():
            cfg = {key: value for key, value in cfg.items() if key not in ("type", "data_preprocessor")}
            built[name] = DistillationModel(**cfg, shared_teacher=shared)
        self.members = nn.ModuleDict(built)
        self.active = list(members)  # members still training (a non-finite loss drops one)
        self.distributed: dict[str, nn.Module] = {}  # each member's DDP wrapper, under DDP
        self.channels_last = channels_last
        self.measure_time = False
        self.last_timing: dict[str, float] = {}

    def init_weights(self) -> None:
        """Each member initialised itself in its own stream; the teacher is never re-initialised."""

    def begin_epoch(self, epoch: int, rank: int = 0) -> None:
        for member in self.members.values():
            member.begin_epoch(epoch, rank)

    def _teacher(self) -> DistillationModel | None:
        return next((self.members[n] for n in self.active if self.members[n].teacher is not None), None)

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """One batch for every active member: the shared preprocessing and teacher pass (in the
        members' common autocast context), then each member's own loss and optimizer step."""
        names = list(self.active)
        clock = _clock(any(self.members[n].measure_time for n in names))
        start = clock()
        with optim_wrapper[names[0]].optim_context(self.members[names[0]]):
            data = self.data_preprocessor(data, True)
            inputs = data["inputs"]
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            holder = self._teacher()
            logits_teacher = holder.teacher_pass(inputs) if holder is not None else None
        shared_ms = 1e3 * (clock() - start)
        log_vars: dict[str, Tensor] = {}
        for name in names:
            member, wrapper = self.members[name], optim_wrapper[name]
            member_start = clock()
            # Under DDP through the member's own DistributedDataParallel, so its gradients are averaged.
            call = self.distributed[name] if self.distributed else member.student_losses
            with wrapper.optim_context(member):
                losses = call(
                    inputs,
                    data.get("target"),
                    data.get("index"),
                    data.get("contrast_index"),
                    **({"mode": "student_losses"} if self.distributed else {}),
                    logits_teacher=logits_teacher if member.teacher is not None else None,
                )
            parsed, member_vars = member.parse_losses(losses)
            wrapper.update_params(parsed)
            if member.measure_time:
                member.last_timing.update(
                    teacher_forward_ms=shared_ms, iteration_ms=shared_ms + 1e3 * (clock() - member_start)
                )
            log_vars.update({f"{name}/{key}": value for key, value in member_vars.items()})
        return log_vars

    def forward(self, inputs: Tensor, target: Tensor | None = None, mode: str = "predict", **_unused: Any) -> Any:
        if mode != "predict":
            raise ValueError("a cohort trains through train_step; forward only predicts")
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return [{"logits": {name: self.members[name].student(inputs) for name in self.active}, "target": target}]


def _clock(synchronise: bool) -> Callable[[], float]:
    if synchronise and torch.cuda.is_available():
        return lambda: (torch.cuda.synchronize(), time.perf_counter())[1]
    return time.perf_counter


@MODEL_WRAPPERS.register_module()
class CohortDistributedDataParallel(nn.Module):
    """DDP for a cohort: each member wrapped in its own ``DistributedDataParallel`` (gloo on CPU,
    nccl on GPU), the shared teacher left alone (frozen, no gradients); the cohort's
    ``train_step`` calls each member through its wrapper, so each member's gradients are averaged."""

    def __init__(
        self, module: CohortModel, broadcast_buffers: bool = False, find_unused_parameters: bool = False, **kwargs
    ) -> None:
        super().__init__()
        self.module = module
        on_cpu = all(not p.is_cuda for p in module.parameters())
        devices = None if on_cpu else [torch.cuda.current_device()]
        module.distributed = {
            name: DistributedDataParallel(
                member,
                device_ids=devices,
                broadcast_buffers=broadcast_buffers,
                find_unused_parameters=find_unused_parameters,
                **kwargs,
            )
            for name, member in module.members.items()
        }

    def train_step(self, data: dict, optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data: dict) -> list:
        return self.module.val_step(data)

    def test_step(self, data: dict) -> list:
        return self.module.test_step(data)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class CohortOptimWrapperConstructor:
    """Each member's own optimizer wrapper (its config, over its own parameters), in one dict."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        self.members = optim_wrapper_cfg["members"]

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        members = unwrap(model).members
        return OptimWrapperDict(
            **{name: build_optim_wrapper(members[name], copy.deepcopy(cfg)) for name, cfg in self.members.items()}
        )


@METRICS.register_module()
class CohortTopKAccuracy(BaseMetric):
    """Top-k accuracy of every member: ``<method>/top1``, … (``TopKAccuracy`` per member)."""

    default_prefix = "val"

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:  # one result per image (see TopKAccuracy)
            per_member = {
                name: topk_hits(logits, sample["target"], self.topk) for name, logits in sample["logits"].items()
            }
            self.results.extend(dict(zip(per_member, rows)) for rows in zip(*per_member.values()))

    def compute_metrics(self, results: list) -> dict[str, float]:
        total = len(results)
        names = results[0].keys() if results else ()
        return {
            f"{name}/top{k}": 100.0 * sum(row[name][i] for row in results) / total
            for name in names
            for i, k in enumerate(self.topk)
        }


class MemberRunner:
    """The cohort's runner as one member's hooks see it: ``model`` is the member."""

    def __init__(self, runner: Any, name: str) -> None:
        self._runner, self._name = runner, name

    @property
    def model(self) -> DistillationModel:
        return unwrap(self._runner.model).members[self._name]

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._runner, attribute)


def _member_part(values: dict | None, name: str) -> dict:
    """``{'kd/loss': …, 'val/kd/top1': …}`` -> member ``kd``'s ``{'loss': …, 'val/top1': …}``."""
    part = {}
    for key, value in (values or {}).items():
        head, _, tail = key.rpartition(f"{name}/")
        if _ == f"{name}/" and (head == "" or head.endswith("/")):
            part[head + tail] = value
    return part


class Member:
    """One run of a cohort: its spec, record and the hooks a run alone has."""

    def __init__(self, spec: RunSpec, record: RunRecord, progress: Callable[[str], Any] | None) -> None:
        self.spec, self.record = spec, record
        self.name = spec.method
        save = (lambda rec: write_record(rec, spec.run_dir)) if get_rank() == 0 else (lambda rec: None)
        shown = (lambda line: progress(f"{self.name}: {line}")) if progress and get_rank() == 0 else None
        self.record_hook = RunRecordHook(record, save, shown, metrics=suite_metrics(spec.suite))
        self.timing = StepTimingHook()

    def fail(self, reason: str) -> None:
        self.record.status, self.record.failure = "failed", reason
        self.record_hook.write()


@HOOKS.register_module()
class MemberHooks(Hook):
    """Runs each active member's record and timing hooks on the member's own view of the cohort:
    its outputs, its metrics, its part of each checkpoint. Stops a member whose loss is non-finite."""

    priority = "LOW"  # as RunRecordHook: before CheckpointHook (VERY_LOW) in after_train_epoch

    def __init__(self, members: dict[str, Member]) -> None:
        self.members = members

    def _active(self, runner) -> list[tuple[Member, MemberRunner]]:
        return [(self.members[n], MemberRunner(runner, n)) for n in unwrap(runner.model).active]

    def before_train(self, runner) -> None:
        if any(m.record_hook.needs_validation(runner.epoch) for m, _ in self._active(runner)):
            runner.val_loop.run()  # once for the cohort
        for member, view in self._active(runner):
            member.timing.before_train(view)

    def before_train_epoch(self, runner) -> None:
        for member, view in self._active(runner):
            member.record_hook.before_train_epoch(view)
            member.timing.before_train_epoch(view)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        for member, view in self._active(runner):
            member.timing.before_train_iter(view, batch_idx, data_batch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        cohort = unwrap(runner.model)
        active = self._active(runner)
        own = {m.name: _member_part(outputs, m.name) for m, _ in active}
        where = dict(epoch=runner.epoch + 1, iteration=batch_idx + 1)
        problems = {m.name: _non_finite(own[m.name], method=m.name, **where) for m, _ in active}
        if distributed.world_size() > 1:
            # Every rank drops the same members (a member's DDP forward on one rank only would hang).
            flags = torch.tensor([float(distributed.rank() + 1) if problems[m.name] else 0.0 for m, _ in active])
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            for (member, _), flag in zip(active, flags.tolist()):
                if flag and not problems[member.name]:
                    problems[member.name] = (
                        f"the loss became non-finite on rank {int(flag) - 1} at epoch {where['epoch']}, "
                        f"iteration {where['iteration']}"
                    )
        for member, view in active:
            if problems[member.name]:
                cohort.active.remove(member.name)
                member.fail(problems[member.name])
                continue
            member.record_hook.after_train_iter(view, batch_idx, data_batch, own[member.name])
            member.timing.after_train_iter(view, batch_idx, data_batch, own[member.name])
        if not cohort.active:
            raise NonFiniteLossError("every member of the cohort stopped on a non-finite loss")

    def after_train_epoch(self, runner) -> None:
        for member, view in self._active(runner):
            member.record_hook.after_train_epoch(view)

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        for member, view in self._active(runner):
            member.record_hook.after_val_epoch(view, _member_part(metrics, member.name))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for member, view in self._active(runner):
            part = checkpoint.setdefault(MEMBERS_KEY, {}).setdefault(member.name, {"meta": checkpoint["meta"]})
            member.record_hook.before_save_checkpoint(view, part)
            member.timing.before_save_checkpoint(view, part)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        for member, view in self._active(runner):
            part = checkpoint[MEMBERS_KEY][member.name]
            member.record_hook.after_load_checkpoint(view, part)
            member.timing.after_load_checkpoint(view, part)

    def after_train(self, runner) -> None:
        for member, view in self._active(runner):
            member.timing.after_train(view)


def _non_finite(outputs: dict, epoch: int, iteration: int, method: str) -> str | None:
    """Why a member stops (as NonFiniteLossGuard words it for a run alone), or None."""
    if faults.matches("nan_loss", epoch=epoch, iter=iteration, method=method, rank=distributed.rank()) == "NAN":
        outputs["loss"] = torch.tensor(float("nan"))
    for name, value in outputs.items():
        if torch.is_tensor(value) and value.numel() == 1 and not math.isfinite(value.item()):
            return f"{name} became {value.item()} at epoch {epoch}, iteration {iteration}"
    return None


@HOOKS.register_module()
class CohortCheckpointSplitter(Hook):
    """Keeps the cohort checkpoint MMEngine assembles, for :class:`CohortRunner` to split."""

    priority = "LOWEST"  # after every hook has added its part

    def __init__(self) -> None:
        self.checkpoint: dict | None = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self.checkpoint = checkpoint


class CohortRunner(AtomicCheckpointRunner):
    """Saves each active member's checkpoint into its own run directory, in the format of a run
    alone, and resumes a cohort from its members' checkpoints (``member_checkpoints``)."""

    member_dirs: dict[str, Path]
    member_checkpoints: dict[str, str]
    splitter: CohortCheckpointSplitter

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        if get_rank() != 0:
            return
        super().save_checkpoint(out_dir, filename, *args, **kwargs)
        (Path(out_dir) / filename).unlink(missing_ok=True)  # the members' files are the checkpoint
        cohort = self.splitter.checkpoint
        for name in unwrap(self.model).active:
            prefix = f"members.{name}."
            own = {
                "meta": cohort["meta"],
                "state_dict": {k[len(prefix) :]: v for k, v in cohort["state_dict"].items() if k.startswith(prefix)},
                "message_hub": cohort["message_hub"],
                "optimizer": cohort["optimizer"][name],
                "param_schedulers": cohort["param_schedulers"][name],
                RUN_STATE_KEY: cohort[MEMBERS_KEY][name][RUN_STATE_KEY],
            }
            work_dir = self.member_dirs[name]
            work_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(work_dir / filename) as tmp:
                torch.save(own, tmp)
            for _epoch, old in epoch_checkpoints(work_dir)[KEPT_CHECKPOINTS:]:  # newest first
                old.unlink(missing_ok=True)

    def load_checkpoint(self, filename: str, map_location: Any = "cpu", strict: bool = False, **_unused) -> dict:
        parts = {
            name: _load_checkpoint(path, map_location=map_location) for name, path in self.member_checkpoints.items()
        }
        epochs = {name: part["meta"]["epoch"] for name, part in parts.items()}
        if len(set(epochs.values())) != 1:
            raise ValueError(f"the members' checkpoints are at different epochs: {epochs}")
        first = next(iter(parts.values()))
        cohort = {
            "meta": first["meta"],
            "message_hub": first["message_hub"],
            "state_dict": {f"members.{n}.{k}": v for n, part in parts.items() for k, v in part["state_dict"].items()},
            "optimizer": {name: part["optimizer"] for name, part in parts.items()},
            "param_schedulers": {name: part["param_schedulers"] for name, part in parts.items()},
            MEMBERS_KEY: {
                name: {"meta": part["meta"], RUN_STATE_KEY: part.get(RUN_STATE_KEY)} for name, part in parts.items()
            },
        }
        self.call_hook("after_load_checkpoint", checkpoint=cohort)
        _load_checkpoint_to_model(unwrap(self.model), cohort, strict=True)
        self._has_loaded = True
        return cohort


# What every member of one cohort must share: the data, the schedule's length, the numerics.
SHARED_PARTS = ("train_dataloader", "val_dataloader", "train_cfg", "val_cfg", "randomness", "env_cfg")


def _shared_key(cfg: Config) -> str:
    parts = {part: cfg.get(part) for part in SHARED_PARTS}
    parts["train_dataloader"] = copy.deepcopy(parts["train_dataloader"])
    parts["train_dataloader"]["dataset"].pop("contrast_k", None)  # drawn for the member that needs it
    parts["preprocessor"] = cfg.model.get("data_preprocessor")
    parts["autocast"] = (cfg.optim_wrapper.get("type"), cfg.optim_wrapper.get("dtype"))
    parts["channels_last"] = cfg.model.get("channels_last", False)
    parts["ddp"] = (cfg.get("model_wrapper_cfg"), cfg.get("sync_bn"))
    return json.dumps(parts, sort_keys=True, default=str)


def compatible_groups(cfgs: Sequence[Config]) -> list[list[int]]:
    """Indices of runs (their configs) that can train together: same data, schedule length, numerics."""
    groups: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        groups.setdefault(_shared_key(cfg), []).append(index)
    return list(groups.values())


def cohort_work_dir(specs: Sequence[RunSpec]) -> Path:
    """MMEngine's logs of a cohort: beside its members' run directories (``<pair>/.cohort-seed<k>``)."""
    first = specs[0].run_dir
    return first.parent.parent / f".cohort-{first.name}"


def cohort_config(specs: Sequence[RunSpec], num_data: int) -> Config:
    """One Runner's config for the members ``specs``: the shared data, schedule length and runtime of
    the first, every member's own model, optimizer wrapper and LR schedule."""
    cfgs = [build_config(spec, num_data) for spec in specs]
    if len({_shared_key(cfg) for cfg in cfgs}) != 1:
        raise ValueError("the members of a cohort must share their data, schedule length and numerics")
    contrast = {cfg.train_dataloader.dataset.get("contrast_k") for cfg in cfgs} - {None}
    if len(contrast) > 1:
        raise ValueError(f"the members of a cohort draw one CRD contrast size, got {sorted(contrast)}")
    cfg = copy.deepcopy(cfgs[0])
    if contrast:
        cfg.train_dataloader.dataset.contrast_k = contrast.pop()
    cfg.model = dict(
        type="CohortModel",
        members={spec.method: dict(c.model) for spec, c in zip(specs, cfgs)},
        data_preprocessor=cfgs[0].model.data_preprocessor,
        channels_last=cfgs[0].model.get("channels_last", False),
    )
    cfg.optim_wrapper = dict(
        constructor="CohortOptimWrapperConstructor",
        members={spec.method: dict(c.optim_wrapper) for spec, c in zip(specs, cfgs)},
    )
    cfg.param_scheduler = {spec.method: list(c.param_scheduler) for spec, c in zip(specs, cfgs)}
    cfg.val_evaluator = dict(type="CohortTopKAccuracy", topk=(1, 5))
    if cfg.get("model_wrapper_cfg"):  # --nproc > 1: each member in its own DDP wrapper
        cfg.model_wrapper_cfg = dict(cfg.model_wrapper_cfg, type="CohortDistributedDataParallel")
    cfg.work_dir = str(cohort_work_dir(specs))
    return cfg


def train_cohort(
    specs: Sequence[RunSpec],
    records: Sequence[RunRecord],
    checkpoints: dict[str, str] | None,
    num_data: int,
    progress: Callable[[str], Any] | None = None,
    hooks: Sequence[Hook] = (),
) -> list[RunRecord]:
    """Train the members ``specs`` together from scratch, or from their checkpoints (``{method: path}``,
    all of one epoch), and complete each record. Returns the records, in the order of ``specs``."""
    cfg = cohort_config(specs, num_data)
    members = {spec.method: Member(spec, record, progress) for spec, record in zip(specs, records)}
    runner = build_runner(
        specs[0],
        cfg,
        "cohort" if checkpoints else None,
        custom_hooks=["EpochTracker", "FaultPoints"],
        runner_class=CohortRunner,
        name="cohort",
    )
    runner.member_dirs = {spec.method: spec.run_dir / "mmengine" for spec in specs}
    runner.member_checkpoints = dict(checkpoints or {})
    runner.splitter = CohortCheckpointSplitter()
    runner.register_hook(EpochSeeder(specs[0].seed))
    runner.register_hook(MemberHooks(members))
    runner.register_hook(runner.splitter)
    for hook in hooks:
        runner.register_hook(hook)
    if specs[0].device != "cpu":
        runner.model.to(specs[0].device)
    try:
        with allow_mmengine_checkpoint_globals():
            runner.train()
    except NonFiniteLossError:
        return [member.record for member in members.values()]  # each failed member says why
    cohort = unwrap(runner.model)
    for name in list(cohort.active):
        member = members[name]
        complete(member.spec, member.record, member.record_hook, member.timing, cohort.members[name], get_rank() == 0)
    return [member.record for member in members.values()]


__all__ = [
    "CohortModel",
    "CohortRunner",
    "cohort_config",
    "cohort_work_dir",
    "compatible_groups",
    "train_cohort",
]
