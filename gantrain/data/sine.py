"""Built-in sine curves: ``y = A*sin(pi*x + phi) + eps`` at ``num_points`` evenly spaced x in [-1, 1].

``A ~ U(amplitude)``, ``phi ~ U(phase)``, ``eps ~ N(0, noise^2)`` independently per point. The set of
``size`` curves is drawn once from the fixed :data:`DATA_SEED`, so every run (whatever its seed) trains
on the same data; the run seed only changes the order of the batches.
"""

from __future__ import annotations

import math

import torch

from gantrain.data.base import TensorDataset
from gantrain.errors import UserError

DATA_SEED = 20_240_601


def _get(cfg, key):
    """``data.KEY``; its default is in conf/data/sine.yaml (the one place), so an unset one is refused."""
    value = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    if value is None:
        raise UserError(f"data.{key} is not set: give it a value (conf/data/sine.yaml has the defaults).")
    return value


def _range(cfg, key):
    value = _get(cfg, key)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"data.{key}={value} is invalid: give a range [low, high].") from None
    if not lo <= hi:
        raise UserError(f"data.{key}=[{lo}, {hi}] is invalid: low must not exceed high.")
    return lo, hi


def make_curves(size: int, num_points: int, amplitude, phase, noise: float, data_seed: int = DATA_SEED):
    """Return ``(x, y, A, phi)``: the grid (L,), the curves (size, L) and their parameters, float32 on CPU."""
    g = torch.Generator().manual_seed(data_seed)
    x = torch.linspace(-1.0, 1.0, num_points, dtype=torch.float64)
    a = torch.empty(size, 1, dtype=torch.float64).uniform_(amplitude[0], amplitude[1], generator=g)
    phi = torch.empty(size, 1, dtype=torch.float64).uniform_(phase[0], phase[1], generator=g)
    eps = torch.randn(size, num_points, dtype=torch.float64, generator=g) * noise
    y = a * torch.sin(math.pi * x + phi) + eps
    return x.float(), y.float(), a.squeeze(1).float(), phi.squeeze(1).float()


class SineDataset(TensorDataset):
    """Sine curves on the device; ``x`` is the grid (L,) on the device, for plots."""

    def __init__(self, cfg_data, *, device, seed=0, rank=0, world_size=1):
        size = int(_get(cfg_data, "size"))
        num_points = int(_get(cfg_data, "num_points"))
        noise = float(_get(cfg_data, "noise"))
        if size < 1 or num_points < 2:
            raise UserError(f"data.size={size} and data.num_points={num_points} are invalid: "
                            "need at least 1 curve of at least 2 points.")
        if noise < 0:
            raise UserError(f"data.noise={noise} is invalid: it must be zero or more.")
        amplitude, phase = _range(cfg_data, "amplitude"), _range(cfg_data, "phase")
        x, y, self.amplitude, self.phase = make_curves(size, num_points, amplitude, phase, noise)
        super().__init__(y, name=str(_get_name(cfg_data)), kind="curve", device=device, seed=seed,
                         rank=rank, world_size=world_size)
        self.x = x.to(self.device)


def _get_name(cfg):
    name = cfg.get("name") if hasattr(cfg, "get") else getattr(cfg, "name", None)
    return name or "sine"
