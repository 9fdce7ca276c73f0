"""Building blocks with the equalised learning rate of Karras et al. (ProGAN / StyleGAN).

Every weight is stored as N(0, 1) / lr_mul and multiplied at run time by
``weight_gain = lr_mul / sqrt(fan_in)``: the He constant is applied in the forward pass, so
Adam's per-parameter step size means the same thing for every layer, and ``lr_mul`` scales the
effective learning rate of a layer (0.01 for StyleGAN's mapping network). Biases are stored
divided by ``lr_mul`` and multiplied by ``bias_gain = lr_mul``.

Numerics under ``torch.autocast``: the convolutions run in the autocast dtype, while the style
affines, the pixel norm, the demodulation coefficients and the minibatch standard deviation are
computed in float32 (the mapping network too: see stylegan.py). Activations are clamped to +-256 when they are float16 (as in
StyleGAN2-ADA's ``conv_clamp``), so fp16 cannot overflow to inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)   # keeps the activations' second moment after a leaky ReLU
FP16_CLAMP = 256.0


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float16:
        return x.clamp(-FP16_CLAMP, FP16_CLAMP)
    return x


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, bias_gain: float, activation: str | None,
             dim: int = 1) -> torch.Tensor:
    """Adds the (gain-scaled) bias along ``dim`` and applies ``activation`` ('lrelu' or None)."""
    if bias is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + (bias * bias_gain).to(x.dtype).reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")
    return _clamp_fp16(x)


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Normalises each vector along ``dim`` to unit root-mean-square, in float32."""
    x32 = x.float()
    return x32 * (x32.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate and an lr multiplier."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: str | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.lr_mul = lr_mul
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        if self.activation is None and self.bias is not None:
            return F.linear(x, w, self.bias * self.bias_gain)
        return bias_act(F.linear(x, w), self.bias, self.bias_gain, self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"lr_mul={self.lr_mul}, activation={self.activation}")


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Halves the resolution with a 2x2 box filter (anti-aliased, unlike strided sampling)."""
    return F.avg_pool2d(x, 2)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Doubles the resolution with bilinear interpolation (a [1,3,3,1] filter, as in StyleGAN2)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate; ``down=2`` box-filters then halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str | None = None, down: int = 1, lr_mul: float = 1.0):
        super().__init__()
        if down not in (1, 2):
            raise ValueError("down must be 1 or 2")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_channels * kernel_size * kernel_size)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down == 2:
            x = downsample2x(x)
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.kernel_size // 2)
        return bias_act(x, self.bias, self.bias_gain, self.activation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"down={self.down}, activation={self.activation}")


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: the style scales the input channels of the weight and
    (with ``demodulate``) each output channel is rescaled to unit expected variance.

    It is computed as ``conv(x * s, W) * d`` (StyleGAN2's non-fused form): one shared weight for
    the batch, so cuDNN, channels_last and autocast apply as for a plain convolution. ``s`` is
    divided by its largest magnitude per sample first; demodulation is invariant to that scale,
    so the result is unchanged while ``x * s`` cannot overflow in float16. The demodulation
    coefficients ``d = rsqrt(sum (W s)^2)`` are computed in float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int,
                 demodulate: bool = True, up: int = 1):
        super().__init__()
        if up not in (1, 2):
            raise ValueError("up must be 1 or 2")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.up = up
        # the style affine starts at 1 so that an untrained layer behaves like a plain convolution
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=w.device.type, enabled=False):
            styles = self.affine(w.float())                                # (N, Cin), float32
        weight = self.weight.float() * self.weight_gain                    # (Cout, Cin, k, k)
        if self.demodulate:
            styles = styles / styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
            wsq = weight.square().sum(dim=(2, 3))                          # (Cout, Cin)
            dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()            # (N, Cout), float32
        if self.up == 2:
            x = upsample2x(x)
        dtype = x.dtype
        x = x * styles.to(dtype)[:, :, None, None]
        x = F.conv2d(x, weight.to(dtype), padding=self.kernel_size // 2)
        if self.demodulate:
            x = x * dcoefs.to(x.dtype)[:, :, None, None]
        return _clamp_fp16(x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"up={self.up}, demodulate={self.demodulate}")


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise with a learned per-channel scale (zero at initialisation).

    ``noise_mode``: 'random' draws fresh noise, 'const' uses a fixed buffer (reproducible
    samples), 'none' adds nothing.
    """

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(channels))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        else:
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', not {noise_mode!r}")
        return x + noise * self.strength.to(x.dtype)[None, :, None, None]


class MinibatchStdDev(nn.Module):
    """Appends the average over features of the per-group standard deviation (ProGAN).

    The batch is split into groups of ``group_size`` (or the largest divisor of the batch size
    that is not larger); the statistic is computed in float32.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = max(1, min(self.group_size, n))
        while n % g:
            g -= 1
        f = self.num_channels
        y = x.float().reshape(g, -1, f, c // f, h, w)      # (G, M, F, C/F, H, W)
        y = y - y.mean(dim=0)
        y = (y.square().mean(dim=0) + 1e-8).sqrt()          # (M, F, C/F, H, W)
        y = y.mean(dim=(2, 3, 4))                            # (M, F)
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)        # (N, F, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
