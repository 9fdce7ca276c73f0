"""Small torch plumbing that several stages need: a private random stream, eval mode for a while, and the
[-1, 1] <-> uint8 image conversions. Imports nothing of gantrain's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def isolated_rng(device: torch.device | str | None = None) -> Iterator[None]:
    """Random draws inside do not move the caller's streams: torch's CPU generator and, on a CUDA ``device``,
    that GPU's (``torch.random.fork_rng``)."""
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        yield


@contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``net`` in eval mode inside, its own train/eval mode restored after (also on an error)."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any float dtype, any layout) -> uint8 in [0, 255], rounded, same shape and device."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1], same shape and device."""
    return images.float().div_(127.5).sub_(1.0)
