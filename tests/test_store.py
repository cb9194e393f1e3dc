"""Files the store writes are a function of their content: the same weights give the same bytes (and sha256)."""

from __future__ import annotations

import torch

from benchmark.store.checkpoints import save_community_checkpoint, sha256_of


def test_the_same_weights_give_the_same_checkpoint_bytes(tmp_path):
    """The teacher's sha256 in the tables must not change between two runs of the same training.

    ``torch.save`` given a path names the archive's inner folder after the file, and the atomic
    writer's temporary file has a random name: every export had another sha256.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    first = save_community_checkpoint(model, tmp_path / "a" / "student.pth", epoch=1, accuracy=50.0)
    second = save_community_checkpoint(model, tmp_path / "b" / "student.pth", epoch=1, accuracy=50.0)
    assert first.read_bytes() == second.read_bytes() and sha256_of(first) == sha256_of(second)
    torch.nn.init.zeros_(model.bias)
    third = save_community_checkpoint(model, tmp_path / "c" / "student.pth", epoch=1, accuracy=50.0)
    assert sha256_of(third) != sha256_of(first)
