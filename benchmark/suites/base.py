"""What a suite is: a dataset, its teacher→student pairs, and its recipes.

A recipe is the whole training protocol of a run (schedule, optimiser, batch size,
loss weights). It is part of every run's identity: its resolved form for one
(pair, method) is hashed into the run record and shown in every table.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, NamedTuple

from benchmark.store.records import CLASSIFICATION, Metric


def community_layout(name: str) -> tuple[str, ...]:
    """RepDistiller / mdistiller ``cifar_teachers.tar``: ``<name>_vanilla/ckpt_epoch_240.pth``."""
    return (f"{name}_vanilla/ckpt_epoch_240.pth",)


# Students the references train with lr 0.01 instead of 0.05 (RepDistiller / mdistiller).
LOW_LR_STUDENTS = frozenset({"MobileNetV2", "ShuffleV1", "ShuffleV2"})


class Pair(NamedTuple):
    """A teacher → student pair; a named tuple, so the (teacher, student) keys of records and tables are Pairs too."""

    teacher: str
    student: str

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"


@dataclass
class Schedule:
    """Optimiser and learning-rate schedule of one run, resolved."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    kind: str = "step"  # "step": ×gamma at milestones; "cosine": to 0, stepped per epoch
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def with_epochs(self, epochs: int) -> "Schedule":
        """The same schedule compressed/stretched to ``epochs`` (milestones scale with it)."""
        scaled = tuple(max(1, round(m * epochs / self.epochs)) for m in self.milestones)
        return Schedule(**{**asdict(self), "epochs": epochs, "milestones": scaled})

    def with_batch_size(self, batch_size: int) -> "Schedule":
        """Linear learning-rate rule (Goyal et al., 2017): lr scales with the batch size."""
        return Schedule(**{**asdict(self), "batch_size": batch_size, "lr": self.lr * batch_size / self.batch_size})


@dataclass
class ResolvedRecipe:
    """Everything that defines the training protocol of one (pair, method) run."""

    name: str
    schedule: Schedule
    method: dict[str, Any]  # method config for the registry, loss weights included
    notes: tuple[str, ...] = ()
    # Numerics / memory layout chosen on the command line: {"amp": "bfloat16", "channels_last": True}.
    # Part of the run's identity; absent (and out of the hash) for the references' fp32 default.
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "schedule": asdict(self.schedule), "method": self.method, "notes": list(self.notes)}
        if self.options:
            data["options"] = dict(self.options)
        return data

    def adjusted(self, epochs: int | None, batch_size: int | None) -> "ResolvedRecipe":
        """This recipe with the command line's --epochs / --batch-sizes applied (None: unchanged)."""
        schedule = self.schedule
        if epochs is not None:
            schedule = schedule.with_epochs(epochs)
        if batch_size is not None:
            schedule = schedule.with_batch_size(batch_size)
        return ResolvedRecipe(self.name, schedule, self.method, self.notes, dict(self.options))

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def variant_name(
    recipe: str,
    epochs: int | None,
    batch_size: int | None,
    world_size: int = 1,
    amp: bool = False,
    channels_last: bool = False,
) -> str:
    """The work-dir folder of a recipe as the command line adjusted it, e.g. ``unified-e2-b128-w2-amp``.

    Runs on different numbers of processes, in bf16 or channels-last are different variants
    (their own directories).
    """
    return (
        recipe
        + (f"-e{epochs}" if epochs else "")
        + (f"-b{batch_size}" if batch_size else "")
        + (f"-w{world_size}" if world_size > 1 else "")
        + ("-amp" if amp else "")
        + ("-cl" if channels_last else "")
    )


# A recipe maps (pair, method name, suite's method defaults) to its resolved form.
RecipeFn = Callable[[Pair, str, dict[str, Any]], ResolvedRecipe]


@dataclass
class Suite:
    """A benchmark suite; one file per suite in this package registers one instance."""

    name: str
    num_classes: int
    pairs: tuple[Pair, ...]
    recipes: dict[str, RecipeFn]
    dataset_base: str  # name of the _base_ dataset config in benchmark/configs/_base_/datasets/
    # Suite-wide method settings (e.g. fewer CRD negatives on a small dataset).
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    needs_data_root: bool = True
    # CPU threads for torch; tiny networks run faster on one thread than on two contending ones.
    cpu_threads: int | None = None
    default_recipe: str = "unified"
    description: str = ""
    # Where a teacher's weights are looked for under --teachers: file names, best first.
    teacher_files: Callable[[str], tuple[str, ...]] = community_layout
    # Also look in torch.hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where
    # torchvision keeps the weight files it downloads.
    teachers_in_torch_hub: bool = False
    # Without a teacher file, train the teacher (CIFAR); else only with --train-teachers (ImageNet).
    trains_missing_teachers: bool = True
    # What every validation records; the first metric picks the best epoch (top-1 / top-5 by default).
    metrics: tuple[Metric, ...] = CLASSIFICATION
    # The tables: metrics shown per pair (empty: the one top-1 table), their title and footnotes.
    table_metrics: tuple[str, ...] = ()
    metric_title: str = ""
    table_notes: tuple[str, ...] = ()
    # Why this suite's runs train alone even without --no-cohort; None: the runs of one (variant,
    # pair, seed) train as a lockstep cohort (one data stream, one teacher forward per batch).
    solo_reason: str | None = None

    # ------------------------------------------------------------------ hooks with defaults

    def build_config(self, spec: Any, num_data: int | None, check_files: bool = True) -> Any:
        """The suite's part of a run's MMEngine config, or None for the standard classification
        config (``benchmark/configs/_base_``); the runner applies the run-level overlay after it."""
        return None

    def export_student(self, model: Any, path: Any, record: Any) -> Any:
        """Write the trained student in the suite's own format and return the path, or None for the
        community format (``{'model': state_dict}``) that the runner writes."""
        return None

    def evaluate_teacher(
        self, name: str, checkpoint: Any, data_root: str | None, device: str, num_workers: int | None = None
    ) -> dict[str, float | None] | None:
        """A teacher file's metrics by record name, or None for the standard top-1 evaluation."""
        return None

    def stack_versions(self) -> dict[str, str]:
        """Versions of the suite's own software stack, recorded in every run's ``env``."""
        return {}

    def pair(self, name: str) -> Pair:
        for pair in self.pairs:
            if pair.name == name:
                return pair
        known = ", ".join(p.name for p in self.pairs)
        raise KeyError(f"suite {self.name!r} has no pair {name!r}; its pairs: {known}")

    def resolve(self, recipe: str, pair: Pair, method: str) -> ResolvedRecipe:
        if recipe not in self.recipes:
            raise KeyError(
                f"suite {self.name!r} has no recipe {recipe!r}; its recipes: {', '.join(sorted(self.recipes))}"
            )
        defaults = copy.deepcopy(self.method_defaults.get(method, {}))
        return self.recipes[recipe](pair, method, defaults)
