"""StyleGAN2's path-length regulariser (Karras et al. 2020, "Analyzing and Improving the Image Quality of
StyleGAN", section 3.2), as stylegan2-ada-pytorch computes it.

On every ``interval``-th G step (lazy regularisation, the penalty scaled by the interval), for half the
batch (``batch_shrink`` 2): images ``G.synthesis(w)``, a random image-space direction ``y ~ N(0, I) / sqrt(HW)``,
the Jacobian-vector lengths ``|J_w^T y|`` (the gradient of ``sum(img * y)`` with respect to w, squared, summed
over w's dimensions, averaged over the w layers, square-rooted), and the penalty
``weight * (length - a)^2`` with ``a`` the running mean of the lengths (``a += decay * (mean length - a)``).

``a`` is training state: it is saved in the checkpoint (``GANLoss.state_dict``) and resumed exactly. Under
DDP the batch mean of the lengths is averaged over the ranks before it updates ``a``, so ``a`` is the same on
every rank (the mean a single process with the whole batch would take). Computed in float32 outside
autocast, as R1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gantrain.distributed.collectives import all_reduce_mean


class PathLength:
    def __init__(self, weight: float = 2.0, interval: int = 4, decay: float = 0.01, batch_shrink: int = 2):
        self.weight, self.interval, self.decay, self.batch_shrink = weight, interval, decay, batch_shrink
        self.mean = torch.zeros(())

    def due(self, g_index: int | None) -> bool:
        return g_index is not None and g_index % self.interval == 0

    def penalty(self, G: nn.Module, z: torch.Tensor) -> torch.Tensor:
        """The lazy penalty (times the interval) for latents ``z``; updates the running mean."""
        z = z[: max(1, z.shape[0] // self.batch_shrink)].float()
        self.mean = self.mean.to(z.device)
        with torch.autocast(device_type=z.device.type, enabled=False):
            ws = G.mapping(z)
            if G.training and G.style_mixing_prob > 0 and G.num_ws > 1:
                ws = G._style_mix(ws, z, 1.0, None)
            img = G.synthesis(ws).float()
            noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        batch_mean = all_reduce_mean(lengths.mean().detach())
        self.mean = self.mean.lerp(batch_mean, self.decay)
        return (lengths - self.mean).square().mean() * (self.weight * self.interval)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"pl_mean": self.mean.detach().cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.mean = state["pl_mean"].to(self.mean.device)
