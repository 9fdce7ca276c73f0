"""The networks: ``mlp`` (Goodfellow et al.), ``dcgan`` (Radford et al.), ``stylegan`` (Karras et al.);
``conditional``: their class-conditional versions (``model.conditional=true``)."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def sample(G: nn.Module, z: torch.Tensor, psi: float | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
    """``G(z)`` with the noise inputs fixed where G has them (StyleGAN), so fixed latents give fixed images;
    ``psi``: truncation (models that support it); ``c``: classes, for a conditional G (None: balanced)."""
    kwargs = {} if psi is None else {"psi": psi}
    if "noise_mode" in inspect.signature(G.forward).parameters:
        kwargs["noise_mode"] = "const"
    if c is not None:
        return G(z, c, **kwargs)
    return G(z, **kwargs)


BN_SEED = 0x5EED_B4


@torch.no_grad()
def recompute_batchnorm(G: nn.Module, batches: int = 8, batch_size: int = 256) -> bool:
    """Set G's BatchNorm running statistics to those of its own activations: ``batches`` batches of fixed
    latents (their own generator: the global random streams are untouched) through G in train mode, with
    the running averages made cumulative. For a generator EMA, whose averaged weights never ran forward in
    training, the statistics copied from the raw G do not fit. Returns whether G has BatchNorm layers."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return False
    was_training, momenta = G.training, [m.momentum for m in bns]
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(BN_SEED)
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    G.train()
    try:
        for _ in range(batches):
            G(torch.randn(batch_size, G.z_dim, generator=g).to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        G.train(was_training)
    return True
