"""Registry of knowledge-distillation methods.

Each module in this package holds one method: its pure loss function(s) and a small
:class:`~methods.base.Distiller` registered in :data:`METHODS` under its config name.
Modules are discovered automatically, so a new method is one new file.

>>> import methods
>>> sorted(methods.METHODS.module_dict)
['ce', 'ckd', 'crd', 'crd_kd', 'dkd', 'fitnet', 'kd']

Rule: a leaf — no import of ``benchmark``; a new method is one file here plus its golden test.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from .base import DistillContext, Distiller, StepInputs
from .registry import METHODS, UnknownMethodError

_INFRASTRUCTURE = {"base", "registry", "distributed"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")


def build_method(cfg: Mapping[str, Any] | str, context: DistillContext | None = None) -> Distiller:
    """Build a method from a config dict (``{'type': 'kd', 'temperature': 4}``) or a bare name."""
    cfg = {"type": cfg} if isinstance(cfg, str) else dict(cfg)
    # Looked up and instantiated directly rather than through ``METHODS.build``: inside an
    # MMEngine Runner the default scope is 'mmengine', which this registry is not part of.
    method_cls = METHODS.get(cfg.pop("type"))
    return method_cls(**cfg, context=context)


def method_names() -> list[str]:
    return sorted(METHODS.module_dict)


__all__ = ["METHODS", "UnknownMethodError", "DistillContext", "Distiller", "StepInputs", "build_method", "method_names"]
