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
