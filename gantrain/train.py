"""The training loop: setup -> data -> models -> loss/optimisers -> resume -> steps -> final metric.

Each step: ``trainer.d_steps`` discriminator steps (a real batch labelled real, an equal batch of
``G(z).detach()`` labelled fake; only D changes), then one generator step (fresh fakes labelled real,
D frozen; only G changes), then the generator EMA. Scalars are accumulated on the device and read back
only at log steps, so the hot loop never waits for the device.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from gantrain import checkpoint, classes, finetune, rundir, runs, threads
from gantrain.augment import build_augment
from gantrain.best import Best
from gantrain.config import validate
from gantrain.data import build_dataset
from gantrain.distributed import collectives, ddp, evaluation
from gantrain.early_stop import EarlyStop
from gantrain.errors import Interrupted, UserError
from gantrain.health import build_health
from gantrain.losses import GANLoss, check_networks
from gantrain.metrics import build_evaluator
from gantrain.models import recompute_batchnorm, sample
from gantrain.runtime import (
    autocast_dtype,
    configure_backends,
    resolve_precision,
    seed_everything,
    select_device,
    torch_seed,
)
from gantrain.steps import Trainee, d_step, g_step, update_counting_skips  # noqa: F401 (re-exported)
from gantrain.summaries import Summaries, curves_figure, flatten, hparams_view, task_overrides

log = logging.getLogger(__name__)

# keys that may differ between a checkpoint and the run that resumes it
RESUME_SAFE = ("trainer.max_steps", "trainer.device", "trainer.compile", "trainer.devices", "log.", "ckpt.",
               "resume", "metrics.", "data.root", "data.download", "data.cache_dir", "data.decode_workers",
               "data.max_device_bytes", "health.")


# -------------------------------------------------------------------------------------------- setup
def build_network(node: DictConfig, name: str, shape: tuple[int, ...]) -> torch.nn.Module:
    try:
        return instantiate(node, shape=shape)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"cannot build the {name} from model.{name}: {cause or e}.") from e


IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")  # how an optimiser runs, not what it does


def load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``opt.load_state_dict(saved)`` keeping this run's implementation (fused or not): the saved groups would
    otherwise replace it, and a CPU checkpoint resumed on a GPU would lose its fused kernels (which fp16's
    GradScaler has already been told about)."""
    groups = [{**old, **{k: new[k] for k in IMPLEMENTATION if k in new}}
              for old, new in zip(saved["param_groups"], opt.param_groups)]
    opt.load_state_dict({**saved, "param_groups": groups})


