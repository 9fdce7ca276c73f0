"""trainer.early_stop=N: the run stops at the N-th evaluation in a row without a better metrics.primary."""

from __future__ import annotations

import logging

import pytest

from gantrain import checkpoint
from gantrain.errors import UserError
from gantrain.training.loop import train
from gantrain.training.stopping import EarlyStop
from tests.utils import FAST, make_cfg, tiny

# lr 1e-12: the weights do not move, so the metric (on fixed latents) never improves after the first evaluation
FROZEN = [*tiny("gan"), *FAST[:-1], "metrics=default", "metrics.every_n_steps=10", "metrics.num_samples=64",
          "data.batch_size=16", "optim.generator.lr=1e-12", "optim.discriminator.lr=1e-12", "trainer.max_steps=500",
          "log.every_n_steps=10", "model.ema_kimg=null"]


def test_the_rule():
    e = EarlyStop(2, "sine_ks")
    assert [e.update(v, s) for s, v in ((10, 0.5), (20, 0.4), (30, 0.45), (40, 0.4), (50, 0.3), (60, 0.3))] == \
        [False, False, False, True, False, False]
    assert (e.best, e.best_step, e.since) == (0.3, 50, 1)
    assert e.update(float("nan"), 70) and "the best was 0.3 at step 50" in e.reason(70)


def test_a_run_that_stops_improving_stops(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    result = train(make_cfg(*FROZEN, "trainer.early_stop=2"), tmp_path)
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert saved["step"] == 30  # evaluations at 10 (best), 20 and 30 (not better): stop
    assert saved["early_stop"]["best_step"] == 10 and saved["early_stop"]["since"] == 2
    assert checkpoint.load(tmp_path / "checkpoints" / "best.pt")["step"] == 10  # best.pt kept (ckpt.best implied)
    reason = [r.getMessage() for r in caplog.records if "early stop at step 30" in r.getMessage()]
    assert reason and "metrics.primary (sine_ks)" in reason[0], [r.getMessage() for r in caplog.records][-5:]
    assert result == pytest.approx(saved["early_stop"]["best"])  # the frozen run's value never changed
    with pytest.raises(UserError, match="trainer.early_stop=3 stops when metrics.primary"):
        train(make_cfg(*FROZEN, "trainer.early_stop=3", "metrics=off"), tmp_path / "no_metrics")
