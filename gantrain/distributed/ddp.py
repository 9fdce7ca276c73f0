"""The models of the loop under ``DistributedDataParallel``, and building things on rank 0 first.

G and D are wrapped in ``DistributedDataParallel`` for the passes that train them (:func:`training_views`),
and the plain modules are used for everything else (``G(z)`` under ``no_grad`` in the D step, the frozen D in
the G step, R1, EMA, checkpoints, samples). So a D forward in the G step never involves D's DDP reducer (no
unused-parameter hang, no gradient into the frozen network), and the R1 term's gradients, which reach D's
parameters in the same backward as the D loss, are averaged over the ranks with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from gantrain.distributed.collectives import broadcast_module, broadcast_object, is_main, rank, world_size
from gantrain.errors import UserError


def prepare_models(G: torch.nn.Module, D: torch.nn.Module, sync_batchnorm: bool, device: torch.device):
    """Before the EMA copy and the optimisers: BatchNorm -> SyncBatchNorm if asked, rank 0's initial weights."""
    if world_size() == 1:
        return G, D
    if sync_batchnorm:
        if device.type != "cuda":
            raise UserError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                            "kernel): use trainer.sync_batchnorm=false on the CPU.")
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D)
    broadcast_module(G)
    broadcast_module(D)
    return G, D


def training_views(G: torch.nn.Module, D: torch.nn.Module, device: torch.device, compile: bool = False):
    """``(G_run, D_run, G_learn, D_learn)``: the plain (optionally compiled) networks, and the ones to train.

    * ``G_learn(z)`` in the G step and ``D_learn(x)`` in the D step: ``DistributedDataParallel`` wrappers,
      whose backward averages the gradients over the ranks;
    * ``G_run(z)`` under ``no_grad`` in the D step and ``D_run(x)`` with D frozen in the G step: the plain
      modules, so neither wakes a DDP reducer that would wait for gradients that never come.

    Buffers are not broadcast at every forward (``broadcast_buffers=False``): with plain BatchNorm each rank
    keeps the running statistics of its own shard (rank 0's are saved; evaluation uses rank 0's), and
    ``trainer.sync_batchnorm=true`` makes them global.
    """
    G_run, D_run = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    if not (dist.is_available() and dist.is_initialized()):  # a group of one rank still trains through DDP
        return G_run, D_run, G_run, D_run
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # no buffer broadcast at each forward (the keyword was renamed in newer PyTorch)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    G_learn = DDP(G, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
    D_learn = DDP(D, device_ids=ids, gradient_as_bucket_view=True, **no_sync)
    if compile:
        G_learn, D_learn = torch.compile(G_learn), torch.compile(D_learn)
    return G_run, D_run, G_learn, D_learn


def build_everywhere(build: Callable[..., Any], *args, **kwargs):
    """``build(*args)`` on rank 0 first (it may fill on-disk caches), then on the other ranks.

    When rank 0's build fails with a UserError, the others raise the same error instead of waiting."""
    if world_size() == 1:
        return build(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = build(*args, **kwargs)
        except UserError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        if is_main():
            raise UserError(error)
        raise UserError(f"(rank {rank()}) {error}")
    if not is_main():
        result = build(*args, **kwargs)
    return result
