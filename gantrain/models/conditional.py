"""Class-conditional versions of the three models (``model.conditional=true``): ``G(z, c)`` and ``D(x, c)``.

Generators take a learned class embedding:

* MLP GAN: the embedding of ``c`` is concatenated to ``z`` before the first layer (Mirza & Osindero 2014);
* DCGAN: conditional BatchNorm: every BatchNorm of G normalises without its own affine and applies a
  class-dependent gain and bias (de Vries et al. 2017; Miyato & Koyama 2018), plus a class embedding
  concatenated to z (``embed_dim``, measured: cBN alone learns the classes far more slowly);
* StyleGAN: the embedding is pixel-normalised and concatenated to the pixel-normalised ``z`` before the
  mapping network, as stylegan2-ada does; ``w_avg`` (truncation's centre) stays one average over all
  classes, also as stylegan2-ada does; style mixing keeps the class (the second latent has the same ``c``).

Discriminators are projection discriminators (Miyato & Koyama 2018): ``D(x, c) = psi(phi(x)) +
<embed(c), phi(x)>``, with ``phi`` the unconditional D up to its last layer and ``psi`` that last
layer. The embedding is spectrally normalised when the D is (as in the paper); StyleGAN's inner product
is divided by sqrt(features) (stylegan2-ada's cmap normalisation).

``c`` is an int64 tensor of class indices. ``c=None`` means the classes 0, 1, ..., K-1 in turn (a
balanced set, no random numbers drawn), so code that knows nothing of classes -- the metrics, export,
the benchmark -- still gets every class equally.

Models know nothing of files: ``conditional_node`` swaps a config node's ``_target_`` to the class here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gantrain.errors import UserError
from gantrain.models import dcgan, mlp, stylegan
from gantrain.models.layers import pixel_norm


def balanced_labels(n: int, num_classes: int, device) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ... (``n`` of them)."""
    return torch.arange(n, device=device) % num_classes


def _labels(c: torch.Tensor | None, n: int, num_classes: int, device) -> torch.Tensor:
    return balanced_labels(n, num_classes, device) if c is None else c


def _embedding(num_classes: int, dim: int, spectral_norm: bool = False) -> nn.Module:
    e = nn.Embedding(num_classes, dim)
    nn.init.normal_(e.weight, 0.0, 1.0 / math.sqrt(dim) if spectral_norm else 0.02)
    return nn.utils.parametrizations.spectral_norm(e) if spectral_norm else e


