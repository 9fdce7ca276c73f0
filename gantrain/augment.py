"""Differentiable augmentation of every image D sees, for small data sets (``augment=diffaug|ada``).

- ``diffaug`` (Zhao et al. 2020, DiffAugment): every image, every time: ``translation`` (integer shifts up
  to 1/8 of the side, zero fill), ``cutout`` (a square of half the side set to 0), ``color`` (brightness,
  saturation, contrast), as in the authors' code.
- ``ada`` (Karras et al. 2020, StyleGAN2-ADA): each op of ``augment.ops`` applied to each image with
  probability p: ``xflip``, ``rotate90``, ``translation`` (integer, up to 1/8 of the side), ``scale``
  (isotropic, log2-normal std 0.2), ``aniso`` (anisotropic, same std), geometric ops composed into one
  matrix and applied by one ``grid_sample`` with reflection padding; then ``brightness`` (+N(0, 0.2)),
  ``contrast`` (x 2^N(0, 0.5)), ``saturation`` (x 2^N(0, 1) around the grey axis, RGB only), ``cutout``
  (a square of half the side set to 0, as ADA's corruption group). Not included: arbitrary rotation,
  fractional translation, hue, luma flip, the filter and noise groups.
  p adapts from the overfitting heuristic r_t = E[sign D(real)]: every ``interval`` D steps p moves by
  sign(r_t - target) * batch * interval / (ada_kimg * 1000) (the paper: target 0.6, interval 4,
  ada_kimg 500), unless ``augment.p`` fixes it.

Everything is batched on the images' device, with per-image random parameters from the global RNG (so
the checkpoint's RNG states make resume exact); p and the r_t sums are device tensors, updated without
reading them back (the loop reads p at log steps only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gantrain.errors import UserError

DIFFAUG_OPS = ("translation", "cutout", "color")
ADA_OPS = ("xflip", "rotate90", "translation", "scale", "aniso", "brightness", "contrast", "saturation", "cutout")
GEOMETRIC = ("xflip", "rotate90", "translation", "scale", "aniso")


def _uniform(n: int, like: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype) * (hi - lo) + lo


def _warp(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    """Resample ``x`` (N,C,H,W) at ``theta`` (N,2,3: output -> input, normalised coordinates).

    Integer shifts, flips and 90-degree turns land on pixel centres (align_corners=False), so they move
    pixels without blurring them."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _cutout_mask(x: torch.Tensor, centre: torch.Tensor, size: float, apply: torch.Tensor | None = None):
    """A (N,1,H,W) multiplier: 0 inside a square of side ``size`` (a fraction of the side) around ``centre``
    (N,2 in [0, 1]), 1 elsewhere; 1 everywhere for images where ``apply`` is False."""
    n, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
    inside_y = (ys.view(1, h) - centre[:, 1:2]).abs() < size / 2
    inside_x = (xs.view(1, w) - centre[:, 0:1]).abs() < size / 2
    hole = inside_y.view(n, 1, h, 1) & inside_x.view(n, 1, 1, w)
    if apply is not None:
        hole = hole & apply.view(n, 1, 1, 1)
    return (~hole).to(x.dtype)


def diffaugment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) with the authors' parameters; every image gets every op of ``policy``."""
    n, c, h, w = x.shape
    if "color" in policy:
        x = x + (_uniform(n, x) - 0.5).view(n, 1, 1, 1)                              # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_uniform(n, x) * 2).view(n, 1, 1, 1) + mean               # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (_uniform(n, x) + 0.5).view(n, 1, 1, 1) + mean             # contrast
    if "translation" in policy:
        sx, sy = int(w * 0.125 + 0.5), int(h * 0.125 + 0.5)
        tx = torch.randint(-sx, sx + 1, (n,), device=x.device).to(x.dtype) * (2 / w)
        ty = torch.randint(-sy, sy + 1, (n,), device=x.device).to(x.dtype) * (2 / h)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2], theta[:, 1, 2] = tx, ty
        x = _warp(x, theta, "zeros")
    if "cutout" in policy:
        x = x * _cutout_mask(x, _uniform(2 * n, x).view(n, 2), 0.5)
    return x


def _choose(apply: torch.Tensor, value: torch.Tensor, identity: float) -> torch.Tensor:
    return torch.where(apply, value, torch.full_like(value, identity))


