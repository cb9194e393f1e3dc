"""The distillation model on MMEngine: student + frozen teacher + a registered method.

``loss`` mode returns the method's already weighted terms (``loss_ce``, ``loss_kd``, …)
so MMEngine logs each one and optimises their sum; ``predict`` mode returns the
student's logits for the top-1/top-5 metric. Features the method asks for are taken
by name with hooks (``benchmark.models.taps``), never by editing the networks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torch import Tensor, nn

import benchmark.data  # noqa: F401  (registers the datasets and DistillDataPreprocessor)
from benchmark.models import build_model, feature_taps
from benchmark.models.taps import FeatureRecorder
from benchmark.store.checkpoints import load_community_checkpoint
from methods import METHODS, DistillContext, StepInputs, build_method

from . import streams


def _probe_shapes(
    model: nn.Module, recorder: FeatureRecorder | None, input_size: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    if recorder is None:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *input_size))
    model.train(was_training)
    return {name: tuple(feature.shape) for name, feature in recorder.features.items()}


@MODELS.register_module()
class DistillationModel(BaseModel):
    """Student, frozen teacher and distillation method in one MMEngine model.

    Args:
        student / teacher: model-zoo names (``benchmark.models``).
        method: registry config of the method (``dict(type='kd', temperature=4)``).
        num_classes: classifier width.
        num_data: training-set size (CRD's memory bank).
        teacher_checkpoint: a community-format checkpoint (``{'model': state_dict}``)
            loaded with ``strict=True``. Required unless the method runs no teacher.
        data_preprocessor: config of the batch preprocessor.
        input_size: C, H, W of one image, used to probe feature shapes.
        channels_last: networks and inputs in the channels-last memory format (``--channels-last``).
        stream_seed / stream_name: the run seed and the run's method; the student's and the
            method's initial weights and every draw of the training step then come from the
            method's own stream (:mod:`benchmark.train.streams`), apart from the data stream.
        shared_teacher: a teacher already built and loaded, shared by the members of a cohort
            (``teacher_checkpoint`` is then not read again).
    """

    def __init__(
        self,
        student: str,
        method: dict[str, Any],
        num_classes: int,
        num_data: int,
        teacher: str | None = None,
        teacher_checkpoint: str | None = None,
        data_preprocessor: dict[str, Any] | None = None,
        input_size: tuple[int, int, int] = (3, 32, 32),
        init_cfg: dict | None = None,
        channels_last: bool = False,
        stream_seed: int | None = None,
        stream_name: str | None = None,
        shared_teacher: nn.Module | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        method_cls = METHODS.get(method["type"])
        self.teacher: nn.Module | None = None
        if method_cls.needs_teacher:
            if shared_teacher is not None:
                self.teacher = shared_teacher
            elif teacher is None or teacher_checkpoint is None:
                raise ValueError(f"method {method['type']!r} needs a teacher and its checkpoint")
            else:
                self.teacher = load_frozen_teacher(teacher, teacher_checkpoint, num_classes)
        self.method_name = method["type"]  # the registry name (fault-injection contexts)
        self.stream = None if stream_seed is None else streams.MethodStream(stream_seed, stream_name or method["type"])
        own_init = (
            streams.seeded(streams.stream_seed(self.stream.seed, self.stream.name)) if self.stream else nullcontext()
        )
        with own_init:  # the student's and the method's initial weights: the method's own stream
            self._build_student_side(student, teacher, method, num_classes, num_data, input_size)
        self.channels_last = channels_last
        if channels_last:  # both networks' weights and (in forward) the inputs in NHWC
            self.to(memory_format=torch.channels_last)
        self.epoch = 1  # set by EpochTracker before each training epoch, counted from 1
        self.measure_time = False  # set by the timing hook on measured iterations
        self.last_timing: dict[str, float] = {}

    def _build_student_side(
        self,
        student: str,
        teacher: str | None,
        method: dict[str, Any],
        num_classes: int,
        num_data: int,
        input_size: tuple[int, int, int],
    ) -> None:
        method_cls = METHODS.get(method["type"])
        self.student = build_model(student, num_classes)

        taps = method_cls.feature_taps
        self.student_recorder = (
            FeatureRecorder(self.student, {t: feature_taps(student)[t] for t in taps}) if taps else None
        )
        self.teacher_recorder = (
            FeatureRecorder(self.teacher, {t: feature_taps(teacher)[t] for t in taps})
            if taps and self.teacher is not None
            else None
        )
        context = DistillContext(
            num_classes=num_classes,
            num_data=num_data,
            student_shapes=_probe_shapes(self.student, self.student_recorder, input_size),
            teacher_shapes=_probe_shapes(self.teacher, self.teacher_recorder, input_size)
            if self.teacher is not None
            else {},
        )
        self.method = build_method(method, context)

    def init_weights(self) -> None:
        """Networks initialise themselves as their references do; the teacher is never re-initialised."""

    def train(self, mode: bool = True) -> "DistillationModel":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics of the teacher stay frozen
        return self

    def _clock(self) -> float:
        if self.measure_time and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def forward(
        self,
        inputs: Tensor,
        target: Tensor | None = None,
        index: Tensor | None = None,
        contrast_index: Tensor | None = None,
        mode: str = "tensor",
        logits_teacher: Tensor | None = None,
    ) -> Any:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if mode == "student_losses":  # a cohort member's step under DDP (the teacher's pass is shared)
            return self.student_losses(inputs, target, index, contrast_index, logits_teacher)
        if mode == "tensor":
            return self.student(inputs)
        if mode == "predict":
            return [{"logits": self.student(inputs), "target": target}]
        if mode != "loss":
            raise ValueError(f"unknown mode {mode!r}")

        start = self._clock()
        logits_teacher = self.teacher_pass(inputs)
        teacher_done = self._clock()
        losses = self.student_losses(inputs, target, index, contrast_index, logits_teacher)
        if self.measure_time:
            self.last_timing["teacher_forward_ms"] = 1e3 * (teacher_done - start)
        return losses

    def teacher_pass(self, inputs: Tensor) -> Tensor | None:
        """The frozen teacher's logits (its feature taps fill the recorders of every method
        that shares it); None without a teacher."""
        if self.teacher is None:
            return None
        with torch.no_grad():
            return self.teacher(inputs)

    def begin_epoch(self, epoch: int, rank: int = 0) -> None:
        """Before each training epoch (counted from 1): DKD's warm-up reads it, and the
        method's own stream restarts from (seed, method, epoch, rank)."""
        self.epoch = epoch
        if self.stream is not None:
            self.stream.reset(epoch, rank)

    def student_losses(
        self,
        inputs: Tensor,
        target: Tensor | None,
        index: Tensor | None,
        contrast_index: Tensor | None,
        logits_teacher: Tensor | None,
    ) -> dict[str, Tensor]:
        """The method's weighted loss terms for one batch, given the teacher's pass over it.

        Runs in the method's own random stream, so the data stream never sees its draws."""
        features_teacher = dict(self.teacher_recorder.features) if self.teacher_recorder else {}
        with self.stream.active() if self.stream else nullcontext():
            start = self._clock()
            logits_student = self.student(inputs)
            features_student = dict(self.student_recorder.features) if self.student_recorder else {}
            student_done = self._clock()
            losses = self.method(
                StepInputs(
                    logits_student=logits_student,
                    target=target,
                    logits_teacher=logits_teacher,
                    epoch=self.epoch,
                    features_student=features_student,
                    features_teacher=features_teacher,
                    index=index,
                    contrast_index=contrast_index,
                )
            )
            loss_done = self._clock()
        if self.measure_time:
            self.last_timing = {
                "student_forward_ms": 1e3 * (student_done - start),
                "distill_loss_ms": 1e3 * (loss_done - student_done),
            }
        return losses


def load_frozen_teacher(name: str, checkpoint: str, num_classes: int) -> nn.Module:
    """The teacher network with its community checkpoint (``strict=True``), frozen, in eval mode.

    Loaded before MMEngine's weight init and never touched by it (``init_weights`` is a no-op)."""
    teacher = build_model(name, num_classes)
    load_community_checkpoint(teacher, checkpoint)
    teacher.requires_grad_(False)
    return teacher.eval()
