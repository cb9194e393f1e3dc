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
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from benchmark.store.atomic import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit its network."""


def first_sentence(exc: BaseException) -> str:
    """A library's error in one short line: its first sentence (torch's are paragraphs)."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    end = text.find(". ")
    return (text[: end + 1] if end > 0 else text)[:200]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def community_checkpoint_path(teachers_dir: str | os.PathLike, name: str, epoch: int = 240) -> Path:
    """Where the community layout keeps a network trained alone: ``<name>_vanilla/ckpt_epoch_<E>.pth``."""
    return Path(teachers_dir) / f"{name}_vanilla" / f"ckpt_epoch_{epoch}.pth"


def load_tensors_only(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """``torch.load(weights_only=True)`` of a file from outside; one-line CheckpointError when it fails."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a tensor-only checkpoint: {first_sentence(exc)}"
        ) from None


def read_community_checkpoint(path: str | os.PathLike) -> dict:
    """A teacher/student weight file as ``{'model': state_dict, ...}``, loaded as tensors only.

    Accepted layouts: the community ``{'model': state_dict}`` (RepDistiller / mdistiller),
    ``{'state_dict': state_dict}`` (MMEngine / mdistiller ImageNet), and a plain state dict
    (torchvision's own weight files, e.g. ``resnet34-b627a593.pth``).
    """
    payload = load_tensors_only(path)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return {**payload, "model": payload["state_dict"]}
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return {"model": payload}
    raise CheckpointError(
        f"checkpoint {path} holds no state dict ({{'model': ...}}, {{'state_dict': ...}} or a plain one)"
    )


def load_community_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load ``{'model': state_dict}`` strictly into ``model``; returns the whole payload."""
    payload = read_community_checkpoint(path)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {summary}") from None
    return payload


def save_deterministic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through an open file: the archive's inner folder is then always ``archive/``.

    Given a path, torch names it after the file — here a random temporary name — so the same
    weights gave a different file, and a different sha256 in the tables, on every run.
    """
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def save_community_checkpoint(model: nn.Module, path: str | os.PathLike, **extra) -> Path:
    """Save ``{'model': state_dict, **extra}`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        save_deterministic({"model": model.state_dict(), **extra}, tmp)
    return Path(path)


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

    allowed: list = [
        HistoryBuffer,
        builtins.getattr,
        codecs.encode,
        collections.Counter,
        collections.OrderedDict,
        np.ndarray,
        np.dtype,
    ]
    allowed += [
        type(np.dtype(name)) for name in ("float64", "float32", "float16", "int64", "int32", "int8", "uint8", "bool")
    ]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(module_name, fromlist=["_reconstruct", "scalar"])
            allowed += [module._reconstruct, module.scalar]
    with contextlib.suppress(ImportError):
        from mmengine.config.config import ConfigDict

        allowed.append(ConfigDict)
    return allowed


EPOCH_CHECKPOINT = re.compile(r"^epoch_(\d+)\.pth$")
SET_ASIDE_SUFFIX = ".unreadable"


def epoch_checkpoints(work_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """MMEngine's ``epoch_<k>.pth`` files in ``work_dir``, newest epoch first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in work_dir.iterdir() if (m := EPOCH_CHECKPOINT.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of our own MMEngine training checkpoints (allow-listed types only)."""
    with allow_mmengine_checkpoint_globals():
        return torch.load(path, map_location="cpu", weights_only=True)


def newest_loadable_checkpoint(work_dir: str | os.PathLike, say: Callable[[str], object]) -> tuple[int, Path] | None:
    """The newest epoch checkpoint in ``work_dir`` that loads completely, or None.

    One that does not load (torn by a kill during ``torch.save``, a full disk, a node crash)
    is set aside — renamed ``*.unreadable``, never deleted — with one line, and the next
    older one is tried.
    """
    for epoch, path in epoch_checkpoints(work_dir):
        try:
            checkpoint = load_training_checkpoint(path)
            if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
                raise ValueError("not an MMEngine training checkpoint")
        except Exception as exc:  # noqa: BLE001 - any failure to load means: do not resume from it
            aside = path.with_name(path.name + SET_ASIDE_SUFFIX)
            os.replace(path, aside)
            say(f"checkpoint {path} does not load ({first_sentence(exc)}); set aside as {aside.name}")
            continue
        return epoch, path
    return None


@contextlib.contextmanager
def allow_mmengine_checkpoint_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read MMEngine's own training checkpoints."""
    with torch.serialization.safe_globals(_mmengine_checkpoint_globals()):
        yield
