"""Distillation of two-stage detectors on MMDetection 3.x (needs mmdet and mmcv with ops).

:class:`DistillationDetector` holds a student and a frozen teacher Faster R-CNN. The student
trains as a normal MMDetection detector (``student.loss``: RPN and RoI losses, unchanged);
its RoI head (:class:`RoIKeepingRoIHead`, a ``StandardRoIHead`` that keeps what it sampled)
hands over the RoIs it sampled (512 per image, 25 % foreground, ground-truth boxes added,
background RoIs kept) with their labels (80 = background) and its classification logits.
The teacher's RoI head scores exactly these RoIs on the teacher's own features of the same
preprocessed batch (``teacher.roi_head._bbox_forward(teacher.extract_feat(inputs), rois)``,
no grad), and the method from the registry (``methods.build_method``: KD, DKD, CKD — the
same pure loss functions as for classification) is applied to the pairs of 81-column RoI
logits with the RoI labels as targets. The registry method's own CE term is not used: the
student's RoI cross-entropy is MMDetection's ``loss_cls``. FitNet: one 1×1-conv regressor
per FPN level, MSE (``methods.fitnet.fitnet_loss``) averaged over the levels.

The teacher is built and loaded here, before MMEngine's weight init, strictly and as
tensors only (``torch.load(weights_only=True)``, the state dict under ``'state_dict'``),
never re-initialised, kept in eval mode (BatchNorm included) and without gradients. It is
left out of the training checkpoints (it is reloaded from its own file).
"""

from __future__ import annotations

import copy
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmdet.models.backbones import MobileNetV2
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from benchmark.store.checkpoints import CheckpointError, load_tensors_only
from methods import METHODS, StepInputs, build_method
from methods.fitnet import fitnet_loss


def _fp32_island(function):
    """``function`` run in float32 when called inside an autocast region (floating tensors cast, autocast off)."""

    @functools.wraps(function)
    def in_fp32(*args, **kwargs):
        tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        args, kwargs = tree_map(
            lambda x: x.float() if isinstance(x, Tensor) and x.is_floating_point() else x, (args, kwargs)
        )
        with torch.autocast(device_type=device, enabled=False):
            return function(*args, **kwargs)

    in_fp32.kd_fp32_island = True
    return in_fp32


def _mmcv_ops_in_fp32_under_autocast() -> None:
    """Run mmcv's NMS and RoIAlign, and MMDetection's RoI extractor around it, in float32 under ``--amp``.

    mmcv 2.1 has no bfloat16 kernels for them (its NMS reads ``float`` pointers, RoIAlign
    dispatches float/double/half), so a bf16 autocast step of a Faster R-CNN stops with
    "expected scalar type Float but found BFloat16"; MMDetection's ``SingleRoIExtractor`` writes
    RoIAlign's output into a buffer of the features' dtype. Like the ops on torch's own autocast
    fp32 list, they run with their floating inputs cast to float32 and autocast off inside an
    autocast region; outside one nothing changes. Applied once, for CPU and CUDA.
    """
    from mmcv.ops.nms import NMSop
    from mmcv.ops.roi_align import RoIAlignFunction
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    for owner in (NMSop, RoIAlignFunction, SingleRoIExtractor):
        forward = owner.__dict__["forward"]
        function = forward.__func__ if isinstance(forward, staticmethod) else forward
        if getattr(function, "kd_fp32_island", False):
            continue
        island = _fp32_island(function)
        owner.forward = staticmethod(island) if isinstance(forward, staticmethod) else island


_mmcv_ops_in_fp32_under_autocast()


# Each method's detection form is a fact on its class (``Distiller.detection``), read from the registry.
def _methods_of_form(form: str) -> tuple[str, ...]:
    return tuple(name for name in sorted(METHODS.module_dict) if METHODS.get(name).detection == form)


ROI_LOGIT_METHODS = _methods_of_form("roi_logits")  # on the RoI classification logits
FEATURE_METHODS = _methods_of_form("fpn_features")  # hints on the FPN outputs
NO_TEACHER_METHODS = _methods_of_form("student_only")  # the student alone