class Augment:
    """The augmentation of one run: ``aug(x)`` augments a batch; ``observe(d_real, d_index)`` feeds ADA's
    heuristic (a no-op for diffaug or a fixed p); ``state_dict()``/``load_state_dict()`` carry p."""

    def __init__(self, name: str, ops: tuple[str, ...], *, device: torch.device, p: float | None = None,
                 target: float = 0.6, interval: int = 4, speed: float = 0.0):
        self.name, self.ops, self.target, self.interval, self.speed = name, ops, target, interval, speed
        self.adaptive = name == "ada" and p is None
        self.p = torch.tensor(1.0 if name == "diffaug" else float(p or 0.0), device=device)
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(real)) and count since the last adjustment

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "diffaug":
            return diffaugment(x, self.ops)
        return self.ada(x)

    def ada(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p, ops = self.p.to(x.dtype), self.ops

        def coin() -> torch.Tensor:
            return torch.rand(n, device=x.device, dtype=x.dtype) < p

        if any(op in ops for op in GEOMETRIC):
            # the matrix maps output pixels to input pixels; each op multiplies it from the right
            m = torch.eye(3, device=x.device, dtype=x.dtype).repeat(n, 1, 1)
            if "xflip" in ops:
                m[:, 0, 0] = _choose(coin(), -torch.ones(n, device=x.device, dtype=x.dtype), 1.0)
            if "rotate90" in ops:
                k = _choose(coin(), torch.randint(0, 4, (n,), device=x.device).to(x.dtype), 0.0) * (math.pi / 2)
                cos, sin = torch.cos(k).round(), torch.sin(k).round()
                rot = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
                m[:, :2, :2] = m[:, :2, :2] @ rot
            if "translation" in ops:
                t = torch.randint(-(w // 8), w // 8 + 1, (n, 2), device=x.device).to(x.dtype)
                t = torch.where(coin().view(n, 1), t, torch.zeros_like(t))
                t = torch.stack([t[:, 0] * (2 / w), t[:, 1] * (2 / h)], 1)  # pixels -> normalised units
                m[:, :2, 2] = m[:, :2, 2] + (m[:, :2, :2] @ t.unsqueeze(2)).squeeze(2)
            for op in ("scale", "aniso"):
                if op in ops:
                    s = _choose(coin(), torch.exp2(torch.randn(n, device=x.device, dtype=x.dtype) * 0.2), 1.0)
                    sy = 1 / s if op == "scale" else s   # scale: zoom; aniso: stretch one axis, squeeze the other
                    m[:, :2, :2] = m[:, :2, :2] @ torch.diag_embed(torch.stack([1 / s, sy], 1))
            x = _warp(x, m[:, :2], "reflection")
        if "brightness" in ops:
            x = x + _choose(coin(), torch.randn(n, device=x.device, dtype=x.dtype) * 0.2, 0.0).view(n, 1, 1, 1)
        if "contrast" in ops:
            x = x * _choose(coin(), torch.exp2(torch.randn(n, device=x.device, dtype=x.dtype) * 0.5),
                            1.0).view(n, 1, 1, 1)
        if "saturation" in ops and c == 3:
            s = _choose(coin(), torch.exp2(torch.randn(n, device=x.device, dtype=x.dtype)), 1.0).view(n, 1, 1, 1)
            grey = x.mean(dim=1, keepdim=True)
            x = grey + (x - grey) * s
        if "cutout" in ops:
            x = x * _cutout_mask(x, torch.rand(n, 2, device=x.device, dtype=x.dtype), 0.5, coin())
        return x

    @torch.no_grad()
    def observe(self, d_real: torch.Tensor, d_index: int) -> None:
        """Accumulate sign(D(real)); every ``interval`` D steps move p towards r_t = target (ADA only)."""
        if not self.adaptive:
            return
        self.signs[0] += d_real.detach().float().sign().sum()
        self.signs[1] += d_real.numel()
        if (d_index + 1) % self.interval:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.signs)  # the same r_t, so the same p, on every rank
        rt = self.signs[0] / self.signs[1]
        self.p.add_(torch.sign(rt - self.target) * self.speed).clamp_(0.0, 1.0)
        self.signs.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p": self.p.cpu(), "signs": self.signs.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.p.copy_(state["p"])
        self.signs.copy_(state["signs"])


def build_augment(cfg_aug, *, shape: tuple[int, ...], batch: int, world: int,
                  device: torch.device) -> Augment | None:
    """The run's augmentation from the ``augment`` config node, or None for ``augment=none``."""
    name = cfg_aug.name
    if name == "none":
        return None
    if name not in ("diffaug", "ada"):
        raise UserError(f"augment.name={name} is unknown: choose none, diffaug or ada.")
    if len(shape) != 3:
        raise UserError(f"augment={name} augments images, but the data gives samples of shape {tuple(shape)} "
                        "(1-D curves): use augment=none for sine data.")
    known = DIFFAUG_OPS if name == "diffaug" else ADA_OPS
    ops = tuple(cfg_aug.policy if name == "diffaug" else cfg_aug.ops)
    bad = [op for op in ops if op not in known]
    if bad or not ops:
        key = "policy" if name == "diffaug" else "ops"
        raise UserError(f"augment.{key}={list(ops)} is invalid for augment={name}: choose from {', '.join(known)}.")
    if "rotate90" in ops and shape[1] != shape[2]:
        raise UserError(f"augment.ops has rotate90 but the images are {shape[1]}x{shape[2]}: 90-degree turns "
                        "need square images; remove rotate90 from augment.ops.")
    p = cfg_aug.p
    if p is not None and not 0 <= p <= 1:
        raise UserError(f"augment.p={p} is out of range: it must be in [0, 1] (or null to adapt it).")
    if not 0 < cfg_aug.target < 1 or cfg_aug.interval < 1 or cfg_aug.ada_kimg <= 0:
        raise UserError(f"augment.target={cfg_aug.target}, augment.interval={cfg_aug.interval} and augment.ada_kimg="
                        f"{cfg_aug.ada_kimg} are out of range: target in (0, 1), interval >= 1, ada_kimg > 0.")
    speed = batch * world * cfg_aug.interval / (cfg_aug.ada_kimg * 1000)
    return Augment(name, ops, device=device, p=p, target=cfg_aug.target, interval=cfg_aug.interval, speed=speed)
