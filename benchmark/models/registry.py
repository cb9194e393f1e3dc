"""The model registry: the ONLY place model names are listed.

Each family module decorates its constructor functions with :func:`register_model`
(timm style), naming the model after the function and declaring its feature taps.
Importing :mod:`benchmark.models` imports every family, which fills the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping, TypeVar

from torch import nn

from .taps import FeatureTap

ModelConstructor = Callable[..., nn.Module]
Constructor = TypeVar("Constructor", bound=ModelConstructor)

# Every model must say where these features are; distillation methods rely on them.
REQUIRED_TAPS = frozenset({"hint", "embedding"})


@dataclass(frozen=True)
class ModelEntry:
    constructor: ModelConstructor  # called as constructor(num_classes=...)
    taps: Mapping[str, FeatureTap]


_MODEL_ENTRIES: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered; a KeyError (lookup) and a ValueError (bad argument)."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it one readable line
        return str(self.args[0]) if self.args else ""


def register_model(*, taps: Mapping[str, FeatureTap], name: str | None = None) -> Callable[[Constructor], Constructor]:
    """Register the decorated constructor under ``name`` (default: the function's name)."""

    def decorator(constructor: Constructor) -> Constructor:
        model_name = name or constructor.__name__
        if model_name in _MODEL_ENTRIES:
            raise ValueError(f"model {model_name!r} is registered twice")
        missing = REQUIRED_TAPS - set(taps)
        if missing:
            raise ValueError(f"model {model_name!r} lacks feature taps {sorted(missing)}")
        _MODEL_ENTRIES[model_name] = ModelEntry(constructor, MappingProxyType(dict(taps)))
        return constructor

    return decorator


def registered_names() -> list[str]:
    return sorted(_MODEL_ENTRIES)


def get_entry(name: str) -> ModelEntry:
    try:
        return _MODEL_ENTRIES[name]
    except KeyError:
        known = ", ".join(registered_names())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None
