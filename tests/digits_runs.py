"""What the tests that train digits runs share: a random teacher, an interruption, a weights check."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmark import faults
from benchmark.models import build_model
from benchmark.store.checkpoints import save_community_checkpoint
from benchmark.train import STUDENT_EXPORT

TEACHER = "small_cnn_w32"


def random_teacher(root: Path) -> Path:
    """A teacher checkpoint with random weights in the community layout under ``root`` (its path);
    ``root`` is then a ``--teachers`` folder. The tests are about mechanics, not accuracy."""
    torch.manual_seed(0)
    path = root / f"{TEACHER}_vanilla" / "ckpt_epoch_240.pth"
    save_community_checkpoint(build_model(TEACHER, 10), path)
    return path


def interrupt_at(monkeypatch, point: str, **wanted) -> None:
    """Make faults.fire raise KeyboardInterrupt (what SIGINT does) once at ``point``."""
    state = {"done": False}

    def fire(name: str, **context) -> None:
        if name == point and not state["done"] and all(context.get(k) == v for k, v in wanted.items()):
            state["done"] = True
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "fire", fire)


def assert_students_equal(a: Path, b: Path) -> None:
    """The exported students of run directories ``a`` and ``b`` hold bit-identical weights."""
    left = torch.load(a / STUDENT_EXPORT, weights_only=True)["model"]
    right = torch.load(b / STUDENT_EXPORT, weights_only=True)["model"]
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key