def build_optimizer(node: DictConfig, name: str, net: torch.nn.Module,
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser of ``optim.<name>`` for ``net``. ``fused`` (default: whether ``net`` is on CUDA): use the
    optimiser's fused kernels when it has them and the config does not say (on CUDA: the fastest implementation,
    and the only one with which the fp16 GradScaler never reads ``found_inf`` back to the host)."""
    if fused is None:
        fused = next(net.parameters()).device.type == "cuda"
    try:
        make = instantiate(node)
        chosen = any(node.get(k) for k in IMPLEMENTATION if k != "fused") or "fused" in node
        if fused and not chosen and "fused" in inspect.signature(make.func).parameters:
            make = functools.partial(make, fused=True)
        return make(net.parameters())
    except (InstantiationException, TypeError, ValueError, RuntimeError) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
        raise UserError(f"cannot build the {name}'s optimiser from optim.{name}: {str(cause).rstrip('.')}; "
                        f"fix the setting in optim.{name}.") from e


def build_trainee(cfg: DictConfig, G: torch.nn.Module, D: torch.nn.Module, views: tuple[torch.nn.Module, ...],
                  device: torch.device) -> Trainee:
    """What the D and G steps act on: ``views`` (G_run, D_run, G_learn, D_learn) of G and D, their optimisers,
    the loss, fp16 gradient scalers and autocast as ``trainer.precision`` says, and the augmentation
    (``augment``) of the images D sees (the loop and the benchmark)."""
    amp_dtype = autocast_dtype(cfg.trainer.precision, device)
    fp16 = amp_dtype == torch.float16
    augment = build_augment(cfg.augment, shape=tuple(G.shape), batch=cfg.data.batch_size,
                            world=collectives.world_size(), device=device)
    return Trainee(D, *views, build_optimizer(cfg.optim.generator, "generator", G),
                   build_optimizer(cfg.optim.discriminator, "discriminator", D), GANLoss(**cfg.loss),
                   torch.amp.GradScaler(device.type, enabled=fp16), torch.amp.GradScaler(device.type, enabled=fp16),
                   (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext,
                   skipped=torch.zeros(2, device=device),  # fp16 steps skipped (G, D) since the last log
                   augment=augment, d_params=[p for p in D.parameters() if p.requires_grad],
                   accumulate=cfg.trainer.accumulate)


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


@contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag; the loop finishes its step, saves and raises Interrupted."""
    received: list[int] = []
    first_at = [0.0]

    def handler(signum, _frame):
        if not received:
            received.append(signum)
            first_at[0] = time.monotonic()
        elif time.monotonic() - first_at[0] > 2.0:  # a second Ctrl-C, seconds later: stop now
            raise KeyboardInterrupt
        # else: the same stop delivered twice (e.g. by the terminal and by a launcher that forwards it)

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no handlers
        old = {}
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def check_resumable(saved: dict, cfg: DictConfig, shape: tuple[int, ...]) -> None:
    """Refuse a checkpoint of another model or data shape; warn about other changed settings."""
    if tuple(saved["data_shape"]) != tuple(shape):
        raise UserError(f"the checkpoint was trained on data of shape {tuple(saved['data_shape'])} but this run's "
                        f"data has shape {tuple(shape)}: resume with the same data (and data.resolution).")
    old, new = flatten(saved["config"]), flatten(OmegaConf.to_container(cfg, resolve=True))
    old.setdefault("model.conditional", False)  # checkpoints from before model.conditional existed
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or key.startswith(RESUME_SAFE):
            continue
        if key not in old and new.get(key) in (None, False):  # added since the checkpoint, at its "off" value
            continue
        if key.startswith("model."):
            raise UserError(f"the checkpoint is of another model ({key}={old.get(key)} there, {new.get(key)} "
                            "here): resume with the checkpoint's model settings or start a new run.")
        log.warning("resuming with %s=%s (the checkpoint had %s)", key, new.get(key), old.get(key))


# --------------------------------------------------------------------------------------------- train
def train(cfg: DictConfig, out_dir: str | Path, on_phase: Callable[[int, str], None] | None = None) -> float:
    """Train as ``cfg`` says, writing into ``out_dir``; returns the final value of the primary metric.

    ``on_phase(step, "step")`` is called as step ``step`` starts and ``on_phase(step, "periodic")`` as its
    logs, grids and checkpoints start (``python -m gantrain.syncs`` uses it to place host reads).
    The main process holds ``out_dir``'s lock throughout: a second run in the same directory is refused."""
    validate(cfg)
    with rundir.locked(out_dir, enabled=collectives.is_main()):
        return _train(cfg, out_dir, on_phase)


