"""trainer.accumulate=K: K micro-batches of batch/K per optimiser step == one step on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantrain import checkpoint
from gantrain.config import validate
from gantrain.distributed import collectives, launch
from gantrain.distributed.ddp import prepare_models, training_views
from gantrain.errors import UserError
from gantrain.training.loop import train
from tests.utils import FAST, make_cfg, tiny

TINY_GAN = [*tiny("gan"), *FAST, "model.discriminator.dropout=0"]


def _one_step(cfg, out_dir):
    """One D step (R1 due) and one G step, SGD, on this rank's part of fixed batches of 8, accumulated as
    ``trainer.accumulate`` says; saves the weights."""
    from gantrain.losses import GANLoss
    from gantrain.training.build import build_network
    from gantrain.training.steps import StepContext, d_step, g_step

    torch.manual_seed(0)
    shape = (cfg.data.num_points,)
    G = build_network(cfg.model.generator, "generator", shape)
    D = build_network(cfg.model.discriminator, "discriminator", shape)
    cpu = torch.device("cpu")
    G, D = prepare_models(G, D, False, cpu)
    G_run, D_run, G_learn, D_learn = training_views(G, D, cpu)
    g = torch.Generator().manual_seed(1)
    real, z1, z2 = (torch.randn(8, n, generator=g) for n in (shape[0], G.z_dim, G.z_dim))
    r, w = collectives.rank(), collectives.world_size()
    mine = slice(r * 8 // w, (r + 1) * 8 // w)
    off = torch.amp.GradScaler("cpu", enabled=False)
    t = StepContext(D=D, G_run=G_run, D_run=D_run, G_learn=G_learn, D_learn=D_learn,
                    opt_G=torch.optim.SGD(G.parameters(), lr=0.5), opt_D=torch.optim.SGD(D.parameters(), lr=0.5),
                    loss=GANLoss(r1_gamma=10.0, r1_interval=1), scaler_G=off, scaler_D=off,
                    accumulate=cfg.trainer.accumulate)
    loss_D, d_real, d_fake = d_step(t, real[mine], z1[mine], d_index=0)
    loss_G = g_step(t, z2[mine])
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "loss_D": loss_D, "loss_G": loss_G,
                "d_real": d_real, "d_fake": d_fake}, Path(out_dir) / f"rank{r}.pt")


def test_accumulated_step_equals_big_batch_step(tmp_path):
    """1 x 8 == 4 micro-batches of 2 == 2 ranks x 2 micro-batches of 2, R1 included, to 1e-6."""
    runs = {"big": [], "acc4": ["trainer.accumulate=4"], "ddp2_acc2": ["trainer.accumulate=2"]}
    for name, extra in runs.items():
        (tmp_path / name).mkdir()
        cfg = make_cfg(*TINY_GAN, *extra)
        if name.startswith("ddp"):
            launch.launch(_one_step, cfg, str(tmp_path / name), 2)
        else:
            _one_step(cfg, tmp_path / name)
    big = torch.load(tmp_path / "big" / "rank0.pt")
    acc = torch.load(tmp_path / "acc4" / "rank0.pt")
    ddp = [torch.load(tmp_path / "ddp2_acc2" / f"rank{r}.pt") for r in (0, 1)]
    for net in ("G", "D"):
        for k, v in big[net].items():
            for other, name in ((acc, "acc4"), (ddp[0], "ddp rank 0"), (ddp[1], "ddp rank 1")):
                torch.testing.assert_close(other[net][k], v, rtol=0, atol=1e-6, msg=f"{name}: {net}.{k}")
    # what the loop logs: the whole batch's mean loss and every example's D output
    torch.testing.assert_close(acc["loss_D"], big["loss_D"].detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(acc["loss_G"], big["loss_G"].detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(acc["d_real"], big["d_real"], rtol=0, atol=1e-6)
    assert acc["d_real"].shape[0] == 8 // make_cfg(*TINY_GAN).model.discriminator.pack  # one per packed pair


def test_accumulation_changes_nothing_but_memory_and_resumes_exactly(tmp_path):
    """A run with trainer.accumulate=2 resumes bit for bit (N + N == 2N); it is a different run from K=1 only
    through float rounding, and a batch not divisible by K is one sentence."""
    common = [*TINY_GAN, "trainer.accumulate=2", "data.batch_size=8", "data.size=64", "trainer.deterministic=true",
              "log.every_n_steps=2", "log.sample_every_n_steps=100", "ckpt.every_n_steps=100", "model.ema_kimg=null"]
    train(make_cfg(*common, "trainer.max_steps=6"), tmp_path / "one_go")
    train(make_cfg(*common, "trainer.max_steps=3"), tmp_path / "two_part")
    train(make_cfg(*common, "trainer.max_steps=6", "resume=auto"), tmp_path / "two_part")
    a = checkpoint.load(tmp_path / "one_go" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "two_part" / "checkpoints" / "last.pt")
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    with pytest.raises(UserError, match="data.batch_size=10 cannot be split into trainer.accumulate=4"):
        validate(make_cfg(*TINY_GAN, "trainer.accumulate=4", "data.batch_size=10"))
    with pytest.raises(UserError, match="trainer.accumulate=0"):
        validate(make_cfg(*TINY_GAN, "trainer.accumulate=0"))