# ------------------------------------------------------------------------------------ generators
class MLPGenerator(mlp.Generator):
    def __init__(self, shape: Sequence[int], num_classes: int, z_dim: int = 64,
                 hidden: Sequence[int] = (256, 512, 1024), embed_dim: int | None = None, smooth: float = 0.0,
                 batch_norm: bool = False):
        e = int(embed_dim or min(z_dim, 64))
        super().__init__(shape, z_dim=z_dim + e, hidden=hidden, smooth=smooth, batch_norm=batch_norm)
        self.z_dim, self.num_classes = z_dim, int(num_classes)
        self.embed = nn.Embedding(self.num_classes, e)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = _labels(c, z.shape[0], self.num_classes, z.device)
        return super().forward(torch.cat([z, self.embed(c).to(z.dtype)], dim=1))


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine, then a per-class gain (init N(1, 0.02), as DCGAN's) and bias (init 0)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(c)[:, :, None, None] + self.bias(c)[:, :, None, None]


class DCGANGenerator(dcgan.Generator):
    """Conditional BatchNorm, and (``embed_dim`` > 0, the default 32) a class embedding of that size
    concatenated to z: with cBN alone the class barely steered G at short budgets (docs/QUALITY.md,
    class_accuracy 0.12 vs 0.75 after 400 steps on rendered digits); ``embed_dim=0``: cBN only."""

    def __init__(self, shape: Sequence[int], num_classes: int, z_dim: int = 100, base_channels: int = 64,
                 max_channels: int = 512, embed_dim: int = 32):
        super().__init__(shape, z_dim=z_dim + int(embed_dim), base_channels=base_channels, max_channels=max_channels)
        self.z_dim, self.num_classes, self.embed_dim = z_dim, int(num_classes), int(embed_dim)
        if self.embed_dim:
            self.embed = nn.Embedding(self.num_classes, self.embed_dim)
        for i, m in enumerate(self.net):
            if isinstance(m, nn.BatchNorm2d):
                self.net[i] = ConditionalBatchNorm2d(m.num_features, self.num_classes)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = _labels(c, z.shape[0], self.num_classes, z.device)
        if self.embed_dim:
            z = torch.cat([z, self.embed(c).to(z.dtype)], dim=1)
        x = z.view(z.shape[0], self.z_dim + self.embed_dim, 1, 1)
        for m in self.net:
            x = m(x, c) if isinstance(m, ConditionalBatchNorm2d) else m(x)
        return x


class StyleGANGenerator(stylegan.Generator):
    """The mapping network reads ``[pixel_norm(z), pixel_norm(embed(c))]``; internally ``zc`` carries both."""

    def __init__(self, shape, num_classes: int, z_dim: int = 512, w_dim: int = 512, embed_dim: int | None = None,
                 **kw):
        e = int(embed_dim or w_dim)
        super().__init__(shape, z_dim=z_dim + e, w_dim=w_dim, **kw)
        self.z_dim, self.embed_dim, self.num_classes = int(z_dim), e, int(num_classes)
        self.embed = nn.Embedding(self.num_classes, e)
        nn.init.normal_(self.embed.weight)

    def condition(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """z (N, z_dim) and classes -> zc (N, z_dim + embed_dim), what ``mapping`` of this class reads."""
        c = _labels(c, z.shape[0], self.num_classes, z.device)
        return torch.cat([z, pixel_norm(self.embed(c).float(), dim=1).to(z.dtype)], dim=1)

    def _map(self, zc: torch.Tensor) -> torch.Tensor:
        z, e = zc.split([self.z_dim, self.embed_dim], dim=1)
        with torch.autocast(device_type=zc.device.type, enabled=False):
            return self.mapping_net(torch.cat([pixel_norm(z.float(), dim=1), e.float()], dim=1))

    def _fresh_latent(self, zc: torch.Tensor) -> torch.Tensor:   # style mixing: a new z, the same class
        return torch.cat([torch.randn_like(zc[:, :self.z_dim]), zc[:, self.z_dim:]], dim=1)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "random") -> torch.Tensor:
        if z.shape[1] == self.z_dim:
            z = self.condition(z, c)
        return super().forward(z, psi=psi, truncation_cutoff=truncation_cutoff, noise_mode=noise_mode)

    def mapping(self, z: torch.Tensor, psi: float = 1.0, truncation_cutoff: int | None = None) -> torch.Tensor:
        if z.shape[1] == self.z_dim:        # plain latents (the figures): the balanced classes
            z = self.condition(z, None)
        return super().mapping(z, psi, truncation_cutoff)


# -------------------------------------------------------------------------------- discriminators
class _Projection:
    """Mixin: ``forward(x, c) = head(h) + scale * <embed(c), h>`` with ``h = features(x)`` (N, F)."""

    num_classes: int
    proj_scale: float = 1.0

    def _init_projection(self, num_classes: int, features: int, spectral_norm: bool) -> None:
        self.num_classes = int(num_classes)
        self.embed = _embedding(self.num_classes, features, spectral_norm)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        c = _labels(c, x.shape[0], self.num_classes, x.device)
        h, out = self.features_and_head(x)
        proj = (self.embed(c).to(h.dtype) * h.flatten(1)).sum(dim=1)
        return out + proj * self.proj_scale


class MLPDiscriminator(_Projection, mlp.Discriminator):
    def __init__(self, shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (1024, 512, 256),
                 dropout: float = 0.3, spectral_norm: bool = False, mbstd: int = 0, pack: int = 1):
        if int(pack) != 1:
            raise UserError(f"model.discriminator.pack={pack} (PacGAN) scores several samples at once, which a "
                            "class-conditional D cannot: leave pack=1 with model.conditional=true.")
        super().__init__(shape, hidden=hidden, dropout=dropout, spectral_norm=spectral_norm, mbstd=mbstd)
        self._init_projection(num_classes, self.net[-1].in_features, spectral_norm)


class DCGANDiscriminator(_Projection, dcgan.Discriminator):
    def __init__(self, shape: Sequence[int], num_classes: int, base_channels: int = 64, max_channels: int = 512,
                 dropout: float = 0.0, spectral_norm: bool = False, batch_norm: bool | None = None):
        super().__init__(shape, base_channels=base_channels, max_channels=max_channels, dropout=dropout,
                         spectral_norm=spectral_norm, batch_norm=batch_norm)
        last = self.net[-1]
        k = last.kernel_size[0]
        self._init_projection(num_classes, last.in_channels * k * k, spectral_norm)

    def features_and_head(self, x):
        h = self.net[:-1](x)
        return h, self.net[-1](h).view(-1)


class StyleGANDiscriminator(_Projection, stylegan.Discriminator):
    def __init__(self, shape, num_classes: int, channel_base: int = 8192, max_channels: int = 512,
                 mbstd_group: int = 4):
        super().__init__(shape, channel_base=channel_base, max_channels=max_channels, mbstd_group=mbstd_group)
        features = self.out.weight.shape[1]
        self._init_projection(num_classes, features, False)
        nn.init.normal_(self.embed.weight)
        self.proj_scale = 1.0 / math.sqrt(features)

    def features_and_head(self, x):
        x = self.blocks(self.fromrgb(x))
        h = self.fc(self.conv(self.mbstd(x)).flatten(1))
        return h, self.out(h).squeeze(1)


CONDITIONAL = {
    "gantrain.models.mlp.Generator": MLPGenerator,
    "gantrain.models.mlp.Discriminator": MLPDiscriminator,
    "gantrain.models.dcgan.Generator": DCGANGenerator,
    "gantrain.models.dcgan.Discriminator": DCGANDiscriminator,
    "gantrain.models.stylegan.Generator": StyleGANGenerator,
    "gantrain.models.stylegan.Discriminator": StyleGANDiscriminator,
}


def conditional_node(node, num_classes: int) -> dict:
    """A model config node (DictConfig or dict) as a plain dict naming the conditional class of its
    ``_target_``, with ``num_classes`` set. Unknown targets raise ValueError."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = plain.get("_target_")
    cls = CONDITIONAL.get(target)
    if cls is None:
        raise ValueError(f"{target} has no class-conditional version (model.conditional=true)")
    return {**plain, "_target_": f"{cls.__module__}.{cls.__name__}", "num_classes": int(num_classes)}
