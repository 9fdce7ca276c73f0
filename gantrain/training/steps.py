"""One discriminator step, one generator step and the generator EMA, with the seeds' semantics.

Used by the training loop and by the benchmark's ceiling, so both time exactly the same work. What the steps
act on is a :class:`StepContext` (built by ``gantrain.training.build.build_step_context``).

- D step: a real batch labelled real and ``G(z)`` (no gradient into G) labelled fake; lazy R1 on the
  reals when due, WGAN-GP's gradient penalty when set; only D's weights change.
- G step: fresh fakes labelled real through the plain, frozen D; StyleGAN2's lazy path-length
  regulariser when due (gantrain/path_length.py); only G's weights change.

With ``augment`` (gantrain/augment.py) every image D sees goes through it first: reals and fakes of the D
step, the G step's fakes, and R1's reals (the gradient is taken w.r.t. the un-augmented reals, as in
StyleGAN2-ADA). ``d_params``: the D weights that train (all of them, or those FreezeD leaves free).

With ``accumulate`` K > 1 (``trainer.accumulate``) each step splits its batch into K equal micro-batches,
back-propagates each one's loss / K (R1 and the gradient penalty included, on that micro-batch) and steps
the optimiser once: the gradient of the mean loss over the whole batch, with 1/K of the activations alive.
Under DDP the gradients are all-reduced after the last micro-batch only (``no_sync`` before).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from gantrain.augment import Augment
from gantrain.errors import UserError
from gantrain.losses import GANLoss
from gantrain.models import recompute_batchnorm


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


@dataclass(kw_only=True)
class StepContext:
    """What the two steps act on: ``D`` the raw discriminator (R1's double backward, freezing);
    ``G_run``/``D_run`` the plain networks for forward passes (compiled with trainer.compile);
    ``G_learn``/``D_learn`` the ones whose gradients are averaged across ranks (DDP wrappers, or the same
    modules with one process). See ``gantrain.distributed.ddp.training_views``."""

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
    accumulate: int = 1  # micro-batches per optimiser step (trainer.accumulate)


def _seen(t: StepContext, x: torch.Tensor) -> torch.Tensor:
    """An image as D sees it: augmented when the run augments."""
    return x if t.augment is None else t.augment(x)


def _micro(t: StepContext, net: nn.Module, *tensors: torch.Tensor):
    """(no_sync or nullcontext, chunks) for each of the K micro-batches of ``tensors``: DDP all-reduces the
    gradients only on the last one."""
    k = t.accumulate
    chunks = list(zip(*(x.chunk(k) for x in tensors)))
    no_sync = getattr(net, "no_sync", nullcontext)
    return [(no_sync if i < k - 1 else nullcontext, c) for i, c in enumerate(chunks)]


def _cls(c: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The extra argument of a conditional network: ``(c,)``, or nothing for an unconditional run."""
    return () if c is None else (c,)


def d_step(t: StepContext, real: torch.Tensor, z: torch.Tensor, d_index: int, real_c: torch.Tensor | None = None,
           fake_c: torch.Tensor | None = None):
    """One D step; returns (loss_D, D(real), D(fake)) as tensors (nothing is read back). ``loss_D`` is the
    GAN loss without the lazy R1 term, so the logged curve does not jump on the steps R1 is due.
    Conditional runs pass the reals' classes ``real_c`` and the classes ``fake_c`` to generate; R1 and the
    gradient penalty score their images with the reals' classes."""
    for p in t.D.parameters() if t.d_params is None else t.d_params:
        p.requires_grad_(True)
    t.opt_D.zero_grad(set_to_none=True)
    losses, reals, fakes = [], [], []
    tensors = (real, z) if real_c is None else (real, z, real_c, fake_c)
    for sync, (real_k, z_k, *cs) in _micro(t, t.D_learn, *tensors):
        rc, fc = cs or (None, None)

        def critic(x, rc=rc):  # the regularisers see what D sees
            return t.D(_seen(t, x), *_cls(rc))

        with sync():
            with t.autocast():
                with torch.no_grad():
                    fake = t.G_run(z_k, *_cls(fc))
                d_real, d_fake = t.D_learn(_seen(t, real_k), *_cls(rc)), t.D_learn(_seen(t, fake), *_cls(fc))
                loss_D = t.loss.d_loss(d_real, d_fake)
            objective = loss_D
            if t.loss.r1_due(d_index):
                objective = loss_D + t.loss.r1(critic, real_k)
            if t.loss.gp_weight:  # WGAN-GP's penalty on interpolates, every D step
                objective = objective + t.loss.gradient_penalty(critic, real_k, fake)
            t.scaler_D.scale(objective / t.accumulate if t.accumulate > 1 else objective).backward()
        losses.append(loss_D.detach())
        reals.append(d_real.detach())
        fakes.append(d_fake.detach())
    if t.accumulate > 1:
        loss_D, d_real, d_fake = torch.stack(losses).mean(), torch.cat(reals), torch.cat(fakes)
    if t.augment is not None:
        t.augment.observe(d_real, d_index)
    t.scaler_D.step(t.opt_D)
    update_counting_skips(t.scaler_D, t.skipped[1])
    return loss_D, d_real, d_fake


def g_step(t: StepContext, z: torch.Tensor, g_index: int | None = None,
           c: torch.Tensor | None = None) -> torch.Tensor:
    """One G step (the ``g_index``-th, 0-based: lazy path-length regularisation when due); returns loss_G
    without the regulariser. D is frozen and called plain: no gradients reach its weights.
    ``c``: the classes to generate (conditional runs); D scores each fake with its class."""
    t.D.requires_grad_(False)
    pl = t.loss.path_length
    pl_due = pl is not None and pl.due(g_index)
    t.opt_G.zero_grad(set_to_none=True)
    losses = []
    for sync, (z_k, *cs) in _micro(t, t.G_learn, *((z,) if c is None else (z, c))):
        with sync():
            with t.autocast():
                loss_G = t.loss.g_loss(t.D_run(_seen(t, t.G_learn(z_k, *cs)), *cs))
            objective = loss_G
            if pl_due:  # through the plain G, like R1 through the plain D; per micro-batch, as R1 and GP
                G_plain = getattr(t.G_run, "_orig_mod", t.G_run)
                objective = loss_G + pl.penalty(G_plain, G_plain.condition(z_k, *cs) if cs else z_k)
            t.scaler_G.scale(objective / t.accumulate if t.accumulate > 1 else objective).backward()
        losses.append(loss_G.detach())
    t.scaler_G.step(t.opt_G)
    update_counting_skips(t.scaler_G, t.skipped[0])
    return torch.stack(losses).mean() if t.accumulate > 1 else loss_G


class EMA:
    """Generator EMA (torch.optim.swa_utils.AveragedModel) with a half-life in images and a ramp-up.

    As in stylegan2-ada, the half-life is ``ema_kimg`` thousand images, but at most ``rampup`` times the
    images seen so far (``model.ema_rampup``, default 0.05; null or 0: no ramp-up), so short runs are not
    dominated by the random initialisation. Buffers (BatchNorm
    running statistics, StyleGAN's w_avg) are copied from G, not averaged: they are running averages already.
    With ``bn="recompute"`` the BatchNorm statistics of the averaged weights are recomputed from their own
    activations (fixed latents, :func:`gantrain.models.recompute_batchnorm`) whenever the EMA generator is
    read (:meth:`generator`: grids, metrics, checkpoints): G's statistics do not fit weights they never saw.
    """

    def __init__(self, G: torch.nn.Module, ema_kimg: float, rampup: float = 0.05, bn: str = "copy"):
        if bn not in ("copy", "recompute"):
            raise UserError(f"model.ema_bn={bn} is unknown: choose copy or recompute.")
        self.ema_nimg, self.rampup, self.beta, self.recompute_bn, self._stale = ema_kimg * 1000, rampup, 0.0, \
            bn == "recompute", True
        self.model = AveragedModel(G, use_buffers=False)  # a frozen copy of G (and its n_averaged counter)
        self.model.eval().requires_grad_(False)
        self._params = list(self.model.module.parameters())  # loading a state dict copies into these

    @torch.no_grad()
    def update(self, G: torch.nn.Module, images_seen: int, batch: int) -> None:
        half_life = min(self.ema_nimg, images_seen * self.rampup) if self.rampup else self.ema_nimg
        self.beta = 0.5 ** (batch / max(half_life, 1e-8))
        # one foreach lerp, not AveragedModel.update_parameters: that copies its CPU counter n_averaged to
        # the GPU every step, and a copy from pageable host memory makes the host wait for the device
        torch._foreach_lerp_(self._params, list(G.parameters()), 1.0 - self.beta)
        self.model.n_averaged += 1  # stays on the CPU: no device work
        for b_ema, b in zip(self.model.module.buffers(), G.buffers()):
            b_ema.copy_(b)
        self._stale = True

    def generator(self) -> torch.nn.Module:
        """The EMA generator to sample from (its BatchNorm statistics recomputed when asked)."""
        if self.recompute_bn and self._stale:
            recompute_batchnorm(self.model.module)
            self._stale = False
        return self.model.module

    def state_dict(self) -> dict[str, Any]:
        self.generator()  # recomputed statistics, when asked, are what a checkpoint's user samples with
        return self.model.state_dict()
