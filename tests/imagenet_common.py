"""What the ImageNet suite's tests share: the suite and its pairs, the tiny data's size, the
expected tap shapes at 224x224, and the single-thread fixture (autouse in each test module that
imports it); used by tests/test_imagenet.py and tests/test_imagenet_runs.py.
"""

from __future__ import annotations

import pytest
import torch

from benchmark.suites import Pair, get_suite

SUITE = get_suite("imagenet")
R34_R18 = Pair("resnet34_in1k", "resnet18_in1k")
R50_MV1 = Pair("resnet50_in1k", "mobilenetv1_in1k")
N_CLASSES, PER_CLASS_TRAIN, PER_CLASS_VAL = 3, 4, 2


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Batch 1-4 CPU tensors gain little from two contending threads on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (hint C, H, W at 224x224 = the stride-8 stage, embedding dim)
TAPS_224 = {
    "resnet18_in1k": ((128, 28, 28), 512),
    "resnet34_in1k": ((128, 28, 28), 512),
    "resnet50_in1k": ((512, 28, 28), 2048),
    "mobilenetv1_in1k": ((256, 28, 28), 1024),
}