@dataclass
class SampledRoIs:
    """What the student's RoI head sampled in its last training step."""

    rois: Tensor  # (N, 5): batch index, x1, y1, x2, y2 — all images of the batch
    labels: Tensor  # (N,): class of each RoI, num_classes = background
    cls_score: Tensor  # (N, num_classes + 1): the student's RoI classification logits


@MODELS.register_module()
class RoIKeepingRoIHead(StandardRoIHead):
    """``StandardRoIHead`` that keeps the RoIs it sampled for its loss, their labels and its logits.

    Nothing else changes: sampling, losses and inference are MMDetection's. After each
    training step ``self.sampled`` holds :class:`SampledRoIs`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sampled: SampledRoIs | None = None
        self._last_forward: tuple[Tensor, Tensor] | None = None

    def _bbox_forward(self, x, rois: Tensor) -> dict:
        results = super()._bbox_forward(x, rois)
        if self.training:
            self._last_forward = (rois, results["cls_score"])
        return results

    def bbox_loss(self, x, sampling_results) -> dict:
        self._last_forward = None
        results = super().bbox_loss(x, sampling_results)
        rois, cls_score = self._last_forward
        # The labels the bbox head's targets use: each image's positives' classes, then its
        # negatives as background (num_classes), in the order of ``bbox2roi(priors)``.
        num_classes = self.bbox_head.num_classes
        labels = torch.cat(
            [
                torch.cat([res.pos_gt_labels, res.pos_gt_labels.new_full((len(res.neg_priors),), num_classes)])
                for res in sampling_results
            ]
        )
        if labels.shape[0] != rois.shape[0]:  # never: guards against an MMDetection change of the RoI order
            raise RuntimeError(f"{labels.shape[0]} RoI labels for {rois.shape[0]} sampled RoIs")
        self.sampled = SampledRoIs(rois=rois, labels=labels, cls_score=cls_score)
        self._last_forward = None
        return results


@MODELS.register_module()
class TruncatedMobileNetV2(MobileNetV2):
    """MMDetection's MobileNetV2 up to its last output stage, reading torchvision weights too.

    The stages after the last of ``out_indices`` (with the FPN outputs (1, 2, 4, 6) —
    24/32/96/320 channels at strides 4-32 — that is the 1280-channel ``conv2``) are not
    built: they would run for nothing and leave parameters without gradients (DDP refuses
    those). A torchvision ``mobilenet_v2`` state dict (``features.*``) is renamed to this
    module's names when loaded — by ``load_state_dict`` or MMEngine's ``Pretrained`` init —
    so ``torchvision://mobilenet_v2`` works as for ResNets.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        last = max(self.out_indices)
        for name in self.layers[last + 1 :]:
            delattr(self, name)
        self.layers = self.layers[: last + 1]
        self._register_load_state_dict_pre_hook(self._rename_torchvision_keys)

    def train(self, mode: bool = True) -> "TruncatedMobileNetV2":
        super().train(mode)  # MMDetection's MobileNetV2.train returns nothing
        return self

    def _rename_torchvision_keys(self, state_dict, prefix, *args) -> None:
        torchvision_keys = [k for k in state_dict if k.startswith(prefix + "features.")]
        if not torchvision_keys:
            return
        mapping = torchvision_mobilenet_v2_names(self.arch_settings)
        for key in list(state_dict):
            if key.startswith(prefix + "classifier."):
                del state_dict[key]
                continue
            if not key.startswith(prefix + "features."):
                continue
            rest = key[len(prefix) :]
            module, _, param = rest.rpartition(".")
            target = mapping.get(module)
            value = state_dict.pop(key)
            if target is not None and target.split(".")[0] in self.layers + ["conv1"]:
                state_dict[f"{prefix}{target}.{param}"] = value