def _train(cfg: DictConfig, out_dir: str | Path, on_phase: Callable[[int, str], None] | None) -> float:
    out_dir = Path(out_dir)
    main_proc = collectives.is_main()
    rank, world = collectives.rank(), collectives.world_size()

    # ---- setup
    device = select_device(cfg.trainer.device)
    if str(cfg.trainer.precision) == "auto":  # the choice goes into the config: checkpoint, HParams, resume
        with open_dict(cfg), read_write(cfg):
            cfg.trainer.precision = resolve_precision("auto", device)
    amp_dtype = autocast_dtype(cfg.trainer.precision, device)
    seed_everything(cfg.seed + rank)
    configure_backends(device, cfg.trainer.deterministic)
    core_share = threads.share_cores(device, cfg.trainer.deterministic)  # CPU: this process's share of the cores

    # ---- data (real batches already on the device)
    resolution = 32 if cfg.model.get("pad_to_power_of_two") and cfg.data.name in ("mnist", "fashion_mnist") else None
    data = build_dataset(cfg.data, device=device, seed=cfg.seed, rank=rank, world_size=world,
                         resolution=resolution, progress=main_proc, labels=classes.is_conditional(cfg.model))
    shape, batch = tuple(data.shape), cfg.data.batch_size
    num_classes = len(data.class_names) if classes.is_conditional(cfg.model) else None  # model.conditional

    # ---- models, sized from the data
    G, D = (build_network(classes.network_node(cfg.model, net, num_classes), net, shape).to(device)
            for net in ("generator", "discriminator"))
    check_networks(cfg.loss, G, D)  # WGAN-GP: no BatchNorm in the critic; path length: StyleGAN's G
    finetune.freeze_d(D, cfg.model.get("freeze_d") or 0, cfg.model.name)  # FreezeD: before DDP wraps D
    channels_last = cfg.trainer.channels_last and len(shape) == 3
    if channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G, D = ddp.prepare_models(G, D, cfg.trainer.sync_batchnorm, device)  # rank 0's weights everywhere
    ema = EMA(G, cfg.model.ema_kimg, rampup=cfg.model.get("ema_rampup", 0.05), bn=cfg.model.get("ema_bn", "copy")) \
        if cfg.model.get("ema_kimg") else None
    # G_run/D_run: the plain networks; G_learn/D_learn: the ones trained (DDP wrappers with several ranks)
    G_run, D_run, G_learn, D_learn = ddp.training_views(G, D, device, cfg.trainer.compile)

    # ---- sample-quality metrics: real-data side built now, so metrics.required=true fails before training
    evaluator = ddp.build_everywhere(build_evaluator, cfg.metrics, data, cfg.data, device)
    early = EarlyStop.build(cfg.trainer, evaluator)  # trainer.early_stop=N (gantrain/early_stop.py)
    best = Best.build(cfg.ckpt, evaluator)  # ckpt.best=true: checkpoints/best.pt at the best metrics.primary
    if early is not None and best is None:  # early stopping keeps best.pt too
        best = Best(early.metric)

    # ---- loss and optimisers
    nets = build_trainee(cfg, G, D, (G_run, D_run, G_learn, D_learn), device)
    opt_G, opt_D, scaler_G, scaler_D = nets.opt_G, nets.opt_D, nets.scaler_G, nets.scaler_D
    z_dim = G.z_dim
    grid_z = torch.randn(cfg.log.num_samples, z_dim, generator=torch.Generator().manual_seed(torch_seed(cfg.seed)))
    health = build_health(cfg.health, data, cfg.log.num_samples, out_dir / "checkpoints", main_proc,
                          loss=cfg.loss.name)  # Health/* and its warnings

    # ---- resume
    start = 0
    resume_from = collectives.broadcast_object(_resume_path(cfg, out_dir))  # rank 0's run dir decides
    if resume_from is not None:
        saved = checkpoint.load(resume_from, map_location="cpu")  # load_state_dict copies onto the device
        check_resumable(saved, cfg, shape)
        restoring = functools.partial(checkpoint.restoring, resume_from)  # a mismatch: one sentence naming it
        for name, target in (("G", G), ("D", D), ("G_ema", ema.model if ema else None), ("opt_G", opt_G),
                             ("opt_D", opt_D), ("scaler_G", scaler_G), ("scaler_D", scaler_D),
                             ("augment", nets.augment), ("health", health),  # augment: ADA's p and its r_t sums
                             ("loss", nets.loss), ("best", best)):  # the path-length mean; the best metric so far
            with restoring(name):
                if isinstance(target, torch.optim.Optimizer):
                    load_optimizer(target, saved[name])
                elif target is not None and saved.get(name) is not None:
                    target.load_state_dict(saved[name])
        if early is not None:
            early.load_state_dict(saved.get("early_stop"))
        grid_z = saved["grid_z"].cpu()
        if grid_z.shape[1] != z_dim:
            raise UserError(f"checkpoint {resume_from} has a bad grid_z (latents of size {grid_z.shape[1]}, the "
                            f"generator takes {z_dim}): the file is damaged or was edited; use another checkpoint.")
        start = saved["step"]
        if len(saved["rng"]) == world or rank == 0:  # every rank's RNG streams were saved
            with restoring("rng"):
                checkpoint.set_rng_state(saved["rng"][rank])
        else:  # written by another number of processes: rank 0 goes on, the others start new streams
            seed_everything(cfg.seed + rank + 1_000_003 * start)
        if len(saved["rng"]) != world and main_proc:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the random streams of "
                        "ranks > 0 start afresh (training goes on; not bit-identical to an uninterrupted run)",
                        len(saved["rng"]), world)
        log.info("resumed from %s at step %d", resume_from, start)
    elif cfg.init_from:  # fine-tuning: trained weights, this run's step, optimisers and seed
        finetune.init_from(cfg.init_from, cfg, shape, G, D, ema)
        log.info("fine-tuning the weights of %s", cfg.init_from)
    grid_z = grid_z.to(device)

    def state(step: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format_version": checkpoint.FORMAT_VERSION, "step": step, "data_shape": list(shape),
            "model": cfg.model.name, "data": cfg.data.name,
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": ema.state_dict() if ema else None,
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "scaler_G": scaler_G.state_dict(), "scaler_D": scaler_D.state_dict(),
            "grid_z": grid_z.cpu(), "rng": rng,
            "augment": nets.augment.state_dict() if nets.augment is not None else None,
            "health": health.state_dict() if health is not None else None,
            "early_stop": early.state_dict() if early is not None else None,
            "loss": nets.loss.state_dict(), "best": best.state_dict() if best is not None else None,
            **({"class_names": data.class_names} if num_classes else {}),  # conditional: G(z, c) for these
            "config": OmegaConf.to_container(cfg, resolve=True),
            "overrides": runs.task_overrides(),  # how the run was started (resume=PATH composes with them)
        }

    ckpt_dir = out_dir / "checkpoints"
    last_saved: Path | None = resume_from
    saved_step = start if resume_from is not None else None  # the step the newest checkpoint holds (all ranks)
    if main_proc:
        checkpoint.remove_stale_temps(ckpt_dir)  # left by a run killed while writing

    def kept() -> str:
        return (f"the last good checkpoint {last_saved} is kept" if last_saved is not None
                else "no checkpoint had been written yet (save more often with ckpt.every_n_steps)")

    def save(step: int, periodic: bool, keep_best: bool = False) -> None:
        nonlocal last_saved, saved_step
        saved_step = step
        rng = collectives.gather_object(checkpoint.rng_state())  # every rank's RNG streams, on rank 0
        if not main_proc:
            return
        params = [(f"{name}.{n}", p) for name, net in (("G", G), ("D", D)) for n, p in net.named_parameters()]
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist()  # one read, not one per tensor
        bad = [name for (name, _), ok in zip(params, finite) if not ok]
        if bad:
            raise UserError(f"the weights became NaN/Inf by step {step} ({bad[0]}); {kept()}: lower the learning "
                            "rates, use trainer.precision=32 or add a gradient penalty (loss.r1_gamma).")
        obj = state(step, rng)
        # last.pt first: a crash between the two writes leaves last.pt the newest (resume=auto's choice)
        checkpoint.save(obj, ckpt_dir / "last.pt")
        last_saved = ckpt_dir / "last.pt"
        if periodic:
            checkpoint.save_periodic(last_saved, step, cfg.ckpt.keep)
        if keep_best:
            best.keep(last_saved)

    # ---- logging (rank 0 only)
    # points after the checkpoint's step (a fresh start: all) that a killed run logged are dropped: each step once
    tb = Summaries(out_dir if main_proc else None, purge_step=start + 1)
    metric_tags = ["Loss/D", "Loss/G", "D/real", "D/fake", "D/rt"]  # D/rt: E[sign D(real)], ADA's heuristic
    tb.hparams(hparams_view(flatten(OmegaConf.to_container(cfg, resolve=True)), task_overrides(out_dir)),
               metric_tags + (evaluator.tags if evaluator else []))  # what was swept + COMPARED, final metrics

    @torch.no_grad()
    def log_samples(step: int) -> None:
        if not main_proc:
            return
        net = ema.generator() if ema else G
        was_training = net.training
        net.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
            if health is not None:
                tb.scalars(health.grid(step, fake), step)
            if getattr(net, "supports_truncation", False):  # StyleGAN: style mixing and truncation
                from gantrain.models.stylegan import style_mixing_images, truncation_strip

                rows, cols = grid_z[:4], grid_z[-6:]
                tb.images("style_mixing", style_mixing_images(net, rows, cols, crossover=net.num_ws // 2),
                          step, nrow=len(cols))
                psis = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
                tb.images("truncation", truncation_strip(net, grid_z[:4], psis), step, nrow=len(psis))
        net.train(was_training)
        tb.flush()

    # ---- the loop
    acc = torch.zeros(5, device=device)  # sums of Loss/D, Loss/G, D/real, D/fake, D/rt since the last log
    acc_n, t_last, step_last = 0, time.perf_counter(), start
    final = {}
    pbar = tqdm(total=cfg.trainer.max_steps, initial=start, disable=not (main_proc and cfg.log.progress_bar),
                dynamic_ncols=True, desc=f"{cfg.model.name}/{cfg.data.name}", mininterval=1.0)
    step = start
    if start < cfg.trainer.max_steps:
        tb.start()  # the event file (and HParams entry) exist once training begins, even if it fails at once
    try:
        with stop_on_signals() as stop, logging_redirect_tqdm():  # log lines print above the progress bar
            while step < cfg.trainer.max_steps and not collectives.agree_to_stop(stop, step, cfg.log.every_n_steps):
                if on_phase:
                    on_phase(step + 1, "step")
                G.train()
                D.train()
                # D step(s): real labelled real, G(z) labelled fake; only D changes (gantrain/steps.py)
                for k in range(cfg.trainer.d_steps):
                    d_index = step * cfg.trainer.d_steps + k
                    real = data.batch(d_index, batch)
                    if channels_last:
                        real = real.contiguous(memory_format=torch.channels_last)
                    z = torch.randn(batch, z_dim, device=device)
                    cond = {} if not num_classes else {  # the reals' classes, uniform classes for the fakes
                        "real_c": data.batch_labels(d_index, batch),
                        "fake_c": classes.fake_classes(batch, num_classes, device)}
                    loss_D, d_real, d_fake = d_step(nets, real, z, d_index, **cond)
                # G step: fresh fakes labelled real, D frozen; only G changes
                z = torch.randn(batch, z_dim, device=device)
                loss_G = g_step(nets, z, step,
                                classes.fake_classes(batch, num_classes, device) if num_classes else None)
                step += 1
                if ema is not None:
                    ema.update(G, images_seen=step * batch * world, batch=batch * world)

                acc += torch.stack([loss_D.detach(), loss_G.detach(), torch.sigmoid(d_real.detach().float()).mean(),
                                    torch.sigmoid(d_fake.detach().float()).mean(),
                                    d_real.detach().float().sign().mean()])
                acc_n += 1
                pbar.update(1)

                # ---- logs, grids, checkpoints (the only places that wait for the device)
                if on_phase:
                    on_phase(step, "periodic")
                if step % cfg.log.every_n_steps == 0 or step == cfg.trainer.max_steps:
                    means = collectives.all_reduce_mean(acc) / acc_n
                    if nets.augment is not None:  # Aug/p read with the means: one host read
                        means = torch.cat([means, nets.augment.p.view(1).to(means)])
                    values = dict(zip([*metric_tags, "Aug/p"], means.tolist()))
                    now = time.perf_counter()
                    ips = (step - step_last) * batch * cfg.trainer.d_steps * world / (now - t_last)
                    core_share.at_log(step - step_last)
                    acc.zero_()
                    acc_n, t_last, step_last = 0, now, step
                    if not all(math.isfinite(v) for v in values.values()):
                        bad = next(k for k, v in values.items() if not math.isfinite(v))
                        raise UserError(f"training diverged at step {step}: {bad} is {values[bad]}; {kept()}: "
                                        "lower the learning rates, use trainer.precision=32 or add a gradient "
                                        "penalty (loss.r1_gamma).")
                    final = values
                    tb.scalars({**values, "Perf/images_per_sec": ips, "LR/G": opt_G.param_groups[0]["lr"],
                                "LR/D": opt_D.param_groups[0]["lr"]}, step)
                    if health is not None:  # Health/* and its warnings (gantrain/health.py)
                        tb.scalars(health.check(step, values), step)
                    if amp_dtype == torch.float16:  # skipped steps (inf/NaN gradients) are normal under fp16
                        skipped_G, skipped_D = nets.skipped.tolist()
                        nets.skipped.zero_()
                        tb.scalars({"AMP/scale_G": scaler_G.get_scale(), "AMP/scale_D": scaler_D.get_scale(),
                                    "AMP/skipped_G": skipped_G, "AMP/skipped_D": skipped_D}, step)
                        if skipped_G or skipped_D:
                            log.info("step %d: fp16 gradient scaler skipped %d G and %d D steps since the last log "
                                     "(inf/NaN gradients; the scale adapts)", step, skipped_G, skipped_D)
                    pbar.set_postfix({"D": f"{values['Loss/D']:.3f}", "G": f"{values['Loss/G']:.3f}",
                                      "img/s": f"{ips:.0f}"}, refresh=False)
                    tb.flush()
                if step % cfg.log.sample_every_n_steps == 0 or step == cfg.trainer.max_steps:
                    log_samples(step)
                if evaluator and evaluator.due(step, cfg.trainer.max_steps):
                    scores = evaluation.evaluate(evaluator, ema.generator() if ema else G, step, tb)
                    if best is not None and best.update(evaluator.primary_value, step):  # the same on every rank
                        save(step, periodic=step % cfg.ckpt.every_n_steps == 0, keep_best=True)
                        tb.scalars(best.scalars(), step)
                    if early is not None and early.update(evaluator.primary_value, step):  # every rank alike
                        if main_proc:
                            log.info("%s", early.reason(step))
                        break
                    if health is not None and scores:
                        tb.scalars(health.metrics(scores), step)
                if step % cfg.ckpt.every_n_steps == 0 and saved_step != step:
                    save(step, periodic=True)
            if saved_step != step:  # not saved at this step already (by the periodic save)
                save(step, periodic=False)
            if evaluator and not evaluator.last and not stop:  # resumed at max_steps: evaluate once
                evaluation.evaluate(evaluator, ema.generator() if ema else G, step, tb)
            if stop:
                raise Interrupted(stop[0], last_saved if main_proc else None)
    finally:
        pbar.close()
        tb.close()
        data.close()
        core_share.close()
    if evaluator and evaluator.primary_value is not None:
        return float(evaluator.primary_value)
    return float(final.get("Loss/G", float("nan")))


def _resume_path(cfg: DictConfig, out_dir: Path) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        found = checkpoint.find_latest(out_dir)
        if found is None:
            log.info("resume=auto: no checkpoint in %s yet, starting a new run", out_dir / "checkpoints")
        return found
    return Path(cfg.resume).expanduser()
