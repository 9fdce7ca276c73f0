"""The original GAN of Goodfellow et al. (2014): fully connected generator and discriminator.

Works on any sample shape: images (C, H, W) are flattened, curves (L,) are used as they are.
The generator ends in tanh for images (data in [-1, 1]) and is linear for curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Generator(nn.Module):
    supports_truncation = False

    def __init__(self, shape: Sequence[int], z_dim: int = 64, hidden: Sequence[int] = (256, 512, 1024)):
        super().__init__()
        self.shape = tuple(shape)
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        width = z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, math.prod(self.shape)))
        if len(self.shape) == 3:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    """``spectral_norm``: every linear layer's weight divided by its largest singular value (Miyato et al. 2018,
    torch's parametrization; one power iteration per training-mode forward, its vectors are buffers)."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (1024, 512, 256), dropout: float = 0.3,
                 spectral_norm: bool = False):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for h in hidden:
            layers += [sn(nn.Linear(width, h)), nn.LeakyReLU(0.2)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(sn(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
