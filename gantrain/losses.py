"""GAN losses on D's raw outputs (logits), and the R1 gradient penalty.

- nonsaturating (default): D minimises BCE with real=1, fake=0; G minimises BCE of its fakes
  labelled real, i.e. softplus(-D(G(z))) (Goodfellow et al.'s practical form).
- minimax: the original objective; G minimises log(1 - D(G(z))) = -softplus(D(G(z))).
- hinge: D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z)).
- least_squares (LSGAN): D: ((D(x) - 1)^2 + D(G(z))^2) / 2; G: (D(G(z)) - 1)^2 / 2.

The seeds' tricks for the BCE losses: one-sided label smoothing (real target 1 - s) and label
noise (each D label flipped with probability p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GANLoss:
    def __init__(self, name: str = "nonsaturating", label_smoothing: float = 0.0, label_noise: float = 0.0,
                 r1_gamma: float = 0.0, r1_interval: int = 16):
        self.name = name
        self.label_smoothing = label_smoothing
        self.label_noise = label_noise
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval

    def _targets(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(logits, (1.0 - self.label_smoothing) if real else 0.0, dtype=torch.float32)
        if self.label_noise > 0:
            flip = torch.rand(target.shape, device=target.device) < self.label_noise
            target = torch.where(flip, 1.0 - target, target)
        return target

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        real_logits, fake_logits = real_logits.float(), fake_logits.float()
        if self.name in ("nonsaturating", "minimax"):
            return (F.binary_cross_entropy_with_logits(real_logits, self._targets(real_logits, True))
                    + F.binary_cross_entropy_with_logits(fake_logits, self._targets(fake_logits, False)))
        if self.name == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        if self.name == "least_squares":
            return 0.5 * ((real_logits - 1).square().mean() + fake_logits.square().mean())
        raise ValueError(f"unknown loss {self.name}")

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        fake_logits = fake_logits.float()
        if self.name == "nonsaturating":
            return F.softplus(-fake_logits).mean()
        if self.name == "minimax":
            return -F.softplus(fake_logits).mean()
        if self.name == "hinge":
            return -fake_logits.mean()
        if self.name == "least_squares":
            return 0.5 * (fake_logits - 1).square().mean()
        raise ValueError(f"unknown loss {self.name}")

    def r1_due(self, d_step: int) -> bool:
        """Lazy regularisation: R1 runs on every r1_interval-th D step."""
        return self.r1_gamma > 0 and d_step % self.r1_interval == 0

    def r1(self, D: torch.nn.Module, real: torch.Tensor) -> torch.Tensor:
        """gamma/2 * E||grad_x D(x)||^2 on real data, times the lazy interval (Mescheder et al. 2018).

        Computed in float32 outside autocast so the squared gradient cannot overflow in fp16/bf16.
        """
        real = real.detach().float().requires_grad_(True)
        with torch.autocast(device_type=real.device.type, enabled=False):
            logits = D(real)
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.square().flatten(1).sum(1).mean()
        return penalty * (self.r1_gamma / 2 * self.r1_interval)
