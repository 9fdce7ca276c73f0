"""``ckpt.best=true``: keep ``checkpoints/best.pt``, the checkpoint of the step with the best primary metric.

    best = Best.build(cfg.ckpt, evaluator)        # None when ckpt.best=false; a UserError without metrics
    if best and best.update(evaluator.primary_value, step): save this step, then best.keep(last.pt)

The primary metric is minimised (``metrics.primary``). ``best.pt`` is a hard link to that step's last.pt (a
copy where the file system has no links), like the periodic step files. The best value and its step are
training state (``state_dict`` in the checkpoint), so a resumed run only replaces best.pt by a better one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gantrain import checkpoint
from gantrain.errors import UserError


class Best:
    def __init__(self, metric: str):
        self.metric, self.value, self.step = metric, None, None

    @staticmethod
    def build(ckpt_cfg, evaluator) -> Best | None:
        if not ckpt_cfg.get("best"):
            return None
        if evaluator is None or not evaluator.primary:
            raise UserError("ckpt.best=true keeps the checkpoint with the best metrics.primary, but this run "
                            "computes no metrics: turn them on (metrics=default) or set ckpt.best=false.")
        return Best(evaluator.primary)

    def update(self, value: float | None, step: int) -> bool:
        """Whether ``value`` at ``step`` is a new best (lower, finite)."""
        if value is None or not math.isfinite(value) or (self.value is not None and value >= self.value):
            return False
        self.value, self.step = float(value), int(step)
        return True

    def keep(self, last: Path) -> Path:
        return checkpoint.link_beside(last, "best.pt")

    def scalars(self) -> dict[str, float]:
        return {f"Best/{self.metric}": self.value, "Best/step": self.step}

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """The best so far of a resumed run (ignored when it measured another metric)."""
        if state and state.get("metric") == self.metric and state.get("value") is not None:
            self.value, self.step = float(state["value"]), int(state["step"])
