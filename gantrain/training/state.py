"""The training state: what a checkpoint holds, written (:meth:`TrainState.state_dict`) and read back
(:meth:`TrainState.load`) side by side, and where a run starts from (:func:`resume`: ``resume=PATH|auto``,
or ``init_from=CKPT``'s weights for a fine-tune).

A resume is bit-exact: weights, EMA, optimisers, AMP scalers, ADA's p, the regularisers' running means, the
health and early-stop counters, the best metric, the sample-grid latents and every rank's RNG streams.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gantrain import checkpoint, runs
from gantrain.distributed import collectives
from gantrain.errors import UserError
from gantrain.runtime import seed_everything
from gantrain.summaries import flatten
from gantrain.training import finetune
from gantrain.training.best import Best
from gantrain.training.health import Health
from gantrain.training.steps import EMA, StepContext
from gantrain.training.stopping import EarlyStop

log = logging.getLogger(__name__)

# keys that may differ between a checkpoint and the run that resumes it
RESUME_SAFE = ("trainer.max_steps", "trainer.device", "trainer.compile", "trainer.devices", "log.", "ckpt.",
               "resume", "metrics.", "data.root", "data.download", "data.cache_dir", "data.decode_workers",
               "data.max_device_bytes", "health.")

IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")  # how an optimiser runs, not what it does


def load_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """``opt.load_state_dict(saved)`` keeping this run's implementation (fused or not): the saved groups would
    otherwise replace it, and a CPU checkpoint resumed on a GPU would lose its fused kernels (which fp16's
    GradScaler has already been told about)."""
    groups = [{**old, **{k: new[k] for k in IMPLEMENTATION if k in new}}
              for old, new in zip(saved["param_groups"], opt.param_groups)]
    opt.load_state_dict({**saved, "param_groups": groups})


@dataclass(kw_only=True)
class TrainState:
    """Everything a checkpoint holds: the plain networks ``G``, ``D`` (DDP's wrappers live in ``ctx``), the
    EMA, the step context (optimisers, scalers, loss, augmentation), the run's trackers, the grid latents."""

    cfg: DictConfig
    shape: tuple[int, ...]
    G: torch.nn.Module
    D: torch.nn.Module
    ema: EMA | None
    ctx: StepContext
    grid_z: torch.Tensor
    health: Health | None = None
    early: EarlyStop | None = None
    best: Best | None = None
    class_names: list[str] | None = None  # conditional runs: G(z, c) for these
    step: int = 0

    def generator(self) -> torch.nn.Module:
        """The generator to sample from (grids, metrics): the EMA one when the run keeps an EMA."""
        return self.ema.generator() if self.ema else self.G

    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint mapping at this step; ``rng``: every rank's RNG streams."""
        cfg, ctx = self.cfg, self.ctx
        return {
            "format_version": checkpoint.FORMAT_VERSION, "step": self.step, "data_shape": list(self.shape),
            "model": cfg.model.name, "data": cfg.data.name,
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.ema.state_dict() if self.ema else None,
            "opt_G": ctx.opt_G.state_dict(), "opt_D": ctx.opt_D.state_dict(),
            "scaler_G": ctx.scaler_G.state_dict(), "scaler_D": ctx.scaler_D.state_dict(),
            "grid_z": self.grid_z.cpu(), "rng": rng,
            "augment": ctx.augment.state_dict() if ctx.augment is not None else None,
            "health": self.health.state_dict() if self.health is not None else None,
            "early_stop": self.early.state_dict() if self.early is not None else None,
            "loss": ctx.loss.state_dict(), "best": self.best.state_dict() if self.best is not None else None,
            **({"class_names": self.class_names} if self.class_names is not None else {}),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "overrides": runs.task_overrides(),  # how the run was started (resume=PATH composes with them)
        }

    def load(self, saved: dict[str, Any], path: Path) -> None:
        """The other half: this run's objects from checkpoint ``saved`` (read from ``path``), RNG streams last."""
        ctx, rank, world = self.ctx, collectives.rank(), collectives.world_size()
        restoring = functools.partial(checkpoint.restoring, path)  # a mismatch: one sentence naming it
        for name, target in (("G", self.G), ("D", self.D), ("G_ema", self.ema.model if self.ema else None),
                             ("opt_G", ctx.opt_G), ("opt_D", ctx.opt_D), ("scaler_G", ctx.scaler_G),
                             ("scaler_D", ctx.scaler_D),
                             ("augment", ctx.augment), ("health", self.health),  # ADA's p and its r_t sums
                             ("loss", ctx.loss), ("best", self.best)):  # the path-length mean; the best so far
            with restoring(name):
                if isinstance(target, torch.optim.Optimizer):
                    load_optimizer(target, saved[name])
                elif target is not None and saved.get(name) is not None:
                    target.load_state_dict(saved[name])
        if self.early is not None:
            self.early.load_state_dict(saved.get("early_stop"))
        grid_z = saved["grid_z"].cpu()
        if grid_z.shape[1] != self.G.z_dim:
            raise UserError(f"checkpoint {path} has a bad grid_z (latents of size {grid_z.shape[1]}, the "
                            f"generator takes {self.G.z_dim}): the file is damaged or was edited; use another "
                            "checkpoint.")
        self.grid_z, self.step = grid_z, saved["step"]
        if len(saved["rng"]) == world or rank == 0:  # every rank's RNG streams were saved
            with restoring("rng"):
                checkpoint.set_rng_state(saved["rng"][rank])
        else:  # written by another number of processes: rank 0 goes on, the others start new streams
            seed_everything(self.cfg.seed + rank + 1_000_003 * self.step)
        if len(saved["rng"]) != world and rank == 0:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the random streams of "
                        "ranks > 0 start afresh (training goes on; not bit-identical to an uninterrupted run)",
                        len(saved["rng"]), world)


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


def resume_path(cfg: DictConfig, out_dir: Path) -> Path | None:
    """The checkpoint ``resume=`` names (``auto``: the newest in ``out_dir``, None when there is none)."""
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        found = checkpoint.find_latest(out_dir)
        if found is None:
            log.info("resume=auto: no checkpoint in %s yet, starting a new run", out_dir / "checkpoints")
        return found
    return Path(cfg.resume).expanduser()


def resume(state: TrainState, out_dir: Path, device: torch.device) -> Path | None:
    """Where the run starts: a checkpoint to resume (its path is returned), a fine-tune's weights, or fresh."""
    cfg = state.cfg
    resume_from = collectives.broadcast_object(resume_path(cfg, out_dir))  # rank 0's run dir decides
    if resume_from is not None:
        saved = checkpoint.load(resume_from, map_location="cpu")  # load_state_dict copies onto the device
        check_resumable(saved, cfg, state.shape)
        state.load(saved, resume_from)
        log.info("resumed from %s at step %d", resume_from, state.step)
    elif cfg.init_from:  # fine-tuning: trained weights, this run's step, optimisers and seed
        finetune.init_from(cfg.init_from, cfg, state.shape, state.G, state.D, state.ema)
        log.info("fine-tuning the weights of %s", cfg.init_from)
    state.grid_z = state.grid_z.to(device)
    return resume_from
