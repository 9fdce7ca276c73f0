"""The hand-written loops gantrain must beat, as people write them, fed by torchvision datasets.

* :func:`mlp_gan`: the MLP GAN of the common PyTorch-GAN script (eriklindernoren/PyTorch-GAN ``gan.py``):
  G ``z(100) -> 128 -> 256 -> 512 -> 1024 -> out`` with BatchNorm(eps=0.8) from the second layer and
  LeakyReLU(0.2), tanh output for images (linear for curves); D ``in -> 512 -> 256 -> 1`` with a sigmoid;
  Adam 2e-4, betas (0.5, 0.999), ``nn.BCELoss``, one D step per G step.
* :func:`dcgan`: the pytorch/examples DCGAN loop (``dcgan/main.py``): its G and D (BatchNorm, ReLU/LeakyReLU,
  N(0, 0.02) init) for a 28x28 or 32x32 side, z(100), ngf = ndf = 64, Adam 2e-4 / (0.5, 0.999), BCE, D on the
  real batch and on the fake batch in two passes, no EMA.

Both count generator steps and loop over the DataLoader's epochs until ``steps``; they return G in eval mode
(with a ``z_dim`` attribute) for gantrain's metrics to score.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader

Z_DIM = 100


# ================================================================================================ MLP GAN
class MLPGenerator(nn.Module):
    def __init__(self, shape: tuple[int, ...], z_dim: int = Z_DIM):
        super().__init__()
        self.shape, self.z_dim = tuple(shape), z_dim

        def block(i, o, normalize=True):
            layers = [nn.Linear(i, o)]
            if normalize:
                layers.append(nn.BatchNorm1d(o, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(*block(z_dim, 128, normalize=False), *block(128, 256), *block(256, 512),
                                   *block(512, 1024), nn.Linear(1024, math.prod(shape)),
                                   *([nn.Tanh()] if len(shape) == 3 else []))

    def forward(self, z):
        return self.model(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(math.prod(shape), 512), nn.LeakyReLU(0.2, inplace=True),
                                   nn.Linear(512, 256), nn.LeakyReLU(0.2, inplace=True), nn.Linear(256, 1),
                                   nn.Sigmoid())

    def forward(self, x):
        return self.model(x.view(x.shape[0], -1))


# ================================================================================================== DCGAN
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGenerator(nn.Module):
    """pytorch/examples' netG for a side of 28 (7 -> 14 -> 28) or 32 (4 -> 8 -> 16 -> 32)."""

    def __init__(self, nc: int, side: int, nz: int = Z_DIM, ngf: int = 64):
        super().__init__()
        self.z_dim = nz
        if side == 28:
            layers = [nn.ConvTranspose2d(nz, ngf * 2, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True)]
            mult = [2, 1]
        else:
            layers = [nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True)]
            mult = [4, 2, 1]
        for a, b in zip(mult, mult[1:]):
            layers += [nn.ConvTranspose2d(ngf * a, ngf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * b),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z):
        return self.main(z.view(z.shape[0], self.z_dim, 1, 1))


class DCDiscriminator(nn.Module):
    def __init__(self, nc: int, side: int, ndf: int = 64):
        super().__init__()
        mult = [1, 2] if side == 28 else [1, 2, 4]
        layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(mult, mult[1:]):
            layers += [nn.Conv2d(ndf * a, ndf * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * b),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(ndf * mult[-1], 1, 7 if side == 28 else 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        return self.main(x).view(-1, 1)


# =================================================================================================== loop
def train_loop(netG: nn.Module, netD: nn.Module, loader: DataLoader, steps: int) -> nn.Module:
    """The textbook loop: per batch, D on real (label 1) then on G(z).detach() (label 0), then G with the
    fakes labelled real; ``steps`` generator steps."""
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    step = 0
    while step < steps:
        for batch in loader:
            real = batch[0] if isinstance(batch, (list, tuple)) else batch
            b = real.shape[0]
            # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
            netD.zero_grad()
            errD_real = criterion(netD(real).view(-1), torch.ones(b))
            errD_real.backward()
            fake = netG(torch.randn(b, netG.z_dim))
            errD_fake = criterion(netD(fake.detach()).view(-1), torch.zeros(b))
            errD_fake.backward()
            optD.step()
            # (2) update G: maximize log(D(G(z)))
            netG.zero_grad()
            errG = criterion(netD(fake).view(-1), torch.ones(b))
            errG.backward()
            optG.step()
            step += 1
            if step >= steps:
                break
    return netG.eval().requires_grad_(False)


def mlp_gan(loader: DataLoader, shape: tuple[int, ...], steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return train_loop(MLPGenerator(shape), MLPDiscriminator(shape), loader, steps)


def dcgan(loader: DataLoader, shape: tuple[int, ...], steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    netG, netD = DCGenerator(shape[0], shape[-1]), DCDiscriminator(shape[0], shape[-1])
    netG.apply(weights_init)
    netD.apply(weights_init)
    return train_loop(netG, netD, loader, steps)


def loader_for(kind: str, root: str, batch_size: int, seed: int, curves: torch.Tensor | None = None) -> DataLoader:
    """The torchvision dataset and DataLoader a script would use: MNIST (IDX files), ImageFolder (PNGs), or a
    TensorDataset of curves; shuffled, dropping the last partial batch (BatchNorm needs more than one)."""
    from torchvision import datasets, transforms

    if kind == "curve":
        ds = torch.utils.data.TensorDataset(curves)
    elif kind == "mnist":
        ds = datasets.MNIST(root, train=True, download=False,
                            transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5], [0.5])]))
    else:
        ds = datasets.ImageFolder(root, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]))
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0,
                      generator=torch.Generator().manual_seed(seed))