def torchvision_mobilenet_v2_names(arch_settings) -> dict[str, str]:
    """torchvision ``mobilenet_v2`` module names → MMDetection ``MobileNetV2`` names (conv / BN pairs)."""
    names = {"features.0.0": "conv1.conv", "features.0.1": "conv1.bn"}
    feature = 1
    for stage, (expand_ratio, _channels, blocks, _stride) in enumerate(arch_settings, 1):
        for block in range(blocks):
            ours = f"layer{stage}.{block}"
            theirs = f"features.{feature}.conv"
            if expand_ratio == 1:  # depthwise (conv+BN+act), then the linear 1x1 conv and its BN
                pairs = [
                    ("0.0", "depthwise_conv.conv"),
                    ("0.1", "depthwise_conv.bn"),
                    ("1", "linear_conv.conv"),
                    ("2", "linear_conv.bn"),
                ]
            else:  # expand, depthwise, linear
                pairs = [
                    ("0.0", "expand_conv.conv"),
                    ("0.1", "expand_conv.bn"),
                    ("1.0", "depthwise_conv.conv"),
                    ("1.1", "depthwise_conv.bn"),
                    ("2", "linear_conv.conv"),
                    ("3", "linear_conv.bn"),
                ]
            names.update({f"{theirs}.{t}": f"{ours}.{o}" for t, o in pairs})
            feature += 1
    names[f"features.{feature}.0"] = "conv2.conv"
    names[f"features.{feature}.1"] = "conv2.bn"
    return names


def read_mmdet_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The ``'state_dict'`` of an MMDetection checkpoint, loaded as tensors only."""
    payload = load_tensors_only(path, what="teacher checkpoint")
    state = payload.get("state_dict") if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not an MMDetection checkpoint (no 'state_dict')")
    return state


def load_teacher(teacher: nn.Module, path: str | Path) -> None:
    """Load an MMDetection checkpoint strictly into ``teacher``; one-line CheckpointError otherwise."""
    state = read_mmdet_checkpoint(path)
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"checkpoint {path} does not fit the teacher {type(teacher).__name__}: {summary}"
        ) from None


def resolve_config_path(ref: str) -> str:
    """A config file path, with MMEngine's ``mmdet::`` form resolved to the installed MMDetection configs."""
    if "::" in ref:
        from mmengine.config import Config

        path, _scope = Config._get_cfg_path(ref, "")
        return path
    return ref


def model_config(cfg: dict) -> dict:
    """A detector's model config; ``dict(cfg_path=<config file>, **overrides)`` takes the ``model`` of
    that file (``mmdet::`` paths allowed) with the overrides merged in as MMEngine merges bases."""
    from mmengine.config import Config, ConfigDict

    cfg = copy.deepcopy(dict(cfg))
    path = cfg.pop("cfg_path", None)
    if path is None:
        return ConfigDict(cfg)
    base = Config.fromfile(resolve_config_path(path)).model.to_dict()
    return ConfigDict(Config._merge_a_into_b(cfg, base))


def _with_keeping_roi_head(cfg: dict) -> dict:
    cfg = model_config(cfg)
    roi_head = dict(cfg["roi_head"])
    if roi_head["type"] in ("StandardRoIHead", "mmdet.StandardRoIHead"):
        roi_head["type"] = "RoIKeepingRoIHead"
    elif roi_head["type"] not in ("RoIKeepingRoIHead", RoIKeepingRoIHead):
        raise ValueError(f"the student's RoI head must be a StandardRoIHead, got {roi_head['type']}")
    cfg["roi_head"] = roi_head
    return cfg


