"""The training loop: setup -> build -> resume -> steps (with the periodic work) -> finish -> final metric.

Each step (:func:`one_step`): ``trainer.d_steps`` discriminator steps (a real batch labelled real, an equal
batch of ``G(z).detach()`` labelled fake; only D changes), then one generator step (fresh fakes labelled
real, D frozen; only G changes), then the generator EMA (training/steps.py). Scalars are accumulated on the
device and read back only at log steps (training/periodic.py), so the hot loop never waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from gantrain import classes, rundir
from gantrain.config import validate
from gantrain.distributed import collectives
from gantrain.training.build import Built, build, setup
from gantrain.training.periodic import Periodic
from gantrain.training.state import resume
from gantrain.training.steps import d_step, g_step
from gantrain.training.stopping import interrupted, keep_going, stop_on_signals


def train(cfg: DictConfig, out_dir: str | Path, on_phase: Callable[[int, str], None] | None = None) -> float:
    """Train as ``cfg`` says, writing into ``out_dir``; returns the final value of the primary metric.

    ``on_phase(step, "step")`` is called as step ``step`` starts and ``on_phase(step, "periodic")`` as its
    logs, grids and checkpoints start (``python -m gantrain.tools.syncs`` uses it to place host reads).
    The main process holds ``out_dir``'s lock throughout: a second run in the same directory is refused."""
    validate(cfg)
    with rundir.locked(out_dir, enabled=collectives.is_main()):
        return _train(cfg, Path(out_dir), on_phase)


def _train(cfg: DictConfig, out_dir: Path, on_phase: Callable[[int, str], None] | None) -> float:
    device, core_share = setup(cfg)  # device, precision, seeds, backends, this process's cores
    b = build(cfg, out_dir, device)  # data, networks, optimisers, EMA, evaluator, trackers
    st = b.state
    resume_from = resume(st, out_dir, device)  # resume=... or init_from=..., else a fresh start
    report = Periodic(cfg, b, out_dir, resume_from, core_share)  # TensorBoard, progress bar, checkpoints
    try:
        with stop_on_signals() as stop, logging_redirect_tqdm():  # log lines print above the progress bar
            while keep_going(st.step, cfg.trainer.max_steps, stop, cfg.log.every_n_steps):
                if on_phase:
                    on_phase(st.step + 1, "step")
                losses = one_step(b, st.step)
                st.step += 1
                report.add(*losses)
                if on_phase:
                    on_phase(st.step, "periodic")
                if report.after_step(st.step):  # logs, grids, evaluations, checkpoints; True: early stop
                    break
            report.finish(st.step, stop)  # the last checkpoint
            interrupted(stop, report.ckpts.last_saved)  # a signal stopped the loop: raise Interrupted
    finally:
        report.close()
        b.data.close()
        core_share.close()
    if b.evaluator and b.evaluator.primary_value is not None:
        return float(b.evaluator.primary_value)
    return float(report.final.get("Loss/G", float("nan")))


def one_step(b: Built, step: int) -> tuple[torch.Tensor, ...]:
    """Training step ``step + 1``: D step(s), G step, EMA; returns (loss_D, loss_G, D(real), D(fake)) of the
    last D step and the G step, as device tensors."""
    st, data, device, n = b.state, b.data, b.device, b.num_classes
    batch, d_steps, z_dim = st.cfg.data.batch_size, st.cfg.trainer.d_steps, st.G.z_dim
    st.G.train()
    st.D.train()
    # D step(s): real labelled real, G(z) labelled fake; only D changes
    for k in range(d_steps):
        d_index = step * d_steps + k
        real = data.batch(d_index, batch)
        if b.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(batch, z_dim, device=device)
        cond = {} if not n else {  # the reals' classes, uniform classes for the fakes
            "real_c": data.batch_labels(d_index, batch), "fake_c": classes.fake_classes(batch, n, device)}
        loss_D, d_real, d_fake = d_step(st.ctx, real, z, d_index, **cond)
    # G step: fresh fakes labelled real, D frozen; only G changes
    z = torch.randn(batch, z_dim, device=device)
    loss_G = g_step(st.ctx, z, step, classes.fake_classes(batch, n, device) if n else None)
    if st.ema is not None:
        world = collectives.world_size()
        st.ema.update(st.G, images_seen=(step + 1) * batch * world, batch=batch * world)
    return loss_D, loss_G, d_real, d_fake
