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

    def __init__(self, shape: Sequence[int], z_dim: int = 64, hidden: Sequence[int] = (256, 512, 1024),
                 smooth: float = 0.0):
        super().__init__()
        self.shape = tuple(shape)
        self.z_dim = z_dim
        kernel = None
        if smooth > 0 and len(self.shape) == 1:  # curves: a fixed Gaussian low-pass of ``smooth`` points' sigma
            half = max(1, math.ceil(3 * smooth))
            t = torch.arange(-half, half + 1, dtype=torch.float32)
            kernel = torch.exp(-0.5 * (t / smooth) ** 2)
            kernel = (kernel / kernel.sum()).view(1, 1, -1)
        self.register_buffer("kernel", kernel, persistent=False)
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
        out = self.net(z)
        if self.kernel is not None:  # reflect padding: the ends are not pulled towards zero
            pad = self.kernel.shape[-1] // 2
            out = nn.functional.conv1d(nn.functional.pad(out.unsqueeze(1), (pad, pad), mode="reflect"),
                                       self.kernel).squeeze(1)
        return out.view(z.shape[0], *self.shape)


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
