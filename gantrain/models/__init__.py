"""The networks: ``mlp`` (Goodfellow et al.), ``dcgan`` (Radford et al.), ``stylegan`` (Karras et al.)."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def sample(G: nn.Module, z: torch.Tensor, psi: float | None = None) -> torch.Tensor:
    """``G(z)`` with the noise inputs fixed where G has them (StyleGAN), so fixed latents give fixed images;
    ``psi``: truncation (models that support it)."""
    kwargs = {} if psi is None else {"psi": psi}
    if "noise_mode" in inspect.signature(G.forward).parameters:
        kwargs["noise_mode"] = "const"
    return G(z, **kwargs)
