"""What a loss needs to know about torch.distributed: is it on, and the global batch.

Pure torch; every function falls back to the single-process answer when no process group
is initialised, so the losses run unchanged outside DDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over ranks, in rank order; no gradient."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def row_counts(rows: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's row count, in rank order, when this rank holds ``rows`` rows."""
    if world_size() == 1:
        return [rows]
    count = torch.tensor([rows], dtype=torch.int64, device=device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def all_gather_rows(tensor: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate ``tensor`` over ranks, in rank order, when ranks may hold different numbers of
    rows (detection: the RoIs of each process); no gradient. ``sizes``: :func:`row_counts`, if known.

    ``all_gather`` needs one shape on every rank: the row counts are gathered first, each rank
    pads its rows to the largest count, and the padding is cut away after the gather.
    """
    if world_size() == 1:
        return tensor
    sizes = sizes if sizes is not None else row_counts(tensor.shape[0], tensor.device)
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums, over ranks, the gradient each rank's losses send to
    every part, and hands each rank the sum for its own part (the MMSelfSup GatherLayer pattern).
    Ranks may hold different numbers of rows; a rank's part starts after all earlier ranks' rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int]) -> Tensor:
        ctx.start, ctx.rows = sum(sizes[: rank()]), tensor.shape[0]
        return all_gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()  # the same (all rows, ...) shape on every rank
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.rows], None


def all_gather_rows_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """Like :func:`all_gather_rows`, but the gradient flows back to every rank's part; also
    returns where this rank's rows start in the result (the rows of all earlier ranks).

    With DDP's averaging of the parameter gradients, a step then equals that of one
    process over the global batch (for losses summed over rows and scaled as one process's mean).
    """
    if world_size() == 1:
        return tensor, 0
    sizes = row_counts(tensor.shape[0], tensor.device)
    return _GatherWithGrad.apply(tensor, sizes), sum(sizes[: rank()])


def all_gather_cat_with_grad(tensor: Tensor) -> Tensor:
    """:func:`all_gather_rows_with_grad` without the offset."""
    return all_gather_rows_with_grad(tensor)[0]


def global_mean(tensor: Tensor) -> Tensor:
    """Mean over the elements of ``tensor`` on all ranks (sizes may differ); no gradient."""
    total = torch.stack(
        [tensor.detach().sum(), torch.tensor(float(tensor.numel()), dtype=tensor.dtype, device=tensor.device)]
    )
    if world_size() > 1:
        dist.all_reduce(total)
    return total[0] / total[1]


__all__ = [
    "world_size",
    "rank",
    "all_gather_cat",
    "all_gather_rows",
    "all_gather_rows_with_grad",
    "all_gather_cat_with_grad",
    "row_counts",
    "global_mean",
]
