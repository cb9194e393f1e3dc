"""Benchmark workloads: one distillation loss's forward+backward on CIFAR-100 shapes.

The shapes are those of the resnet32x4 → resnet8x4 pair (the CRD/DKD papers' headline
pair), 100 classes: both networks' FitNet hint (stage-2 output, ``layer2``) is
``(B, 128, 16, 16)`` and both penultimate embeddings are ``(B, 256)``
(``tests/bench/test_loss_bench.py`` checks them against ``benchmark.models``).
CRD: K = 16384 negatives, N = 50,000 samples, 128-d embeddings, unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from methods import DistillContext, Distiller, StepInputs, build_method

NUM_CLASSES = 100
HINT_SHAPE = (128, 16, 16)  # resnet8x4 and resnet32x4 layer2 output, per sample
EMBEDDING_DIM = 256  # resnet8x4 and resnet32x4 fc input
CRD_K, CRD_N, CRD_DIM = 16384, 50_000, 128
CIFAR_TRAIN_SIZE = 50_000


def crd_k_for(n_data: int) -> int:
    """CRD's K for a bank of ``n_data``: 16384 as on CIFAR-100, at most N/2 for small banks
    (CRD needs K < N; N/2 keeps a sizeable share of the bank as negatives)."""
    return min(CRD_K, n_data // 2)


def cifar_context(batch_size: int, n_data: int | None = None) -> DistillContext:
    shapes = {"hint": (batch_size, *HINT_SHAPE), "embedding": (batch_size, EMBEDDING_DIM)}
    return DistillContext(
        num_classes=NUM_CLASSES,
        num_data=CIFAR_TRAIN_SIZE if n_data is None else n_data,
        student_shapes=shapes,
        teacher_shapes=dict(shapes),
    )


def method_config(name: str, n_data: int | None = None, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"type": name}
    if name.startswith("crd"):
        cfg["nce_k"] = crd_k_for(CRD_N if n_data is None else n_data)
        cfg["feat_dim"] = CRD_DIM
    cfg.update(overrides)
    return cfg


@dataclass
class LossWorkload:
    """Calling it runs one forward+backward of ``method`` on a fixed synthetic batch.

    Leaf gradients are dropped at the end of each call (as ``zero_grad(set_to_none=True)``
    does), so every call allocates them afresh and the peak-memory figure includes them.
    """

    method: Distiller
    step: StepInputs
    leaves: list[Tensor] = field(default_factory=list)

    def __call__(self) -> None:
        losses = self.method(self.step)
        sum(losses.values()).backward()
        for tensor in self.leaves:
            tensor.grad = None
        for param in self.method.parameters():
            param.grad = None


def loss_workload(
    name: str,
    batch_size: int,
    n_data: int | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    **overrides: Any,
) -> LossWorkload:
    """The workload of method ``name`` (any registry name) at batch size ``batch_size``."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    context = cifar_context(batch_size, n_data)
    torch.manual_seed(seed)
    method = build_method(method_config(name, n_data, **overrides), context).to(device).train()

    def randn(*shape: int, grad: bool = False) -> Tensor:
        return torch.randn(*shape, generator=gen).to(device).requires_grad_(grad)

    b = batch_size
    logits_student = randn(b, NUM_CLASSES, grad=True)
    hint_student = randn(b, *HINT_SHAPE, grad=True)
    embedding_student = randn(b, EMBEDDING_DIM, grad=True)
    num_data = context.num_data or CIFAR_TRAIN_SIZE
    index = torch.randperm(num_data, generator=gen)[:b]
    contrast_index = None
    if method.contrast_k is not None:
        contrast_index = torch.randint(num_data, (b, method.contrast_k + 1), generator=gen)
        contrast_index[:, 0] = index
        contrast_index = contrast_index.to(device)
    step = StepInputs(
        logits_student=logits_student,
        target=torch.randint(NUM_CLASSES, (b,), generator=gen).to(device),
        logits_teacher=randn(b, NUM_CLASSES),
        epoch=240,  # past DKD's warm-up
        features_student={"hint": hint_student, "embedding": embedding_student},
        features_teacher={"hint": randn(b, *HINT_SHAPE).relu(), "embedding": randn(b, EMBEDDING_DIM).relu()},
        index=index.to(device),
        contrast_index=contrast_index,
    )
    return LossWorkload(method, step, [logits_student, hint_student, embedding_student])


def crd_memory_bytes(batch_size: int, n_data: int, k: int, dim: int = CRD_DIM, itemsize: int = 4) -> int:
    """Rough peak of CRD's scoring temporaries under ``scoring='auto'`` (both banks)."""
    from methods.crd import choose_scoring

    if choose_scoring(batch_size, k + 1, n_data, dim) == "full":
        return 2 * 2 * batch_size * n_data * itemsize
    return 2 * batch_size * (k + 1) * dim * itemsize


@dataclass
class MemoryScoringWorkload:
    """CRD's memory: both banks scored, Z-normalised and updated, then backward to ``v``.

    The backward starts from fixed upstream gradients of the two ``B × (K+1)`` outputs, so
    only the memory is timed; with ``with_loss`` it starts from the NCE loss instead (the
    loss's elementwise work is the same on both scoring paths).
    """

    memory: Any
    v_student: Tensor
    v_teacher: Tensor
    index: Tensor
    contrast_index: Tensor
    upstream: tuple[Tensor, Tensor]
    with_loss: bool = False

    def __call__(self) -> None:
        from methods.crd import nce_loss

        out_s, out_t = self.memory(self.v_student, self.v_teacher, self.index, self.contrast_index)
        if self.with_loss:
            n = self.memory.n_data
            (nce_loss(out_s, n) + nce_loss(out_t, n)).backward()
        else:
            torch.autograd.backward([out_s, out_t], list(self.upstream))
        self.v_student.grad = self.v_teacher.grad = None


def memory_scoring_workload(
    scoring: str,
    batch_size: int = 64,
    k: int = CRD_K,
    n_data: int = CRD_N,
    dim: int = CRD_DIM,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    with_loss: bool = False,
) -> MemoryScoringWorkload:
    """CRD's :class:`~methods.crd.ContrastMemory` with a forced ``scoring`` path, same data per seed."""
    from methods.crd import ContrastMemory

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    memory = ContrastMemory(dim, n_data, k, scoring=scoring).to(device, dtype)

    def unit() -> Tensor:
        v = torch.randn(batch_size, dim, generator=gen, dtype=dtype)
        return (v / v.norm(dim=1, keepdim=True)).to(device).requires_grad_()

    index = torch.randperm(n_data, generator=gen)[:batch_size]
    contrast_index = torch.randint(n_data, (batch_size, k + 1), generator=gen)
    contrast_index[:, 0] = index
    upstream = tuple(torch.randn(batch_size, k + 1, generator=gen, dtype=dtype).to(device) for _ in range(2))
    return MemoryScoringWorkload(
        memory, unit(), unit(), index.to(device), contrast_index.to(device), upstream, with_loss
    )


__all__ = [
    "CIFAR_TRAIN_SIZE",
    "CRD_DIM",
    "CRD_K",
    "CRD_N",
    "EMBEDDING_DIM",
    "HINT_SHAPE",
    "NUM_CLASSES",
    "LossWorkload",
    "MemoryScoringWorkload",
    "cifar_context",
    "crd_k_for",
    "crd_memory_bytes",
    "loss_workload",
    "memory_scoring_workload",
    "method_config",
]
