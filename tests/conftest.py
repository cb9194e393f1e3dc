from __future__ import annotations

import os

import pytest

from tests.datagen import write_tiny_cifar100


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch gets its share of the cores (one each with -n 2 on 2 cores).

    Torch's default (every core, in every worker) puts 2N threads on N cores: their OpenMP threads
    then spin-wait on each other, and the small tensors of these tests gain nothing from a second one.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory):
    """A CIFAR-100 data root in the official python format: 128 train / 64 test images."""
    root = tmp_path_factory.mktemp("cifar")
    write_tiny_cifar100(root, n_train=128, n_test=64, seed=0)
    return root


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """``--dist loadgroup`` (tox -e py): the tests of one ``xdist_group`` go to one worker, under pytest >= 9 too.

    pytest-xdist names each grouped test ``<nodeid>@<group>`` so that its scheduler keeps a group
    together; it sets ``item._nodeid``, which pytest 9 no longer reads (the id is ``item._id``), so
    the groups were silently split over the workers and their module fixtures ran on each.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = type(item._id).parse(item.nodeid + suffix)
