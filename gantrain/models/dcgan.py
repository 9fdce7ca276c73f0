"""DCGAN (Radford et al. 2015), sized from the data's shape.

The rules from the paper: strided convolutions in D and transposed convolutions in G (no pooling,
no fully connected hidden layers), BatchNorm everywhere except at G's output and D's input, ReLU in G
with a tanh output, LeakyReLU(0.2) in D, weights initialised from N(0, 0.02).
Image sides: 4·2^k (8, 16, 32, 64, 128, ...) or 7·2^k (28 for MNIST); 1 or 3 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gantrain.errors import UserError


def _plan(shape: Sequence[int]) -> tuple[int, int]:
    """(start side, number of 2x up/down-samplings) for an image shape, or a UserError."""
    if len(shape) != 3:
        raise UserError(f"model=dcgan needs images, but the data gives samples of shape {tuple(shape)} "
                        "(1-D curves): use model=gan for sine data.")
    c, h, w = shape
    if h != w:
        raise UserError(f"model=dcgan needs square images, got {h}x{w}: set data.resolution to a square size.")
    for start in (4, 7):
        n, side = 0, h
        while side > start and side % 2 == 0:
            side //= 2
            n += 1
        if side == start and n >= 1:
            return start, n
    raise UserError(f"model=dcgan cannot build {h}x{w} images: use a side of 4·2^k (16, 32, 64, 128, ...) "
                    "or 28, e.g. data.resolution=64.")


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    supports_truncation = False

    def __init__(self, shape: Sequence[int], z_dim: int = 100, base_channels: int = 64, max_channels: int = 512):
        super().__init__()
        start, n_up = _plan(shape)
        self.shape, self.z_dim = tuple(shape), z_dim
        ch = [min(max_channels, base_channels * 2 ** (n_up - 1 - i)) for i in range(n_up)]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch[0], start, 1, 0, bias=False), nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for i in range(n_up - 1):
            layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(ch[i + 1]),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[n_up - 1], shape[0], 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    """``spectral_norm``: every convolution's weight divided by its largest singular value (Miyato et al. 2018,
    torch's parametrization; its power-iteration vectors are buffers). ``batch_norm``: null means BatchNorm
    unless spectral_norm is on (SNGAN's D has none: SN replaces it); false is also what WGAN-GP needs."""

    def __init__(self, shape: Sequence[int], base_channels: int = 64, max_channels: int = 512,
                 dropout: float = 0.0, spectral_norm: bool = False, batch_norm: bool | None = None):
        super().__init__()
        start, n_down = _plan(shape)
        bn = not spectral_norm if batch_norm is None else batch_norm
        ch = [min(max_channels, base_channels * 2 ** i) for i in range(n_down)]
        layers: list[nn.Module] = [nn.Conv2d(shape[0], ch[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for i in range(1, n_down):
            layers += [nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=not bn), *([nn.BatchNorm2d(ch[i])] if bn else []),
                       nn.LeakyReLU(0.2, True)]
            if dropout > 0:
                layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(ch[-1], 1, start, 1, 0))
        self.net = nn.Sequential(*layers)
        self.apply(_init)  # before the parametrization: it initialises the stored weights
        if spectral_norm:
            for m in self.net:
                if isinstance(m, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)
