"""The sample-quality evaluation shared by the ranks: :class:`RankShards` is the process group as the
Evaluator's ``Shards`` (gantrain.metrics.evaluator) needs it; the Evaluator does the splitting itself."""

from __future__ import annotations

from typing import Any

import torch

from gantrain.distributed.collectives import (
    all_gather_cat,
    broadcast_buffers,
    broadcast_object,
    rank,
    world_size,
)


class RankShards:
    """This rank and the world, with the two collectives an evaluation shared by the ranks uses."""

    def __init__(self) -> None:
        self.rank, self.world = rank(), world_size()

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return all_gather_cat(t)

    def broadcast(self, obj: Any) -> Any:
        return broadcast_object(obj)


@torch.no_grad()
def evaluate(evaluator, net: torch.nn.Module, step: int, tb) -> dict[str, float]:
    """``evaluator.log(net, step, tb)`` with the work shared by the ranks.

    Each rank generates and featurises its share of the fixed latents (``num_samples / world`` of them, at its
    offset, so the samples are the ones a single process would draw); rank 0 gathers the features, computes
    the statistics and writes them; every rank gets the scores (``evaluator.last``)."""
    if world_size() == 1:
        return evaluator.log(net, step, tb)
    if evaluator.names:
        broadcast_buffers(net)  # BatchNorm running statistics: rank 0's, as in its checkpoints
    return evaluator.log(net, step, tb, shards=RankShards())
