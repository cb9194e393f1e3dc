"""Feature taps: intermediate features taken by module NAME with hooks, never by editing models.

Distillation methods need hidden features (FitNet's hint, the penultimate embedding, ...).
The reference code returns them from ``forward(is_feat=True)``; here every model's forward
returns only logits and a :class:`FeatureTap` says which module's input or output holds the
feature. :class:`FeatureRecorder` hooks those modules and collects the tensors of each forward.

The recorder keeps the hooked tensors as they are (no copy, no detach), so losses on them
backpropagate into the network. This is only safe because no model in this package modifies
a tensor in place after a module has returned it; keep it that way (no ``inplace=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Literal, Mapping, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

TapPoint = Literal["input", "output"]
OutputHook = Callable[[nn.Module, tuple[Any, ...], Any], None]
InputHook = Callable[[nn.Module, tuple[Any, ...]], None]


@dataclass(frozen=True)
class FeatureTap:
    """Where one feature lives: the ``point`` ('input' or 'output') of the module named
    ``module`` (a dotted name from ``model.named_modules()``; '' is the model itself).
    ``relu`` applies a ReLU (out of place) to the hooked tensor, for features the reference
    takes after a functional ReLU that has no module of its own."""

    module: str
    point: TapPoint
    relu: bool = False

    def __post_init__(self) -> None:
        if self.point not in get_args(TapPoint):
            raise ValueError(f"FeatureTap.point must be 'input' or 'output', got {self.point!r}")


class FeatureRecorder:
    """Record the features named by ``taps`` on every forward of ``model``.

    ``recorder.features`` maps tap name -> tensor and is emptied at the start of each forward
    of the model, so it never mixes two batches. If a tapped module runs more than once in a
    forward, the last call wins. Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, taps: Mapping[str, FeatureTap]) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []
        modules = dict(model.named_modules())
        unknown = {name: tap.module for name, tap in taps.items() if tap.module not in modules}
        if unknown:  # validate everything before registering anything
            raise ValueError(
                f"FeatureRecorder: no module named {sorted(set(unknown.values()))} in "
                f"{type(model).__name__} (taps {sorted(unknown)}); see model.named_modules()"
            )
        # Registered first, so it runs before any tap on the root module itself.
        self._handles.append(model.register_forward_pre_hook(self._clear_features))
        for tap_name, tap in taps.items():
            module = modules[tap.module]
            if tap.point == "output":
                handle = module.register_forward_hook(self._output_hook(tap_name, tap))
            else:
                handle = module.register_forward_pre_hook(self._input_hook(tap_name, tap))
            self._handles.append(handle)

    def _clear_features(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.features = {}

    def _store(self, tap_name: str, tap: FeatureTap, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"tap {tap_name!r}: the {tap.point} of module {tap.module!r} is a {type(value).__name__}, not a tensor"
            )
        self.features[tap_name] = F.relu(value) if tap.relu else value

    def _output_hook(self, tap_name: str, tap: FeatureTap) -> OutputHook:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            self._store(tap_name, tap, output)

        return hook

    def _input_hook(self, tap_name: str, tap: FeatureTap) -> InputHook:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if len(args) != 1:
                raise TypeError(
                    f"tap {tap_name!r}: module {tap.module!r} got {len(args)} positional "
                    "inputs; an 'input' tap needs exactly one"
                )
            self._store(tap_name, tap, args[0])

        return hook

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def remove(self) -> None:
        """Unregister all hooks (idempotent); ``features`` keeps the last recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
