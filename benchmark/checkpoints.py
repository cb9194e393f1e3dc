"""Checkpoints: community-format teacher/student files and MMEngine resume under torch ≥ 2.6.

Community CIFAR-100 checkpoints (RepDistiller / mdistiller ``cifar_teachers.tar``) are
``{'model': state_dict, ...}`` files at ``<name>_vanilla/ckpt_epoch_240.pth``. They are
loaded with ``weights_only=True`` (they hold tensors only) and ``strict=True``.

MMEngine's own checkpoints also hold its message hub (``HistoryBuffer``), numpy arrays
and the config; torch ≥ 2.6 refuses them under its ``weights_only=True`` default. We
allow exactly those types, and only while resuming our own runs
(:func:`allow_mmengine_checkpoint_globals`), instead of turning the safety off.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterator

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit its network."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def community_checkpoint_path(teachers_dir: str | os.PathLike, name: str, epoch: int = 240) -> Path:
    """Where the community layout keeps a network trained alone: ``<name>_vanilla/ckpt_epoch_<E>.pth``."""
    return Path(teachers_dir) / f"{name}_vanilla" / f"ckpt_epoch_{epoch}.pth"


def read_community_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a tensor-only checkpoint: {first_line}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} is not in the community format {{'model': state_dict}}")
    return payload


def load_community_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load ``{'model': state_dict}`` strictly into ``model``; returns the whole payload."""
    payload = read_community_checkpoint(path)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {summary}") from None
    return payload


def save_community_checkpoint(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Save ``{'model': state_dict, **extra}`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), **extra}, tmp)
    os.replace(tmp, path)
    return path


def _mmengine_checkpoint_globals() -> list:
    """The non-tensor types an MMEngine training checkpoint of ours contains.

    ``getattr`` is among them: ``HistoryBuffer`` pickles its statistics as bound methods.
    That is why this list is only ever enabled while resuming runs from our own work dirs.
    """
    import builtins
    import codecs
    import collections

    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed: list = [HistoryBuffer, builtins.getattr, codecs.encode, collections.Counter, collections.OrderedDict, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "int8", "uint8", "bool")]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(module_name, fromlist=["_reconstruct", "scalar"])
            allowed += [module._reconstruct, module.scalar]
    with contextlib.suppress(ImportError):
        from mmengine.config.config import ConfigDict

        allowed.append(ConfigDict)
    return allowed


@contextlib.contextmanager
def allow_mmengine_checkpoint_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read MMEngine's own training checkpoints."""
    with torch.serialization.safe_globals(_mmengine_checkpoint_globals()):
        yield
