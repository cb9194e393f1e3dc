"""The method registry: configs name a distillation method by ``type``.

An MMEngine :class:`~mmengine.registry.Registry`, so ``dict(type='ckd', temperature=1.0)``
builds a method anywhere a config does. Unknown names fail with a message that lists
the registered ones (MMEngine's own message does not).
"""

from __future__ import annotations

from typing import Any

from mmengine.registry import Registry


class UnknownMethodError(KeyError):
    """A method name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MethodRegistry(Registry):
    def get(self, key: str) -> Any:
        found = super().get(key)
        if found is None and isinstance(key, str):
            known = ", ".join(sorted(self.module_dict))
            raise UnknownMethodError(f"unknown distillation method {key!r}; registered methods: {known}")
        return found


METHODS = MethodRegistry("distillation method")