@MODELS.register_module()
class DistillationDetector(BaseModel):
    """Student + frozen teacher two-stage detector + a distillation method.

    Args:
        student: config of the student (a Faster R-CNN; its ``StandardRoIHead`` becomes a
            :class:`RoIKeepingRoIHead`).
        teacher: config of the teacher, or None for the student alone (method ``ce``).
        teacher_checkpoint: the teacher's MMDetection checkpoint file.
        distill: the method's registry config (``dict(type='dkd', alpha=1, beta=0.25, ...)``),
            ``dict(type='fitnet', hint_weight=...)`` for FPN hints, or None / ``ce`` for none. CKD may
            carry ``contrast_rois``: its InfoNCE then runs within groups of that many RoIs of consecutive
            whole images of this process (a multiple of the RoIs sampled per image) and is averaged
            over the groups; None (default): one contrast over all RoIs (of all ranks with ``contrast
            'global'`` under DDP, else of this process).
        data_preprocessor: the batch preprocessor of student and teacher (default: the
            student's) — both see the same normalised, padded batch.
        channels_last: both detectors' weights and the input batch in the channels-last memory
            format (``--channels-last``).
    """

    def __init__(
        self,
        student: dict,
        teacher: dict | None = None,
        teacher_checkpoint: str | None = None,
        distill: dict | None = None,
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
        channels_last: bool = False,
    ) -> None:
        with DefaultScope.overwrite_default_scope("mmdet"):  # also when built outside a Runner
            self._build(student, teacher, teacher_checkpoint, distill, data_preprocessor, init_cfg)
        self.channels_last = channels_last
        if channels_last:  # weights now; the batch in forward (MMEngine's init keeps the layout)
            self.to(memory_format=torch.channels_last)

    def _build(self, student, teacher, teacher_checkpoint, distill, data_preprocessor, init_cfg) -> None:
        student = _with_keeping_roi_head(student)
        if data_preprocessor is None:
            data_preprocessor = student.get("data_preprocessor")
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.student = MODELS.build(student)
        distill = dict(distill) if distill else {"type": "ce"}
        self.method_name = distill["type"]
        method_cls = METHODS.get(self.method_name)  # unknown names fail with the list of registered methods
        if self.method_name not in ROI_LOGIT_METHODS + FEATURE_METHODS + NO_TEACHER_METHODS:
            raise ValueError(
                f"method {self.method_name!r} {method_cls.detection_note} "
                f"(detection: {', '.join(ROI_LOGIT_METHODS + FEATURE_METHODS)})"
            )
        # CKD's contrast size: consecutive whole images of this many RoIs in all (None: all RoIs of the process).
        self.contrast_images = self._contrast_images(distill.pop("contrast_rois", None))

        self.teacher: nn.Module | None = None
        if self.method_name not in NO_TEACHER_METHODS:
            if teacher is None or teacher_checkpoint is None:
                raise ValueError(f"method {self.method_name!r} needs a teacher and its checkpoint")
            teacher = model_config(teacher)
            teacher.get("backbone", {}).pop("init_cfg", None)  # never initialised: loaded from its checkpoint
            self.teacher = MODELS.build(teacher)
            # Loaded here, before MMEngine's weight init, which never touches it (see init_weights).
            load_teacher(self.teacher, teacher_checkpoint)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            self.teacher_checkpoint = str(teacher_checkpoint)

        self.method: nn.Module | None = None
        self.hint_regressors: nn.ModuleList | None = None
        self.hint_weight = 0.0
        self._student_fpn: tuple[Tensor, ...] | None = None
        if self.method_name in ROI_LOGIT_METHODS:
            # The registry's method on the RoI logits; its CE term is MMDetection's loss_cls already.
            self.method = build_method({**distill, "ce_weight": 0.0})
        elif self.method_name in FEATURE_METHODS:
            self.hint_weight = float(distill.get("hint_weight", 1.0))
            levels, s_channels, t_channels = (
                self.student.neck.num_outs,
                self.student.neck.out_channels,
                self.teacher.neck.out_channels,
            )
            if self.teacher.neck.num_outs != levels:
                raise ValueError(
                    f"FitNet on FPN needs as many levels in both necks ({levels} vs {self.teacher.neck.num_outs})"
                )
            self.hint_regressors = nn.ModuleList(
                nn.Conv2d(s_channels, t_channels, kernel_size=1) for _ in range(levels)
            )
            self.student.neck.register_forward_hook(self._keep_student_fpn)
        self.epoch = 1  # set by EpochTracker before each training epoch, counted from 1
        self.measure_time = False  # set by the timing hook on measured iterations
        self.last_timing: dict[str, float] = {}
        # Training checkpoints hold the student (and regressors), not the teacher.
        self._register_state_dict_hook(_drop_teacher)
        self._register_load_state_dict_pre_hook(self._fill_teacher)

    def _contrast_images(self, contrast_rois: int | None) -> int | None:
        """Images per CKD contrast group: ``contrast_rois`` / the RoIs the sampler draws per image."""
        if contrast_rois is None:
            return None
        if self.method_name != "ckd":
            raise ValueError(f"contrast_rois is a setting of CKD, not of {self.method_name!r}")
        per_image = int(self.student.roi_head.train_cfg.sampler.num)
        if contrast_rois <= 0 or contrast_rois % per_image:
            raise ValueError(
                f"contrast_rois {contrast_rois} is not a positive multiple of the {per_image} RoIs "
                "sampled per image (a contrast group is whole images)"
            )
        return contrast_rois // per_image

    def contrast_groups(self, rois: Tensor, num_images: int) -> tuple[int, ...] | None:
        """Row counts of the CKD contrast groups: the RoIs of ``contrast_images`` consecutive images each
        (the last group may hold fewer images when the process's batch is not a multiple)."""
        if self.contrast_images is None:
            return None
        # bbox2roi orders the RoIs image by image; column 0 is the image's index in the batch.
        per_image = torch.bincount(rois[:, 0].long(), minlength=num_images).tolist()
        step = self.contrast_images
        return tuple(sum(per_image[i : i + step]) for i in range(0, num_images, step))

    # -------------------------------------------------------------- weights, modes

    def init_weights(self) -> None:
        """The student initialises itself as its config says (ImageNet backbone); never the teacher."""
        self.student.init_weights()

    def train(self, mode: bool = True) -> "DistillationDetector":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BN statistics (and everything else) of the teacher stay frozen
        return self

    def _fill_teacher(self, state_dict, prefix, *args) -> None:
        if self.teacher is None:
            return
        for key, value in self.teacher.state_dict().items():
            state_dict.setdefault(f"{prefix}teacher.{key}", value)

    def _keep_student_fpn(self, module, inputs, outputs) -> None:
        self._student_fpn = tuple(outputs) if self.training else None

    def _clock(self) -> float:
        if self.measure_time and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    # -------------------------------------------------------------- forward

    def forward(self, inputs: Tensor, data_samples: list | None = None, mode: str = "tensor") -> Any:
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if mode == "loss":
            return self.loss(inputs, data_samples)
        if mode == "predict":
            return self.student.predict(inputs, data_samples)
        if mode == "tensor":
            return self.student._forward(inputs, data_samples)
        raise ValueError(f"unknown mode {mode!r}")

    def loss(self, inputs: Tensor, data_samples: list) -> dict[str, Tensor]:
        start = self._clock()
        losses = self.student.loss(inputs, data_samples)  # all of MMDetection's losses
        sampled, self.student.roi_head.sampled = self.student.roi_head.sampled, None
        student_done = self._clock()
        teacher_ms = distill_ms = 0.0
        if self.teacher is not None:
            with torch.no_grad():
                teacher_features = self.teacher.extract_feat(inputs)
                if self.method is not None:  # the teacher's RoI head on the student's sampled RoIs
                    teacher_logits = self.teacher.roi_head._bbox_forward(teacher_features, sampled.rois)["cls_score"]
            teacher_done = self._clock()
            if self.method is not None:
                terms = self.method(
                    StepInputs(
                        logits_student=sampled.cls_score,
                        target=sampled.labels,
                        logits_teacher=teacher_logits,
                        epoch=self.epoch,
                        groups=self.contrast_groups(sampled.rois, len(data_samples)),
                    )
                )
                losses.update({name: value for name, value in terms.items() if name != "loss_ce"})
            else:  # FitNet on the FPN outputs
                student_features, self._student_fpn = self._student_fpn, None
                hint = sum(
                    fitnet_loss(regressor(s), t)
                    for regressor, s, t in zip(self.hint_regressors, student_features, teacher_features)
                )
                losses["loss_hint"] = self.hint_weight * hint / len(self.hint_regressors)
            loss_done = self._clock()
            teacher_ms, distill_ms = 1e3 * (teacher_done - student_done), 1e3 * (loss_done - teacher_done)
        if self.measure_time:
            self.last_timing = {
                "teacher_forward_ms": teacher_ms,
                "student_forward_ms": 1e3 * (student_done - start),
                "distill_loss_ms": distill_ms,
            }
        return losses


def _drop_teacher(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "teacher.")]:
        del state_dict[key]


__all__ = [
    "DistillationDetector",
    "RoIKeepingRoIHead",
    "model_config",
    "resolve_config_path",
    "SampledRoIs",
    "TruncatedMobileNetV2",
    "load_teacher",
    "read_mmdet_checkpoint",
    "torchvision_mobilenet_v2_names",
    "ROI_LOGIT_METHODS",
    "FEATURE_METHODS",
]
