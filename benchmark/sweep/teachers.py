"""The teacher stage of a sweep.

For each teacher of the selected pairs: use ``<teachers>/<name>_vanilla/ckpt_epoch_240.pth``
(the community layout of RepDistiller / mdistiller's ``cifar_teachers.tar``) when present —
loaded strictly and evaluated on the test split, so the tables show a measured teacher
accuracy — else train the teacher alone (CE) with the suite's recipe and cache it as a
run of its own (``<work-dir>/<suite>/<recipe>/teachers/<name>/seed0``, resumable like
every run). Either way the teacher gets a run record with method ``teacher``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from mmengine.config import Config
from mmengine.dataset import default_collate
from mmengine.registry import DATASETS, MODELS
from torch.utils.data import DataLoader

from benchmark.errors import UsageError
from benchmark.models import build_model
from benchmark.store.checkpoints import (
    CheckpointError,
    load_community_checkpoint,
    sha256_of,
)
from benchmark.store.claims import ClaimHeld, claim
from benchmark.store.records import RECORD_FILE, TEACHER_ROW, RecordError, read_record, write_record
from benchmark.suites import Pair, Suite, variant_name
from benchmark.sweep.options import SweepOptions
from benchmark.sweep.state import read_state

TEACHER_SEED = 0


COMMUNITY, TRAINED = "community", "trained"


@dataclass
class TeacherInfo:
    path: str
    sha256: str
    top1: float
    source: str  # COMMUNITY (a checkpoint from --teachers) or TRAINED (by this suite)


def _dataset_cfg(suite: Suite, split: str, data_root: str, download: bool) -> dict[str, Any]:
    from benchmark.train import CONFIG_DIR

    base = Config.fromfile(CONFIG_DIR / "datasets" / f"{suite.dataset_base}.py")
    cfg = dict(base[f"{split}_dataloader"]["dataset"])
    if suite.needs_data_root:
        cfg["data_root"] = data_root
        if download:
            cfg["download"] = True
    return cfg


@torch.no_grad()
def evaluate_top1(
    model: torch.nn.Module,
    suite: Suite,
    data_root: str,
    device: str,
    batch_size: int = 256,
    num_workers: int | None = None,
) -> float:
    """Top-1 (%) of ``model`` on the suite's test split, with the suite's normalisation.

    ``num_workers`` defaults to the dataset config's (ImageNet's 50,000 JPEGs need decoding workers).
    """
    from benchmark.train import CONFIG_DIR

    base = Config.fromfile(CONFIG_DIR / "datasets" / f"{suite.dataset_base}.py")
    preprocessor = MODELS.build({**base["data_preprocessor"], "augment": False}).to(device)
    dataset = DATASETS.build(_dataset_cfg(suite, "val", data_root, download=False))
    workers = base["val_dataloader"].get("num_workers", 0) if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=default_collate, num_workers=workers)
    model = model.to(device).eval()
    correct = total = 0
    for batch in loader:
        batch = preprocessor(batch, training=False)
        correct += (model(batch["inputs"]).argmax(1) == batch["target"]).sum().item()
        total += len(batch["target"])
    return 100.0 * correct / total


class TeacherStage:
    def __init__(self, suite: Suite, recipe: str, args: SweepOptions) -> None:
        self.suite, self.recipe, self.args = suite, recipe, args
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.root = Path(args.work_dir) / suite.name / variant_name(recipe, args.epochs, None) / "teachers"

    def search_dirs(self) -> list[Path]:
        """Where teacher files are looked for: --teachers, then torch.hub's cache where the suite says so."""
        dirs = [Path(self.args.teachers)] if self.args.teachers else []
        if self.suite.teachers_in_torch_hub:
            dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
        return dirs

    def expected_files(self, name: str) -> list[Path]:
        return [folder / file for folder in self.search_dirs() for file in self.suite.teacher_files(name)]

    def community_path(self, name: str) -> Path | None:
        """The reference teacher's weight file, if one of the expected files exists."""
        return next((path for path in self.expected_files(name) if path.is_file()), None)

    def trained_before(self, name: str) -> bool:
        return (self.run_dir(name) / RECORD_FILE).exists()

    def may_train(self, name: str) -> bool:
        """Whether a teacher without a file may be trained (or reused from an earlier training).

        With --teachers every teacher must come from there (the Δs against published numbers
        depend on it); suites that do not train teachers by default (ImageNet) need
        --train-teachers; --train-teachers always allows it.
        """
        if self.args.train_teachers:
            return True
        if self.args.teachers:
            return False
        return self.suite.trains_missing_teachers or self.trained_before(name)

    def run_dir(self, name: str) -> Path:
        return self.root / name / f"seed{TEACHER_SEED}"

    def describe(self, name: str) -> str:
        found = self.community_path(name)
        if found:
            return f"checkpoint {found} (evaluated on the test split)"
        record = self.run_dir(name) / RECORD_FILE
        if record.exists():
            return f"trained before, {record.parent}"
        epochs = self._recipe(name).schedule.epochs
        looked = " or ".join(map(str, self.expected_files(name)))
        where = f"none of {looked}; " if looked else ""
        if not self.may_train(name):
            return f"{where}MISSING (the run stops: put the file there, or pass --train-teachers)"
        return f"{where}train alone with the {self.recipe} recipe ({epochs} epochs, CE) into {self.run_dir(name)}"

    def _recipe(self, name: str):
        return self.suite.resolve(self.recipe, Pair(name, name), "ce").adjusted(self.args.epochs, None)

    def num_train_samples(self) -> int:
        """Builds the training split once: proves the data is there, and sizes CRD's memory."""
        dataset = DATASETS.build(_dataset_cfg(self.suite, "train", self.args.data_root, self.args.download))
        return len(dataset)

    def missing_teacher_files(self, names: list[str]) -> str | None:
        """The problem with the teachers the plan needs, in one line, or None when each is found or may be trained.

        With --teachers, every file must be there (training is then only with --train-teachers);
        suites that do not train missing teachers (ImageNet, COCO) need --train-teachers.
        """
        missing = [name for name in names if not self.community_path(name)]
        refused = [name for name in missing if not self.may_train(name)]
        if not refused:
            return None
        expected = "; ".join(
            " or ".join(map(str, self.expected_files(name))) or f"--teachers DIR/{self.suite.teacher_files(name)[0]}"
            for name in refused
        )
        return f"{len(refused)} teacher file(s) not found: {expected}; put them there, or pass --train-teachers to train them"

    def announce_training(self, names: list[str]) -> None:
        """Say, before anything runs, which teachers this sweep will train (no file was found for them)."""
        for name in names:
            if not self.community_path(name) and not self.trained_before(name):
                print(
                    f"teacher {name}: no file found, so this sweep trains it with the {self.recipe} recipe "
                    f"({self._recipe(name).schedule.epochs} epochs); published deltas need the reference teachers",
                    flush=True,
                )

    def check_teacher_files(self, names: list[str]) -> None:
        """Every teacher the plan needs is found, or may be trained: else UsageError before anything runs."""
        problem = self.missing_teacher_files(names)
        if problem:
            raise UsageError(problem)
        self.announce_training(names)

    def ensure(self, name: str, say: Callable[[str], Any]) -> TeacherInfo:
        """The teacher's checkpoint, evaluated or trained under the teacher run's claim.

        Raises :class:`ClaimHeld` when another sweep is training this teacher. A community
        checkpoint that another sweep is evaluating is evaluated here too, without writing.
        """
        found = self.community_path(name)
        if not found:
            done = self._completed_training(name)
            if done:  # a completed teacher is never written again: no claim needed to read it
                return done
        try:
            with claim(self.run_dir(name), say):
                if found:
                    return self._from_checkpoint(name, found, say)
                return self._train(name, say)
        except ClaimHeld:
            if not found:
                raise
            return self._from_checkpoint(name, found, say, write=False)

    def _completed_training(self, name: str) -> TeacherInfo | None:
        from benchmark.train import STUDENT_EXPORT

        run_dir = self.run_dir(name)
        try:
            record = read_record(run_dir / RECORD_FILE)
        except RecordError:
            return None  # absent, or to be judged (and reported) under the claim
        path = run_dir / STUDENT_EXPORT
        if record.status == "completed" and record.recipe_hash == self._recipe(name).hash and path.is_file():
            return TeacherInfo(str(path), sha256_of(path), record.last_value(), TRAINED)
        return None

    def _from_checkpoint(self, name: str, path: Path, say: Callable[[str], Any], write: bool = True) -> TeacherInfo:
        from benchmark.train import RunSpec, new_record

        digest = sha256_of(path)
        run_dir = self.run_dir(name)
        try:
            record = read_record(run_dir / RECORD_FILE)
            if record.teacher_checkpoint_sha256 == digest and record.status == "completed":
                return TeacherInfo(str(path), digest, record.last_value(), COMMUNITY)
        except RecordError:
            pass
        say(f"teacher {name}: evaluating {path} on the test split")
        # A suite with its own networks and metrics (COCO: MMDetection, bbox AP) evaluates itself.
        values = self.suite.evaluate_teacher(
            name, path, self.args.data_root, self.device, num_workers=self.args.num_workers
        )
        if values is None:
            model = build_model(name, self.suite.num_classes)
            load_community_checkpoint(model, path)
            values = {
                "top1": round(
                    evaluate_top1(
                        model, self.suite, self.args.data_root, self.device, num_workers=self.args.num_workers
                    ),
                    4,
                )
            }
        spec = RunSpec(
            self.suite, Pair(name, name), TEACHER_ROW, self._recipe(name), TEACHER_SEED, run_dir, device=self.device
        )
        record = new_record(spec)
        record.status = "completed"
        record.record_evaluation(values)
        top1 = record.last_value()  # the suite's primary metric: top-1, or bbox mAP for COCO
        if not write:
            return TeacherInfo(str(path), digest, top1, COMMUNITY)
        record.teacher_checkpoint_sha256, record.teacher_top1 = digest, top1
        record.extra["source"] = f"community checkpoint {path}"
        write_record(record, run_dir)
        say(f"teacher {name}: {record.metric_text()} from {path}")
        return TeacherInfo(str(path), digest, top1, COMMUNITY)

    def _train(self, name: str, say: Callable[[str], Any]) -> TeacherInfo:
        from benchmark.train import STUDENT_EXPORT, RunSpec, execute, new_record

        run_dir = self.run_dir(name)
        recipe = self._recipe(name)
        spec = RunSpec(
            self.suite,
            Pair(name, name),
            TEACHER_ROW,
            recipe,
            TEACHER_SEED,
            run_dir,
            data_root=self.args.data_root,
            device=self.device,
            num_workers=self.args.num_workers,
            deterministic=self.args.deterministic,
            log_level="INFO" if self.args.verbose else "ERROR",
            tensorboard=self.args.tensorboard,
        )
        state = read_state(run_dir, recipe.hash)
        if state.kind == "refused":
            raise UsageError(f"teacher {name}: {state.problem}")
        if state.kind == "completed":
            path = run_dir / STUDENT_EXPORT
            return TeacherInfo(str(path), sha256_of(path), state.record.last_value(), TRAINED)
        if state.kind == "failed":
            raise UsageError(f"teacher {name} failed to train ({state.record.failure}); see {run_dir}")
        record, resume = state.record, state.kind == "interrupted"
        if record is None or not resume:
            record = new_record(spec)
        say(
            f"teacher {name}: {'resuming' if resume else 'training'} ({recipe.schedule.epochs} epochs, CE) in {run_dir}"
        )
        show = (lambda line: say("    " + line)) if (self.args.verbose or recipe.schedule.epochs >= 20) else None
        record = execute(spec, self.num_train_samples(), record, resume=resume, progress=show, say=say)
        if record.status != "completed":
            raise UsageError(f"teacher {name} failed to train: {record.failure}")
        path = run_dir / STUDENT_EXPORT
        say(f"teacher {name}: {record.metric_text()} ({record.wall_time_s:.1f}s)")
        return TeacherInfo(str(path), sha256_of(path), record.last_value(), TRAINED)


__all__ = ["TeacherStage", "TeacherInfo", "evaluate_top1", "CheckpointError"]
