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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums, over ranks, the gradient each rank's losses send to
    every part, and hands each rank the sum for its own part (the MMSelfSup GatherLayer pattern)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_cat(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_cat_with_grad(tensor: Tensor) -> Tensor:
    """Like :func:`all_gather_cat`, but the gradient flows back to every rank's part.

    With DDP's averaging of the parameter gradients, a step then equals that of one
    process over the global batch.
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def global_mean(tensor: Tensor) -> Tensor:
    """Mean over the elements of ``tensor`` on all ranks (sizes may differ); no gradient."""
    total = torch.stack([tensor.detach().sum(), torch.tensor(float(tensor.numel()), dtype=tensor.dtype, device=tensor.device)])
    if world_size() > 1:
        dist.all_reduce(total)
    return total[0] / total[1]


__all__ = ["world_size", "rank", "all_gather_cat", "all_gather_cat_with_grad", "global_mean"]
