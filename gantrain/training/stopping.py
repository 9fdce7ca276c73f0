"""When the loop stops: at ``trainer.max_steps``, on a signal, or early (``trainer.early_stop=N``).

- Signals (:func:`stop_on_signals`): SIGINT/SIGTERM set a flag; the ranks agree on it at a log step
  (:func:`keep_going`), the loop finishes its step, saves and raises :class:`gantrain.errors.Interrupted`
  (:func:`interrupted`). A second Ctrl-C seconds later stops at once.
- Early stopping (:class:`EarlyStop`): stop when ``metrics.primary`` has not improved over the last N
  evaluations, the rule of data-efficient-gans (Zhao et al. 2020): training stops at the N-th evaluation in
  a row that is not better (lower) than the best so far. The best value, its step and the count are training
  state (in the checkpoint), so a resumed run goes on counting. ``train()`` returns the primary metric as
  always (its value at the last evaluation); the reason, with the best value and its step, is logged.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gantrain.distributed import collectives
from gantrain.errors import Interrupted, UserError


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


def keep_going(step: int, max_steps: int, stop: list[int], every: int) -> bool:
    """Whether the loop takes another step: ``max_steps`` not reached and no stop signal (the ranks agree on
    one at the log steps, every ``every`` steps)."""
    return step < max_steps and not collectives.agree_to_stop(stop, step, every)


def interrupted(stop: list[int], last_saved: Path | None) -> None:
    """Raise :class:`Interrupted` when a signal stopped the loop (``last_saved``: the checkpoint it left)."""
    if stop:
        raise Interrupted(stop[0], last_saved if collectives.is_main() else None)


class EarlyStop:
    def __init__(self, patience: int, metric: str):
        self.patience, self.metric = patience, metric
        self.best: float | None = None
        self.best_step: int | None = None
        self.since = 0  # evaluations since the best

    @staticmethod
    def build(trainer_cfg, evaluator) -> EarlyStop | None:
        n = trainer_cfg.get("early_stop")
        if not n:
            return None
        if evaluator is None or not evaluator.primary:
            raise UserError(f"trainer.early_stop={n} stops when metrics.primary stops improving, but this run "
                            "computes no metrics: turn them on (metrics=default) or set trainer.early_stop=null.")
        return EarlyStop(int(n), evaluator.primary)

    def update(self, value: float | None, step: int) -> bool:
        """Count this evaluation; True when the run should stop here."""
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best):
            self.best, self.best_step, self.since = float(value), int(step), 0
        else:
            self.since += 1
        return self.since >= self.patience

    def reason(self, step: int) -> str:
        best = "none (no finite value)" if self.best is None else f"{self.best:.6g} at step {self.best_step}"
        return (f"early stop at step {step}: metrics.primary ({self.metric}) has not improved over the last "
                f"{self.patience} evaluations (trainer.early_stop={self.patience}); the best was {best}")

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "since": self.since}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state and state.get("metric") == self.metric:
            self.best, self.best_step, self.since = state["best"], state["best_step"], int(state["since"])
