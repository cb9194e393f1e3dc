"""CIFAR-100 model zoo, state-dict compatible with RepDistiller's CIFAR models.

The community teacher checkpoints (``<name>_vanilla/ckpt_epoch_240.pth``, a dict
``{'model': state_dict}``) load into these models with ``strict=True`` and give the same
logits. ``forward(x)`` returns logits only; hidden features are read with
:class:`FeatureRecorder` at the taps of :func:`feature_taps`.

Rule: a leaf — models return logits from ``forward(x)``; features are read by name (taps), never by editing a model.
"""

from __future__ import annotations

from torch import nn

# Importing the families registers their models.
from . import imagenet, mobilenetv2, resnet, resnet_v2, shufflenetv1, shufflenetv2, small_cnn, vgg, wrn  # noqa: F401
from .registry import UnknownModelError, get_entry, registered_names
from .taps import FeatureRecorder, FeatureTap

MODEL_NAMES: list[str] = registered_names()


def build_model(name: str, num_classes: int = 100) -> nn.Module:
    """A freshly initialised model (initialised like the reference, for the same RNG state)."""
    return get_entry(name).constructor(num_classes=num_classes)


def feature_taps(name: str) -> dict[str, FeatureTap]:
    """Tap name -> :class:`FeatureTap` for the model ``name``; at least 'hint' and 'embedding'.

    'hint' is RepDistiller's ``feats[2]`` (``is_feat=True, preact=False``; FitNet's hint
    layer); 'embedding' is ``feats[-1]``, the pooled vector fed to the final linear layer.
    """
    return dict(get_entry(name).taps)


__all__ = [
    "MODEL_NAMES",
    "FeatureRecorder",
    "FeatureTap",
    "UnknownModelError",
    "build_model",
    "feature_taps",
]
