"""COCO object detection on MMDetection 3.x: distillation of two-stage detectors.

- :mod:`benchmark.detection.layout` (no MMDetection needed): the COCO 2017 layout check,
  where teacher checkpoints and the students' torchvision ImageNet weights are found.
- :mod:`benchmark.detection.model` (needs mmdet, mmcv): ``DistillationDetector`` — a student
  and a frozen teacher two-stage detector; the registry's KD / DKD / CKD on the RoI
  classification logits of the student's sampled proposals, FitNet on the FPN outputs —
  the RoI head that keeps its sampled RoIs, and the truncated MobileNetV2 backbone.
- :mod:`benchmark.detection.config`: one run's MMDetection config from the files in
  ``benchmark/configs/coco`` and the resolved recipe.

This package imports without MMDetection; only ``benchmark.detection.model`` (imported by
the configs through ``custom_imports``) needs it.

Rule: a leaf — MMDetection's models and configs for the coco suite; it imports nothing of ``sweep/`` or ``train/``.
"""

from __future__ import annotations

import warnings

# MMEngine resolves ``mmdet::`` config paths through pkg_resources (setuptools < 81, pinned in
# requirements-detection.txt), which warns on every import; the warning says nothing to a user here.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)


def detection_stack_problem() -> str | None:
    """None when MMDetection and mmcv's compiled ops import, else one line saying what is missing."""
    try:
        import mmcv.ops  # noqa: F401  (RoIAlign, NMS: the compiled ops)
        import mmdet  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or mmdet's own version assertion
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        return (
            f"the detection stack (mmcv 2.1.0 with ops, mmdet 3.3.0) is not importable ({first}); "
            "install it with: python -m benchmark.tools.install_detection"
        )
    return None
