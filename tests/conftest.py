from __future__ import annotations

import pytest

from tests.datagen import write_tiny_cifar100


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory):
    """A CIFAR-100 data root in the official python format: 128 train / 64 test images."""
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar100(root, n_train=128, n_test=64, seed=0)
    return root
