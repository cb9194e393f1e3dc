"""Benchmark suites: one module per suite, each registering a :class:`Suite`.

Modules are discovered automatically, so a new suite is one new file calling
:func:`register_suite`.

Rule: a leaf — a new suite is one file here; what the layers above need from it is declared on ``Suite``.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import LOW_LR_STUDENTS, Pair, ResolvedRecipe, Schedule, Suite, community_layout, variant_name

_SUITES: dict[str, Suite] = {}


class UnknownSuiteError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_suite(suite: Suite) -> Suite:
    if suite.name in _SUITES:
        raise ValueError(f"suite {suite.name!r} is registered twice")
    _SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    try:
        return _SUITES[name]
    except KeyError:
        raise UnknownSuiteError(f"unknown suite {name!r}; available suites: {', '.join(suite_names())}") from None


def suite_names() -> list[str]:
    return sorted(_SUITES)


for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "LOW_LR_STUDENTS",
    "Pair",
    "ResolvedRecipe",
    "Schedule",
    "Suite",
    "UnknownSuiteError",
    "get_suite",
    "register_suite",
    "suite_names",
    "variant_name",
    "community_layout",
]
