"""The original GAN of Goodfellow et al. (2014): fully connected generator and discriminator.

Works on any sample shape: images (C, H, W) are flattened, curves (L,) are used as they are.
The generator ends in tanh for images (data in [-1, 1]) and is linear for curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gantrain.errors import UserError
from gantrain.models.layers import MinibatchStdDev


class Generator(nn.Module):
    """``batch_norm``: BatchNorm1d after every hidden linear layer but the first (as the PyTorch-GAN script)."""

    supports_truncation = False

    def __init__(self, shape: Sequence[int], z_dim: int = 64, hidden: Sequence[int] = (256, 512, 1024),
                 smooth: float = 0.0, batch_norm: bool = False):
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
        for i, h in enumerate(hidden):
            layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm and i > 0 else []), nn.LeakyReLU(0.2)]
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
    torch's parametrization; one power iteration per training-mode forward, its vectors are buffers).
    ``mbstd``: groups of that many samples (strided, as ProGAN's); before the output layer each sample gets one
    more feature, its group's standard deviation averaged over the features (minibatch-stddev; 0 = off).
    ``pack``: PacGAN (Lin et al. 2018): D scores ``pack`` samples at once, concatenated, so a batch of N gives
    N / pack outputs (N must be divisible; 1 = off)."""

    def __init__(self, shape: Sequence[int], hidden: Sequence[int] = (1024, 512, 256), dropout: float = 0.3,
                 spectral_norm: bool = False, mbstd: int = 0, pack: int = 1):
        super().__init__()
        if int(pack) < 1 or int(mbstd) < 0:
            raise UserError(f"model.discriminator.pack must be >= 1 and mbstd >= 0; got pack={pack}, mbstd={mbstd}.")
        self.pack = int(pack)
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape) * self.pack
        for h in hidden:
            layers += [sn(nn.Linear(width, h)), nn.LeakyReLU(0.2)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.mbstd = MinibatchStdDev(int(mbstd)) if mbstd else None
        layers.append(sn(nn.Linear(width + (1 if mbstd else 0), 1)))
        self.net = nn.Sequential(*layers)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        if self.pack == 1:
            return x
        if x.shape[0] % self.pack:
            raise UserError(f"model.discriminator.pack={self.pack} needs batches divisible by it, got one of "
                            f"{x.shape[0]}: choose a data.batch_size (per micro-batch) that {self.pack} divides.")
        return x.reshape(x.shape[0] // self.pack, -1)

    def features_and_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net[:-1](self._packed(x))
        if self.mbstd is not None:
            h = self.mbstd(h[:, :, None, None]).flatten(1)
        return h, self.net[-1](h).view(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_head(x)[1]
