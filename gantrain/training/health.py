"""Is the run healthy? ``Health/*`` scalars and one warning per condition, with its fix (``health.*``).

Signals, all from numbers the loop already has on the device and reads at log steps only:

- ``Health/rt``: D's overfitting heuristic r_t = E[sign D(real)] (the loop's D/rt, the quantity ADA steers):
  near 0 D cannot tell reals apart from fakes, near 1 it is sure of every real (overfitting, or winning);
- ``Health/gap``: D/real - D/fake, the mean of sigmoid(D(x)) on reals minus on fakes (0: balanced, 1: D wins);
- ``Health/diversity``: the per-pixel (per-point) standard deviation across the fixed-latent sample grid,
  relative to the same figure for as many fixed real examples (1: as varied as the data, 0: one image),
  computed when the sample grid is made (log.sample_every_n_steps), from the grid already on the device;
- ``Health/class_coverage``: the evaluator's class coverage where the run computes it (MNIST-like data).

Warnings (each once per run, on rank 0):

- D has won: D/fake below ``health.d_fake_below`` at each of the last ``health.patience`` log steps while
  Loss/G rose over them (the BCE losses only, nonsaturating and minimax, whose D outputs are logits; a
  Wasserstein critic's or LSGAN's outputs are not, and sigmoid(D) means nothing there);
- collapse: diversity below ``health.min_diversity`` at ``health.collapse_patience`` grids in a row (after
  the first ``health.warmup_steps`` steps, while G's initial outputs are still near-constant), or class
  coverage below ``health.min_coverage`` times the best seen; the warning names the newest kept checkpoint
  written at a healthy step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FIX = ("lower D's learning rate (optim.discriminator.lr), augment what D sees (augment=ada) or regularise it "
       "(loss.r1_gamma>0, e.g. loss=bce_r1)")


def spread(x: torch.Tensor) -> torch.Tensor:
    """The mean over pixels of the standard deviation across the batch (a device scalar)."""
    return x.detach().float().flatten(1).std(dim=0).mean()


class Health:
    def __init__(self, cfg, real: torch.Tensor, ckpt_dir: Path, logits: bool = True):
        self.cfg, self.ckpt_dir, self.logits = cfg, ckpt_dir, logits
        self.real_spread = float(spread(real))  # once, at setup
        self.history: list[tuple[float, float]] = []  # (D/fake, Loss/G) at the recent log steps
        self.diversity: float | None = None
        self.low_grids = 0                  # grids in a row below min_diversity
        self.coverage: float | None = None
        self.best_coverage = 0.0
        self.healthy_step = 0               # the newest log step at which no condition held
        self.warned: list[str] = []

    # ------------------------------------------------------------------ inputs
    @torch.no_grad()
    def grid(self, step: int, fake: torch.Tensor) -> dict[str, float]:
        """The fixed-latent sample grid of ``step`` (already read back for TensorBoard: this read is free);
        returns ``Health/diversity`` for that step (logged where it is measured, not repeated at each log)."""
        self.diversity = float(spread(fake)) / max(self.real_spread, 1e-12)
        if step >= self.cfg.warmup_steps and self.diversity < self.cfg.min_diversity:
            self.low_grids += 1
        else:
            self.low_grids = 0
        return {"Health/diversity": self.diversity}

    def metrics(self, values: dict[str, float]) -> dict[str, float]:
        """The evaluator's values at an evaluation step; returns ``Health/class_coverage`` where there is one."""
        if "class_coverage" not in values:
            return {}
        self.coverage = float(values["class_coverage"])
        self.best_coverage = max(self.best_coverage, self.coverage)
        return {"Health/class_coverage": self.coverage}

    # ------------------------------------------------------------------ the check at a log step
    def check(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """The Health/* scalars of this log step; warns once per condition that holds."""
        c = self.cfg
        out = {"Health/rt": values["D/rt"], "Health/gap": values["D/real"] - values["D/fake"]}
        self.history = [*self.history, (values["D/fake"], values["Loss/G"])][-c.patience:]
        d_won = (self.logits and len(self.history) == c.patience and all(f < c.d_fake_below for f, _ in self.history)
                 and self.history[-1][1] > self.history[0][1])
        covered = self.coverage is None or self.coverage >= c.min_coverage * self.best_coverage
        collapsed = self.low_grids >= c.collapse_patience or not covered
        if d_won:
            self._warn("d_won", f"step {step}: D has won: D/fake stayed below {c.d_fake_below} for {c.patience} "
                                f"log steps while Loss/G rose from {self.history[0][1]:.3g} to "
                                f"{self.history[-1][1]:.3g}; {FIX} (health=off silences this).")
        if collapsed:
            what = (f"the sample grid's diversity is {self.diversity:.3g} of the reals' (below {c.min_diversity})"
                    if self.low_grids >= c.collapse_patience else
                    f"class coverage fell to {self.coverage:.3g} (best {self.best_coverage:.3g})")
            self._warn("collapse", f"step {step}: mode collapse: {what}; {self.last_healthy()}; {FIX} "
                                   "(health=off silences this).")
        if not (collapsed or self.low_grids or (self.logits and self.history[-1][0] < c.d_fake_below)):
            self.healthy_step = step
        return out

    def last_healthy(self) -> str:
        """The newest kept periodic checkpoint at or before the last healthy log step."""
        steps = sorted((int(p.stem[5:]), p) for p in self.ckpt_dir.glob("step_*.pt") if p.stem[5:].isdigit())
        ok = [p for s, p in steps if s <= self.healthy_step]
        if ok:
            return f"the last healthy checkpoint is {ok[-1]} (step {self.healthy_step} was the last healthy log step)"
        return (f"no checkpoint from a healthy step is kept (the last healthy log step was {self.healthy_step}; "
                "save more often with ckpt.every_n_steps)")

    def _warn(self, key: str, message: str) -> None:
        if key not in self.warned:
            self.warned.append(key)
            log.warning(message)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "diversity": self.diversity, "low_grids": self.low_grids,
                "coverage": self.coverage, "best_coverage": self.best_coverage, "healthy_step": self.healthy_step,
                "warned": list(self.warned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.diversity, self.low_grids = state["diversity"], state["low_grids"]
        self.coverage, self.best_coverage = state["coverage"], state["best_coverage"]
        self.healthy_step, self.warned = state["healthy_step"], list(state["warned"])


def build_health(cfg, data, num_samples: int, ckpt_dir: Path, main_proc: bool,
                 loss: str = "nonsaturating") -> Health | None:
    """The run's health check (rank 0 only), or None with health=off."""
    if not (main_proc and cfg.enabled):
        return None
    return Health(cfg, data.real_samples(num_samples), ckpt_dir, logits=loss in ("nonsaturating", "minimax"))
