"""GAN losses on D's raw outputs (logits), and the R1 gradient penalty.

- nonsaturating (default): D minimises BCE with real=1, fake=0; G minimises BCE of its fakes
  labelled real, i.e. softplus(-D(G(z))) (Goodfellow et al.'s practical form).
- minimax: the original objective; G minimises log(1 - D(G(z))) = -softplus(D(G(z))).
- hinge: D: relu(1 - D(x)) + relu(1 + D(G(z))); G: -D(G(z)).
- least_squares (LSGAN): D: ((D(x) - 1)^2 + D(G(z))^2) / 2; G: (D(G(z)) - 1)^2 / 2.
- wasserstein (WGAN): D (the critic): D(G(z)) - D(x); G: -D(G(z)); with ``gp_weight`` > 0 the gradient
  penalty of WGAN-GP (Gulrajani et al. 2017): gp_weight * E(||grad D(x_hat)|| - 1)^2 on random
  interpolates x_hat of real and fake samples, at every D step (``loss=wgan_gp``: lambda 10).

The seeds' tricks for the BCE losses: one-sided label smoothing (real target 1 - s) and label
noise (each D label flipped with probability p).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gantrain.errors import UserError
from gantrain.path_length import PathLength


class GANLoss:
    def __init__(self, name: str = "nonsaturating", label_smoothing: float = 0.0, label_noise: float = 0.0,
                 r1_gamma: float = 0.0, r1_interval: int = 16, gp_weight: float = 0.0, pl_weight: float = 0.0, pl_interval: int = 4,
                 pl_decay: float = 0.01):
        self.name = name
        self.label_smoothing = label_smoothing
        self.label_noise = label_noise
        self.r1_gamma = r1_gamma
        self.r1_interval = r1_interval
        self.gp_weight = gp_weight
        # StyleGAN2's path-length regulariser of G (gantrain/path_length.py); its running mean is training state
        self.path_length = PathLength(pl_weight, pl_interval, pl_decay) if pl_weight > 0 else None

    def state_dict(self) -> dict:
        return {"path_length": self.path_length.state_dict()} if self.path_length is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.path_length is not None and state.get("path_length") is not None:
            self.path_length.load_state_dict(state["path_length"])

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
        if self.name == "wasserstein":
            return fake_logits.mean() - real_logits.mean()
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
        if self.name == "wasserstein":
            return -fake_logits.mean()
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

    def gradient_penalty(self, D: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """WGAN-GP: gp_weight * E(||grad_x D(x_hat)||_2 - 1)^2, x_hat = eps real + (1 - eps) fake, eps ~ U(0, 1)
        per sample. In float32 outside autocast, as R1."""
        real, fake = real.detach().float(), fake.detach().float()
        eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device)
        x_hat = torch.lerp(fake, real, eps).requires_grad_(True)
        with torch.autocast(device_type=real.device.type, enabled=False):
            (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        return self.gp_weight * (grad.flatten(1).norm(dim=1) - 1).square().mean()


def check_networks(loss_cfg, G: torch.nn.Module, D: torch.nn.Module) -> None:
    """The WGAN-GP paper's rule: no batch normalisation in the critic (the penalty is per sample); the
    path-length regulariser needs a generator with a mapping network (StyleGAN)."""
    if loss_cfg.get("pl_weight") and not (hasattr(G, "mapping") and hasattr(G, "synthesis")):
        raise UserError(f"loss.pl_weight={loss_cfg.pl_weight} (path-length regularisation) needs StyleGAN's "
                        "mapping network: set loss.pl_weight=0 for this model, or use model=stylegan.")
    if loss_cfg.get("gp_weight") and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in D.modules()):
        raise UserError("the gradient penalty (loss.gp_weight>0, loss=wgan_gp) needs a discriminator without "
                        "BatchNorm: set model.discriminator.batch_norm=false or model.discriminator.spectral_norm=true.")
