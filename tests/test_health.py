"""Health/* signals and warnings: a D that wins and a generator that collapses warn; the default run does not."""

from __future__ import annotations

import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gantrain import checkpoint
from gantrain.distributed import ddp
from gantrain.training.loop import train
from tests.utils import FAST, make_cfg, tiny

TINY = [*tiny("gan"), *FAST, "model.ema_kimg=null", "data.batch_size=32", "log.every_n_steps=10",
        "log.sample_every_n_steps=10"]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gantrain.training.health" and r.levelno >= logging.WARNING]


def test_a_discriminator_with_100x_the_learning_rate_on_a_tiny_set_has_won(tmp_path, caplog):
    """D lr 0.02 (100x the default) on 128 curves: D/fake goes to ~0.005 while Loss/G climbs; warned once."""
    caplog.set_level(logging.WARNING)
    train(make_cfg(*TINY, "data.size=128", "optim.discriminator.lr=0.02", "trainer.max_steps=150"), tmp_path)
    won = [m for m in _warnings(caplog) if "D has won" in m]
    assert len(won) == 1, _warnings(caplog)
    assert "optim.discriminator.lr" in won[0] and "augment=ada" in won[0] and "r1_gamma" in won[0]
    tags = EventAccumulator(str(tmp_path)).Reload().Tags()["scalars"]
    assert {"Health/rt", "Health/gap", "Health/diversity"} <= set(tags)
    # health=off: the same run is silent and writes no Health/*
    caplog.clear()
    train(make_cfg(*TINY, "data.size=128", "optim.discriminator.lr=0.02", "trainer.max_steps=150", "health=off"),
          tmp_path / "off")
    assert not _warnings(caplog)
    assert not [t for t in EventAccumulator(str(tmp_path / "off")).Reload().Tags()["scalars"] if "Health" in t]
    # a Wasserstein critic's outputs are not logits: its sigmoid near 0 is no sign that D has won
    from gantrain.training.health import Health

    critic = Health(make_cfg().health, torch.randn(64, 8), tmp_path, logits=False)
    for step in range(10, 100, 10):
        critic.check(step, {"D/rt": 1.0, "D/real": 0.01, "D/fake": 0.0, "Loss/G": float(step)})
    assert not critic.warned


def test_a_collapsed_generator_warns_and_names_the_last_healthy_checkpoint(tmp_path, caplog, monkeypatch):
    """From step 125 on, G's input layer is zeroed before every step: every latent gives the same curve (the
    extreme of mode collapse). The grids of steps 130 and 140 are collapsed, so the log step 150 warns, naming
    the newest checkpoint at or before the last healthy log step (130): step_0000120.pt."""
    caplog.set_level(logging.WARNING)
    captured = {}
    real = ddp.training_views

    def spy(G, D, *args, **kwargs):
        captured["G"] = G
        return real(G, D, *args, **kwargs)

    monkeypatch.setattr(ddp, "training_views", spy)

    def on_phase(step, phase):
        if phase == "step" and step > 125:
            with torch.no_grad():
                first = next(m for m in captured["G"].modules() if isinstance(m, torch.nn.Linear))
                first.weight.zero_()

    cfg = make_cfg(*TINY, "trainer.max_steps=160", "ckpt.every_n_steps=40", "ckpt.keep=5")
    train(cfg, tmp_path, on_phase=on_phase)
    collapse = [m for m in _warnings(caplog) if "collapse" in m]
    assert len(collapse) == 1, _warnings(caplog)
    assert "step 150:" in collapse[0] and "step_0000120.pt" in collapse[0], collapse[0]
    assert not [m for m in _warnings(caplog) if "D has won" in m]
    # the warning is training state: a resumed run does not repeat it
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["health"]["warned"] == ["collapse"]
    caplog.clear()
    train(make_cfg(*TINY, "trainer.max_steps=190", "ckpt.every_n_steps=40", "ckpt.keep=5", "resume=auto"), tmp_path,
          on_phase=on_phase)
    assert not [m for m in _warnings(caplog) if "collapse" in m]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_run_is_healthy(tmp_path, caplog, seed):
    """`gantrain` as it comes (the MLP GAN on sine curves), shortened: no warning, for three seeds."""
    caplog.set_level(logging.WARNING)
    train(make_cfg(*FAST, f"seed={seed}", "trainer.max_steps=200", "log.every_n_steps=10",
                   "log.sample_every_n_steps=20"), tmp_path)
    assert not _warnings(caplog)


def test_falling_class_coverage_is_a_collapse(tmp_path, caplog):
    """Where the evaluator computes class coverage (MNIST-like data), a fall below health.min_coverage of its
    best warns; Health/class_coverage is logged."""
    from gantrain.training.health import Health

    caplog.set_level(logging.WARNING)
    health = Health(make_cfg().health, torch.randn(64, 8), tmp_path)
    values = {"D/rt": 0.5, "D/real": 0.6, "D/fake": 0.4, "Loss/G": 1.0}
    for step, coverage in ((100, 0.6), (200, 0.9), (300, 0.5), (400, 0.4)):
        scalars = {**health.metrics({"classifier_fd": 1.0, "class_coverage": coverage}), **health.check(step, values)}
        assert scalars["Health/class_coverage"] == coverage
    collapse = [m for m in _warnings(caplog) if "collapse" in m]
    assert len(collapse) == 1 and "step 400: mode collapse: class coverage fell to 0.4 (best 0.9)" in collapse[0]
    assert "step 300 was the last healthy" in collapse[0] or "last healthy log step was 300" in collapse[0]
