"""Fault injection for the reliability tests: kill or interrupt the suite at a named point.

Off unless the environment variable ``KD_FAULT`` is set, so production runs never pay
more than one dictionary lookup per point. Its value is ``<point> <action> [key=value ...]``:

- ``point``: where the suite calls :func:`fire` — ``mid_epoch`` (after a training
  iteration), ``after_checkpoint`` (an epoch's checkpoint is on disk, its validation has
  not run), ``after_validation`` (an epoch's curve point is written), ``before_finalise``
  (training and the last validation are over, the record is not yet completed),
  ``before_rename`` (an atomic write is complete but not yet renamed into place),
  ``nan_loss`` (the training loss of an iteration).
- ``action``: a signal name (``INT``, ``TERM``, ``KILL``) sent to this process, or ``NAN``
  (only for ``nan_loss``: the loss of that iteration is replaced by NaN).
- ``key=value``: the point's context must match, e.g. ``epoch=2``, ``iter=3``,
  ``method=ckd``, ``file=digits_last.md``, ``count=2`` (the second time all else matches).

A fault fires once per process. The tests start the real CLI with it set (tests/test_faults.py).
"""

from __future__ import annotations

import os
import signal

ENV = "KD_FAULT"
_state = {"fired": False, "seen": 0}


def _spec() -> tuple[str, str, dict[str, str]] | None:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    point, action, *pairs = text.split()
    return point, action.upper(), dict(pair.split("=", 1) for pair in pairs)


def matches(point: str, **context: object) -> str | None:
    """The action to take at ``point`` with this context, or None. Counts ``count=`` matches."""
    spec = _spec()
    if spec is None or _state["fired"] or spec[0] != point:
        return None
    _, action, wanted = spec
    wanted = dict(wanted)
    count = int(wanted.pop("count", 1))
    if any(str(context.get(key)) != value for key, value in wanted.items()):
        return None
    _state["seen"] += 1
    if _state["seen"] < count:
        return None
    _state["fired"] = True
    return action


def fire(point: str, **context: object) -> None:
    """Send the configured signal to this process when ``point`` and its context match."""
    action = matches(point, **context)
    if action is None or action == "NAN":
        return
    os.kill(os.getpid(), getattr(signal, "SIG" + action))


__all__ = ["ENV", "fire", "matches"]
