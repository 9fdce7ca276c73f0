"""One discriminator step and one generator step, with the seeds' semantics.

Used by the training loop and by the benchmark's ceiling, so both time exactly the same work.

- D step: a real batch labelled real and ``G(z)`` (no gradient into G) labelled fake; lazy R1 on the
  reals when due, WGAN-GP's gradient penalty when set; only D's weights change.
- G step: fresh fakes labelled real through the plain, frozen D; only G's weights change.

With ``augment`` (gantrain/augment.py) every image D sees goes through it first: reals and fakes of the D
step, the G step's fakes, and R1's reals (the gradient is taken w.r.t. the un-augmented reals, as in
StyleGAN2-ADA). ``d_params``: the D weights that train (all of them, or those FreezeD leaves free).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from gantrain.augment import Augment
from gantrain.losses import GANLoss


def update_counting_skips(scaler: torch.amp.GradScaler, skipped: torch.Tensor) -> None:
    """``scaler.update()``, adding 1 to the device tensor ``skipped`` when this step was skipped.

    Under fp16 the GradScaler skips an optimizer step whose gradients hold inf/NaN and lowers its scale;
    a good step never lowers it. Comparing the scale before and after the update counts the skips on the
    device, with no host-device sync in the hot loop; the count is read at log steps.
    """
    scale = getattr(scaler, "_scale", None)
    if not scaler.is_enabled() or not isinstance(scale, torch.Tensor):
        scaler.update()
        return
    before = scale.clone()
    scaler.update()
    skipped += (scaler._scale < before).to(skipped.dtype)


@dataclass
class Trainee:
    """What the two steps act on: ``D`` the raw discriminator (R1's double backward, freezing);
    ``G_run``/``D_run`` the plain networks for forward passes (compiled with trainer.compile);
    ``G_learn``/``D_learn`` the ones whose gradients are averaged across ranks (DDP wrappers, or the same
    modules with one process). See ``distributed.training_views``."""

    D: nn.Module
    G_run: nn.Module
    D_run: nn.Module
    G_learn: nn.Module
    D_learn: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    loss: GANLoss
    scaler_G: torch.amp.GradScaler
    scaler_D: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager] = nullcontext
    skipped: torch.Tensor = field(default_factory=lambda: torch.zeros(2))  # fp16 skips of G, D
    augment: Augment | None = None
    d_params: list[nn.Parameter] | None = None  # None: all of D's


def _seen(t: Trainee, x: torch.Tensor) -> torch.Tensor:
    """An image as D sees it: augmented when the run augments."""
    return x if t.augment is None else t.augment(x)


def d_step(t: Trainee, real: torch.Tensor, z: torch.Tensor, d_index: int):
    """One D step; returns (loss_D, D(real), D(fake)) as tensors (nothing is read back). ``loss_D`` is the
    GAN loss without the lazy R1 term, so the logged curve does not jump on the steps R1 is due."""
    for p in t.D.parameters() if t.d_params is None else t.d_params:
        p.requires_grad_(True)
    with t.autocast():
        with torch.no_grad():
            fake = t.G_run(z)
        d_real, d_fake = t.D_learn(_seen(t, real)), t.D_learn(_seen(t, fake))
        loss_D = t.loss.d_loss(d_real, d_fake)
    if t.augment is not None:
        t.augment.observe(d_real, d_index)
    critic = t.D if t.augment is None else lambda x: t.D(t.augment(x))  # the regularisers see what D sees
    objective = loss_D
    if t.loss.r1_due(d_index):
        objective = loss_D + t.loss.r1(critic, real)
    if t.loss.gp_weight:  # WGAN-GP's penalty on interpolates, every D step
        objective = objective + t.loss.gradient_penalty(critic, real, fake)
    t.opt_D.zero_grad(set_to_none=True)
    t.scaler_D.scale(objective).backward()
    t.scaler_D.step(t.opt_D)
    update_counting_skips(t.scaler_D, t.skipped[1])
    return loss_D, d_real, d_fake


def g_step(t: Trainee, z: torch.Tensor) -> torch.Tensor:
    """One G step; returns loss_G. D is frozen and called plain: no gradients reach its weights."""
    t.D.requires_grad_(False)
    with t.autocast():
        loss_G = t.loss.g_loss(t.D_run(_seen(t, t.G_learn(z))))
    t.opt_G.zero_grad(set_to_none=True)
    t.scaler_G.scale(loss_G).backward()
    t.scaler_G.step(t.opt_G)
    update_counting_skips(t.scaler_G, t.skipped[0])
    return loss_G
