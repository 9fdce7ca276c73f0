"""Setup and building: the device and seeds (:func:`setup`), then data, networks, loss, optimisers, EMA,
evaluator and the run's trackers (:func:`build`), in the order that fixes the random streams (a resumed run
builds the same way before loading its checkpoint)."""

from __future__ import annotations

import functools
import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict, read_write

from gantrain import classes, threads
from gantrain.augment import build_augment
from gantrain.data import build_dataset
from gantrain.distributed import collectives, ddp
from gantrain.errors import UserError
from gantrain.losses import GANLoss, check_networks
from gantrain.metrics import build_evaluator
from gantrain.runtime import (
    autocast_dtype,
    configure_backends,
    resolve_precision,
    seed_everything,
    select_device,
    torch_seed,
)
from gantrain.training import finetune
from gantrain.training.best import Best
from gantrain.training.health import build_health
from gantrain.training.state import IMPLEMENTATION, TrainState
from gantrain.training.steps import EMA, StepContext
from gantrain.training.stopping import EarlyStop


def setup(cfg: DictConfig) -> tuple[torch.device, threads.CoreShare]:
    """The device (and ``trainer.precision=auto``'s choice, into the config), seeds and backends; on a CPU,
    this process's share of the cores (closed when the run ends)."""
    device = select_device(cfg.trainer.device)
    if str(cfg.trainer.precision) == "auto":  # the choice goes into the config: checkpoint, HParams, resume
        with open_dict(cfg), read_write(cfg):
            cfg.trainer.precision = resolve_precision("auto", device)
    seed_everything(cfg.seed + collectives.rank())
    configure_backends(device, cfg.trainer.deterministic)
    return device, threads.share_cores(device, cfg.trainer.deterministic)


def build_network(node: DictConfig, name: str, shape: tuple[int, ...]) -> torch.nn.Module:
    try:
        return instantiate(node, shape=shape)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"cannot build the {name} from model.{name}: {cause or e}.") from e


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


def build_step_context(cfg: DictConfig, G: torch.nn.Module, D: torch.nn.Module,
                       views: tuple[torch.nn.Module, ...], device: torch.device) -> StepContext:
    """What the D and G steps act on: ``views`` (G_run, D_run, G_learn, D_learn) of G and D, their optimisers,
    the loss, fp16 gradient scalers and autocast as ``trainer.precision`` says, and the augmentation
    (``augment``) of the images D sees (the loop and the benchmark)."""
    amp_dtype = autocast_dtype(cfg.trainer.precision, device)
    fp16 = amp_dtype == torch.float16
    augment = build_augment(cfg.augment, shape=tuple(G.shape), batch=cfg.data.batch_size,
                            world=collectives.world_size(), device=device)
    G_run, D_run, G_learn, D_learn = views
    return StepContext(
        D=D, G_run=G_run, D_run=D_run, G_learn=G_learn, D_learn=D_learn,
        opt_G=build_optimizer(cfg.optim.generator, "generator", G),
        opt_D=build_optimizer(cfg.optim.discriminator, "discriminator", D), loss=GANLoss(**cfg.loss),
        scaler_G=torch.amp.GradScaler(device.type, enabled=fp16),
        scaler_D=torch.amp.GradScaler(device.type, enabled=fp16),
        autocast=(lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext,
        skipped=torch.zeros(2, device=device),  # fp16 steps skipped (G, D) since the last log
        augment=augment, d_params=[p for p in D.parameters() if p.requires_grad],
        accumulate=cfg.trainer.accumulate)


@dataclass(kw_only=True)
class Built:
    """What :func:`build` made: the data (real batches already on the device), the training state (networks,
    optimisers, trackers), the evaluator (None without metrics) and how the loop feeds the steps."""

    device: torch.device
    data: Any
    state: TrainState
    evaluator: Any
    channels_last: bool
    num_classes: int | None  # model.conditional: the data's classes


def build(cfg: DictConfig, out_dir: Path, device: torch.device) -> Built:
    main_proc, rank, world = collectives.is_main(), collectives.rank(), collectives.world_size()
    # ---- data (real batches already on the device)
    resolution = 32 if cfg.model.get("pad_to_power_of_two") and cfg.data.name in ("mnist", "fashion_mnist") else None
    data = build_dataset(cfg.data, device=device, seed=cfg.seed, rank=rank, world_size=world,
                         resolution=resolution, progress=main_proc, labels=classes.is_conditional(cfg.model))
    shape = tuple(data.shape)
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
    views = ddp.training_views(G, D, device, cfg.trainer.compile)

    # ---- sample-quality metrics: real-data side built now, so metrics.required=true fails before training
    evaluator = ddp.build_everywhere(build_evaluator, cfg.metrics, data, cfg.data, device)
    early = EarlyStop.build(cfg.trainer, evaluator)  # trainer.early_stop=N (training/stopping.py)
    best = Best.build(cfg.ckpt, evaluator)  # ckpt.best=true: checkpoints/best.pt at the best metrics.primary
    if early is not None and best is None:  # early stopping keeps best.pt too
        best = Best(early.metric)

    # ---- loss and optimisers, the grid's fixed latents, the health check
    ctx = build_step_context(cfg, G, D, views, device)
    grid_z = torch.randn(cfg.log.num_samples, G.z_dim, generator=torch.Generator().manual_seed(torch_seed(cfg.seed)))
    health = build_health(cfg.health, data, cfg.log.num_samples, out_dir / "checkpoints", main_proc,
                          loss=cfg.loss.name)  # Health/* and its warnings
    state = TrainState(cfg=cfg, shape=shape, G=G, D=D, ema=ema, ctx=ctx, grid_z=grid_z, health=health,
                       early=early, best=best, class_names=data.class_names if num_classes else None)
    return Built(device=device, data=data, state=state, evaluator=evaluator, channels_last=channels_last,
                 num_classes=num_classes)
