"""StyleGAN generator and discriminator, with StyleGAN2's modulated/demodulated convolutions.
Modulation replaces AdaIN: it normalises the weights instead of the activations, which removes
AdaIN's droplet artefacts and keeps the statistics in float32 for stable bf16/fp16 training.

Generator (Karras et al. 2019/2020): an MLP mapping network z -> w (pixel-normalised z,
``mapping_layers`` equalised-lr layers with lr multiplier ``mapping_lr_mul``), a tracked
``w_avg`` for the truncation trick, style mixing regularisation in training mode, and a
synthesis network from a learned 4x4 constant: per resolution an upsampling 3x3 modulated
convolution and a second 3x3 modulated convolution (one convolution at 4x4, after the
constant), each followed by per-pixel noise with learned per-channel scales, bias and leaky
ReLU; every resolution has a toRGB layer and the RGB outputs are upsampled and summed (skip
architecture). ``num_ws = 2 * log2(resolution) - 2`` styles: block ``i`` uses ``ws[2i-1]``
(upsampling conv), ``ws[2i]`` (second conv) and ``ws[2i+1]`` (toRGB); the 4x4 block uses
``ws[0]`` and ``ws[1]``. The output has no tanh (as in StyleGAN2); it is trained towards the
data's [-1, 1] range.

Discriminator: StyleGAN2's residual design: fromRGB, per resolution two 3x3 convolutions (the
second halving the resolution) plus a 1x1 downsampling skip, then at 4x4 a minibatch
standard-deviation layer, a 3x3 convolution and two dense layers giving raw logits (N,).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gantrain.errors import UserError
from gantrain.models.layers import (
    EqualConv2d,
    EqualLinear,
    MinibatchStdDev,
    ModulatedConv2d,
    NoiseInjection,
    bias_act,
    pixel_norm,
    upsample2x,
)
from gantrain.torch_utils import eval_mode

__all__ = ["Discriminator", "Generator", "check_shape", "style_mixing_images", "truncation_strip"]


def check_shape(shape: Sequence[int]) -> tuple[int, int]:
    """Returns (channels, resolution) of a (C, H, W) image shape, or raises UserError."""
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or dims[1] != dims[2] or dims[1] < 32 or dims[1] & (dims[1] - 1):
        got = "x".join(map(str, dims[1:])) if len(dims) == 3 else f"data of shape {dims}"
        raise UserError(
            f"StyleGAN needs square power-of-two images of at least 32x32; got {got}; "
            "use an image data set with data.resolution=32, 64, 128, ... (28x28 MNIST is padded "
            "to 32x32 when model.pad_to_power_of_two=true).")
    if dims[0] not in (1, 3):
        raise UserError(
            f"StyleGAN needs 1-channel (grayscale) or 3-channel (RGB) images; got {dims[0]} channels; "
            "set data.channels=1 or data.channels=3.")
    return dims[0], dims[1]


def _channels(res: int, channel_base: int, max_channels: int) -> int:
    return max(1, min(channel_base // res, max_channels))


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) -> noise -> bias -> leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim, demodulate=True, up=up)
        self.noise = NoiseInjection(out_channels, resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.noise(self.conv(x, w), noise_mode)
        return bias_act(x, self.bias, 1.0, "lrelu")


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation, plus bias, no activation."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return bias_act(self.conv(x, w), self.bias, 1.0, None)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int):
        super().__init__()
        self.resolution = resolution
        self.is_first = resolution == 4
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution)
        self.torgb = ToRGB(out_channels, img_channels, w_dim)
        self.num_ws = 2 if self.is_first else 3    # the toRGB style is shared with the next block

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_first:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
            y = self.torgb(x, ws[:, 1])
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
            y = self.torgb(x, ws[:, 2])
        img = y if img is None else upsample2x(img).to(y.dtype) + y
        return x, img


class Generator(nn.Module):
    """StyleGAN generator: ``G(z)`` -> images (N, C, H, W); see the module docstring."""

    supports_truncation = True

    def __init__(self, shape, z_dim: int = 512, w_dim: int = 512, mapping_layers: int = 8,
                 mapping_lr_mul: float = 0.01, channel_base: int = 8192, max_channels: int = 512,
                 style_mixing_prob: float = 0.9, w_avg_beta: float = 0.995):
        super().__init__()
        self.img_channels, self.resolution = check_shape(shape)
        if mapping_layers < 1:
            raise UserError(f"StyleGAN's mapping network needs at least one layer; got mapping_layers={mapping_layers}.")
        if not 0.0 <= style_mixing_prob <= 1.0:
            raise UserError(f"style_mixing_prob={style_mixing_prob} is out of range: it must be between 0 and 1.")
        self.shape = (self.img_channels, self.resolution, self.resolution)
        self.z_dim = int(z_dim)
        self.w_dim = int(w_dim)
        self.style_mixing_prob = float(style_mixing_prob)
        self.w_avg_beta = float(w_avg_beta)

        self.mapping_net = nn.Sequential(*[
            EqualLinear(self.z_dim if i == 0 else self.w_dim, self.w_dim, lr_mul=mapping_lr_mul,
                        activation="lrelu")
            for i in range(mapping_layers)])
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

        log2 = int(math.log2(self.resolution))
        blocks = []
        in_ch = 0
        for res in (2 ** i for i in range(2, log2 + 1)):
            out_ch = _channels(res, channel_base, max_channels)
            blocks.append(SynthesisBlock(in_ch, out_ch, self.w_dim, res, self.img_channels))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = 2 * log2 - 2
        # the first ws index each block reads (a block's toRGB style is the next block's first)
        self.ws_starts = [sum(b.num_ws - 1 for b in blocks[:i]) for i in range(len(blocks))]

    # -- mapping ----------------------------------------------------------------------------
    def _map(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, z_dim) -> w (N, w_dim) in float32, without truncation or w_avg update.

        The mapping MLP is small, so it always runs in float32 (autocast off): w, w_avg and the
        truncation trick stay exact under bf16/fp16 training."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.mapping_net(pixel_norm(z, dim=1))

    def _truncate(self, ws: torch.Tensor, psi: float, truncation_cutoff: int | None) -> torch.Tensor:
        if psi == 1:
            return ws
        cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
        truncated = self.w_avg.lerp(ws[:, :cutoff], psi)
        return torch.cat([truncated, ws[:, cutoff:]], dim=1)

    def mapping(self, z: torch.Tensor, psi: float = 1.0, truncation_cutoff: int | None = None) -> torch.Tensor:
        """z (N, z_dim) -> ws (N, num_ws, w_dim); updates ``w_avg`` only in training mode.

        Truncation: ``w_avg + psi * (w - w_avg)`` on the first ``truncation_cutoff`` styles
        (all when None); psi=1 leaves w unchanged, psi=0 gives the average w.
        """
        w = self._map(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        return self._truncate(ws, psi, truncation_cutoff)

    def _style_mix(self, ws: torch.Tensor, z: torch.Tensor, psi: float,
                   truncation_cutoff: int | None) -> torch.Tensor:
        """Per sample, with probability style_mixing_prob, styles from a crossover layer drawn in
        [1, num_ws) on come from a second latent. No host synchronisation, no w_avg update."""
        n = ws.shape[0]
        ws2 = self._map(self._fresh_latent(z)).unsqueeze(1).repeat(1, self.num_ws, 1)
        ws2 = self._truncate(ws2, psi, truncation_cutoff)
        cutoff = torch.randint(1, self.num_ws, (n, 1), device=ws.device)
        mixed = torch.rand(n, 1, device=ws.device) < self.style_mixing_prob
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws))
        keep = torch.arange(self.num_ws, device=ws.device).unsqueeze(0) < cutoff     # (N, num_ws)
        return torch.where(keep.unsqueeze(2), ws, ws2)

    def _fresh_latent(self, z: torch.Tensor) -> torch.Tensor:
        """The second latent of style mixing (the conditional generator keeps the class)."""
        return torch.randn_like(z)

    # -- synthesis --------------------------------------------------------------------------
    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        """ws (N, num_ws, w_dim) -> images (N, C, H, W); noise_mode: random | const | none."""
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape (N, {self.num_ws}, {self.w_dim}); got {tuple(ws.shape)}")
        x = img = None
        for block, start in zip(self.blocks, self.ws_starts):
            x, img = block(x, img, ws[:, start:start + block.num_ws], noise_mode)
        return img

    def forward(self, z: torch.Tensor, psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random") -> torch.Tensor:
        ws = self.mapping(z, psi, truncation_cutoff)
        if self.training and self.style_mixing_prob > 0 and self.num_ws > 1:
            ws = self._style_mix(ws, z, psi, truncation_cutoff)
        return self.synthesis(ws, noise_mode)

    def style_layers(self):
        """The modulated convolutions in the order of the ws they read: (ws index, module)."""
        out = []
        for block, start in zip(self.blocks, self.ws_starts):
            layers = [block.conv1, block.torgb] if block.is_first else [block.conv0, block.conv1, block.torgb]
            out.extend((start + k, layer.conv) for k, layer in enumerate(layers))
        return out


class DiscriminatorBlock(nn.Module):
    """Residual: two 3x3 convs (the second halves the resolution) + a 1x1 downsampling skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation="lrelu", down=2)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator; ``D(x)`` -> raw logits of shape (N,)."""

    def __init__(self, shape, channel_base: int = 8192, max_channels: int = 512, mbstd_group: int = 4):
        super().__init__()
        self.img_channels, self.resolution = check_shape(shape)
        self.shape = (self.img_channels, self.resolution, self.resolution)
        ch = lambda res: _channels(res, channel_base, max_channels)
        log2 = int(math.log2(self.resolution))
        self.fromrgb = EqualConv2d(self.img_channels, ch(self.resolution), 1, activation="lrelu")
        self.blocks = nn.Sequential(*[DiscriminatorBlock(ch(2 ** i), ch(2 ** (i - 1)))
                                      for i in range(log2, 2, -1)])
        c4 = ch(4)
        self.mbstd = MinibatchStdDev(mbstd_group, num_channels=1)
        self.conv = EqualConv2d(c4 + 1, c4, 3, activation="lrelu")
        self.fc = EqualLinear(c4 * 16, c4, activation="lrelu")
        self.out = EqualLinear(c4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(x))
        x = self.conv(self.mbstd(x))
        x = self.out(self.fc(x.flatten(1)))
        return x.squeeze(1)


# -- sampling utilities ---------------------------------------------------------------------------

@torch.no_grad()
def style_mixing_images(G: Generator, z_rows: torch.Tensor, z_cols: torch.Tensor, crossover: int,
                        psi: float = 1.0) -> torch.Tensor:
    """The style-mixing figure of the StyleGAN paper, as a batch of images.

    Image ``(i, j)`` takes the coarse styles ``ws[:, :crossover]`` from ``z_rows[i]`` and the fine
    styles ``ws[:, crossover:]`` from ``z_cols[j]``; returns ``(len(z_rows) * len(z_cols), C, H,
    W)`` in row-major order. Noise is the fixed ('const') noise; ``G``'s mode is left unchanged
    and ``w_avg`` is not updated.
    """
    if not 0 <= crossover <= G.num_ws:
        raise ValueError(f"crossover must be in [0, {G.num_ws}]; got {crossover}")
    with eval_mode(G):
        ws_r = G.mapping(z_rows, psi)
        ws_c = G.mapping(z_cols, psi)
        r, c = ws_r.shape[0], ws_c.shape[0]
        ws = torch.cat([ws_r[:, None, :crossover].expand(r, c, -1, -1),
                        ws_c[None, :, crossover:].expand(r, c, -1, -1)], dim=2)
        return G.synthesis(ws.reshape(r * c, G.num_ws, -1), noise_mode="const")


@torch.no_grad()
def truncation_strip(G: Generator, z: torch.Tensor, psis: Sequence[float] = (1.0, 0.7, 0.5, 0.0)) -> torch.Tensor:
    """Each latent in ``z`` at every ``psi``: ``(len(z) * len(psis), C, H, W)``, row-major (one row
    per latent, one column per psi). Const noise; ``G``'s mode is restored, ``w_avg`` untouched."""
    with eval_mode(G):
        ws = G.mapping(z)
        rows = torch.stack([G._truncate(ws, float(p), None) for p in psis], dim=1)   # (N, P, num_ws, w_dim)
        return G.synthesis(rows.reshape(-1, G.num_ws, rows.shape[-1]), noise_mode="const")
