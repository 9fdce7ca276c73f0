"""This rank and the world, and the collectives the loop uses (broadcast, gather, all-reduce, agreeing to
stop). Each is a no-op, or the obvious answer, when there is no process group or it has one rank."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def comm_device() -> torch.device:
    """Where tensors of a collective live: the current GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj):
    """rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_object(obj) -> list | None:
    """``[rank 0's obj, rank 1's obj, ...]`` on rank 0, None on the others (every rank must call it)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (the same shape on all ranks), concatenated in rank order, on every rank."""
    t = t.contiguous().to(comm_device())
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, ...) on every rank."""
    if world_size() == 1:
        return
    for b in module.buffers():
        t = b.to(comm_device())
        dist.broadcast(t, src=0)
        b.copy_(t)


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (every rank seeds its own, different, initialisation)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for p in module.parameters():
            t = p.detach().to(comm_device())
            dist.broadcast(t, src=0)
            p.copy_(t)
        broadcast_buffers(module)


def agree_to_stop(stop: list[int], step: int, every: int) -> bool:
    """Whether training stops now, the same answer on every rank.

    ``stop`` holds the signals this rank received. With one rank that is the answer; with several, the ranks
    compare at every ``every``-th step (a rank leaving the loop alone would leave the others waiting in the
    next all-reduce), and a rank that had no signal of its own is given the others' so it stops as they do.
    """
    if world_size() == 1:
        return bool(stop)
    if step % every:
        return False
    flag = torch.tensor([stop[0] if stop else 0], dtype=torch.int64, device=comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    signum = int(flag.item())  # one read, at log steps only
    if signum and not stop:
        stop.append(signum)
    return bool(signum)
