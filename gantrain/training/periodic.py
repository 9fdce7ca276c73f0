"""What the loop does every so many steps, the only places that wait for the device: scalars
(``log.every_n_steps``: losses, img/s, learning rates, AMP skips, the divergence check), sample grids
(``log.sample_every_n_steps``), sample-quality evaluations (``metrics.every_n_steps``, with ``ckpt.best``
and ``trainer.early_stop``) and checkpoints (``ckpt.every_n_steps``, and the last one when the loop ends).

Scalars are summed on the device every step (:meth:`Periodic.add`) and read back only at log steps.
TensorBoard and the progress bar are rank 0's; every rank takes part in the reductions and evaluations.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from gantrain import checkpoint, classes, threads
from gantrain.distributed import collectives, evaluation
from gantrain.errors import UserError
from gantrain.models import sample
from gantrain.runtime import autocast_dtype
from gantrain.summaries import Summaries, curves_figure, flatten, hparams_view, task_overrides
from gantrain.torch_utils import eval_mode, isolated_rng
from gantrain.training.build import Built
from gantrain.training.state import TrainState

log = logging.getLogger(__name__)

METRIC_TAGS = ["Loss/D", "Loss/G", "D/real", "D/fake", "D/rt"]  # D/rt: E[sign D(real)], ADA's heuristic
DIVERGED_FIX = "lower the learning rates, use trainer.precision=32 or add a gradient penalty (loss.r1_gamma)."


class Checkpoints:
    """``checkpoints/last.pt`` (+ ``step_XXXXXXX.pt``, ``best.pt``) of the state, written by rank 0 with every
    rank's RNG streams; remembers the newest one written (or resumed from) for the error messages."""

    def __init__(self, state: TrainState, out_dir: Path, resume_from: Path | None):
        self.state, self.dir = state, out_dir / "checkpoints"
        self.last_saved = resume_from
        self.saved_step = state.step if resume_from is not None else None  # the step the newest one holds
        if collectives.is_main():
            checkpoint.remove_stale_temps(self.dir)  # left by a run killed while writing

    def kept(self) -> str:
        return (f"the last good checkpoint {self.last_saved} is kept" if self.last_saved is not None
                else "no checkpoint had been written yet (save more often with ckpt.every_n_steps)")

    def save(self, periodic: bool, keep_best: bool = False) -> None:
        st = self.state
        self.saved_step = st.step
        rng = collectives.gather_object(checkpoint.rng_state())  # every rank's RNG streams, on rank 0
        if not collectives.is_main():
            return
        params = [(f"{name}.{n}", p) for name, net in (("G", st.G), ("D", st.D)) for n, p in net.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist()  # one read, not one per tensor
        bad = [name for (name, _), ok in zip(params, finite) if not ok]
        if bad:
            raise UserError(f"the weights became NaN/Inf by step {st.step} ({bad[0]}); {self.kept()}: "
                            + DIVERGED_FIX)
        obj = st.state_dict(rng)
        # last.pt first: a crash between the two writes leaves last.pt the newest (resume=auto's choice)
        checkpoint.save(obj, self.dir / "last.pt")
        self.last_saved = self.dir / "last.pt"
        if periodic:
            checkpoint.save_periodic(self.last_saved, st.step, st.cfg.ckpt.keep)
        if keep_best:
            st.best.keep(self.last_saved)


class Periodic:
    """The run's logs, grids, evaluations and checkpoints, and its progress bar."""

    def __init__(self, cfg: DictConfig, b: Built, out_dir: Path, resume_from: Path | None,
                 core_share: threads.CoreShare):
        self.cfg, self.b, self.st, self.core_share = cfg, b, b.state, core_share
        self.main = collectives.is_main()
        start = self.st.step
        self.ckpts = Checkpoints(self.st, out_dir, resume_from)
        # points after the checkpoint's step (a fresh start: all) that a killed run logged are dropped: each once
        self.tb = Summaries(out_dir if self.main else None, purge_step=start + 1)
        self.tb.hparams(hparams_view(flatten(OmegaConf.to_container(cfg, resolve=True)), task_overrides(out_dir)),
                        METRIC_TAGS + (b.evaluator.tags if b.evaluator else []))  # swept + COMPARED, final metrics
        self.fp16 = autocast_dtype(cfg.trainer.precision, b.device) == torch.float16
        self.acc = torch.zeros(5, device=b.device)  # sums of Loss/D, Loss/G, D/real, D/fake, D/rt since the last log
        self.acc_n, self.t_last, self.step_last = 0, time.perf_counter(), start
        self.final: dict[str, float] = {}  # the scalars of the last log step
        self.pbar = tqdm(total=cfg.trainer.max_steps, initial=start, disable=not (self.main and cfg.log.progress_bar),
                         dynamic_ncols=True, desc=f"{cfg.model.name}/{cfg.data.name}", mininterval=1.0)
        if start < cfg.trainer.max_steps:
            self.tb.start()  # the event file (and HParams entry) exist once training begins, even if it fails at once

    def add(self, loss_D: torch.Tensor, loss_G: torch.Tensor, d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
        """One step's scalars into the sums on the device (nothing is read back)."""
        self.acc += torch.stack([loss_D.detach(), loss_G.detach(), torch.sigmoid(d_real.detach().float()).mean(),
                                 torch.sigmoid(d_fake.detach().float()).mean(), d_real.detach().float().sign().mean()])
        self.acc_n += 1
        self.pbar.update(1)

    def after_step(self, step: int) -> bool:
        """Whatever is due at ``step``; True when early stopping ends the run here."""
        cfg, last = self.cfg, step == self.cfg.trainer.max_steps
        if step % cfg.log.every_n_steps == 0 or last:
            self.log_scalars(step)
        if step % cfg.log.sample_every_n_steps == 0 or last:
            self.log_samples(step)
        if self.b.evaluator and self.b.evaluator.due(step, cfg.trainer.max_steps) and self.evaluate(step):
            return True
        if step % cfg.ckpt.every_n_steps == 0 and self.ckpts.saved_step != step:
            self.ckpts.save(periodic=True)
        return False

    def finish(self, step: int, stop: list[int]) -> None:
        """The loop has ended: the last checkpoint (unless this step's is written), and the evaluation of a run
        resumed at max_steps."""
        if self.ckpts.saved_step != step:
            self.ckpts.save(periodic=False)
        if self.b.evaluator and not self.b.evaluator.last and not stop:
            evaluation.evaluate(self.b.evaluator, self.st.generator(), step, self.tb)

    def close(self) -> None:
        self.pbar.close()
        self.tb.close()

    # ------------------------------------------------------------------------------------- the parts
    def log_scalars(self, step: int) -> None:
        cfg, ctx, tb = self.cfg, self.st.ctx, self.tb
        means = collectives.all_reduce_mean(self.acc) / self.acc_n
        if ctx.augment is not None:  # Aug/p read with the means: one host read
            means = torch.cat([means, ctx.augment.p.view(1).to(means)])
        values = dict(zip([*METRIC_TAGS, "Aug/p"], means.tolist()))
        now = time.perf_counter()
        ips = ((step - self.step_last) * cfg.data.batch_size * cfg.trainer.d_steps * collectives.world_size()
               / (now - self.t_last))
        self.core_share.at_log(step - self.step_last)
        self.acc.zero_()
        self.acc_n, self.t_last, self.step_last = 0, now, step
        if not all(math.isfinite(v) for v in values.values()):
            bad = next(k for k, v in values.items() if not math.isfinite(v))
            raise UserError(f"training diverged at step {step}: {bad} is {values[bad]}; {self.ckpts.kept()}: "
                            + DIVERGED_FIX)
        self.final = values
        tb.scalars({**values, "Perf/images_per_sec": ips, "LR/G": ctx.opt_G.param_groups[0]["lr"],
                    "LR/D": ctx.opt_D.param_groups[0]["lr"]}, step)
        if self.st.health is not None:  # Health/* and its warnings (training/health.py)
            tb.scalars(self.st.health.check(step, values), step)
        if self.fp16:  # skipped steps (inf/NaN gradients) are normal under fp16
            skipped_G, skipped_D = ctx.skipped.tolist()
            ctx.skipped.zero_()
            tb.scalars({"AMP/scale_G": ctx.scaler_G.get_scale(), "AMP/scale_D": ctx.scaler_D.get_scale(),
                        "AMP/skipped_G": skipped_G, "AMP/skipped_D": skipped_D}, step)
            if skipped_G or skipped_D:
                log.info("step %d: fp16 gradient scaler skipped %d G and %d D steps since the last log "
                         "(inf/NaN gradients; the scale adapts)", step, skipped_G, skipped_D)
        self.pbar.set_postfix({"D": f"{values['Loss/D']:.3f}", "G": f"{values['Loss/G']:.3f}",
                               "img/s": f"{ips:.0f}"}, refresh=False)
        tb.flush()

    @torch.no_grad()
    def log_samples(self, step: int) -> None:
        """The sample grid of the fixed latents (a row per class when conditional; curves over real ones for
        sine data), its Health/diversity, and StyleGAN's style mixing and truncation strips."""
        if not self.main:
            return
        st, data, tb, device, num_classes = self.st, self.b.data, self.tb, self.b.device, self.b.num_classes
        grid_z, net = st.grid_z, st.generator()
        with isolated_rng(device), eval_mode(net):
            if num_classes:  # one row per class, the same latents in every row, class names in front
                z_index, grid_c, cols = classes.grid_layout(num_classes, len(grid_z))
                fake = torch.cat([sample(net, z, c=c) for z, c in zip(grid_z[z_index.to(device)].split(256),
                                                                      grid_c.to(device).split(256))])
            else:
                fake = torch.cat([sample(net, z) for z in grid_z.split(256)])  # fixed noise: grids comparable
            if num_classes:
                tb.images("samples", classes.labelled_rows(fake, data.class_names, cols), step, nrow=cols + 1)
            elif data.kind == "curve":
                tb.figure("samples", curves_figure(fake, data.real_samples(16), getattr(data, "x", None)), step)
            else:
                tb.images("samples", fake, step)
            if st.health is not None:
                tb.scalars(st.health.grid(step, fake), step)
            if getattr(net, "supports_truncation", False):  # StyleGAN: style mixing and truncation
                from gantrain.models.stylegan import style_mixing_images, truncation_strip

                rows, cols = grid_z[:4], grid_z[-6:]
                tb.images("style_mixing", style_mixing_images(net, rows, cols, crossover=net.num_ws // 2),
                          step, nrow=len(cols))
                psis = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
                tb.images("truncation", truncation_strip(net, grid_z[:4], psis), step, nrow=len(psis))
        tb.flush()

    def evaluate(self, step: int) -> bool:
        """The sample-quality metrics (every rank), best.pt when they are the best yet, the early-stop count;
        True when early stopping ends the run here."""
        evaluator, st, tb = self.b.evaluator, self.st, self.tb
        scores = evaluation.evaluate(evaluator, st.generator(), step, tb)
        if st.best is not None and st.best.update(evaluator.primary_value, step):  # the same on every rank
            self.ckpts.save(periodic=step % self.cfg.ckpt.every_n_steps == 0, keep_best=True)
            tb.scalars(st.best.scalars(), step)
        if st.early is not None and st.early.update(evaluator.primary_value, step):  # every rank alike
            if self.main:
                log.info("%s", st.early.reason(step))
            return True
        if st.health is not None and scores:
            tb.scalars(st.health.metrics(scores), step)
        return False
