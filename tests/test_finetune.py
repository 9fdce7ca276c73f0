"""Fine-tuning: init_from=CKPT (weights in, fresh step/optimisers/seed; mismatches refused), FreezeD, and both
with resume= and with DDP."""

from __future__ import annotations

import re

import pytest
import torch

from gantrain import checkpoint
from gantrain.distributed import launch
from gantrain.errors import UserError
from gantrain.training.build import build_network
from gantrain.training.finetune import d_blocks

from .test_checkpoint import GAN_SINE, run
from .test_distributed import _train_and_dump
from .utils import FAST, make_cfg, tiny


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def pretrained(tmp_path):
    """A 4-step MLP GAN on sine data, trained with seed 7."""
    run(tmp_path / "pre", *GAN_SINE, "trainer.max_steps=4", "seed=7")
    return tmp_path / "pre" / "checkpoints" / "last.pt"


def test_init_from_loads_the_weights_with_a_fresh_step_optimisers_and_seed(tmp_path, pretrained):
    src = checkpoint.load(pretrained)
    frozen_lr = ["optim.generator.lr=1e-30", "optim.discriminator.lr=1e-30"]  # the steps leave the weights as loaded
    run(tmp_path / "ft", *GAN_SINE, "trainer.max_steps=2", f"init_from={pretrained}", *frozen_lr)
    ft = checkpoint.load(tmp_path / "ft" / "checkpoints" / "last.pt")
    assert ft["step"] == 2
    # (the EMA is loaded too, but its ramp-up on this run's fresh image count makes it follow G at once)
    for net in ("G", "D"):
        for k, v in src[net].items():
            if v.is_floating_point():
                assert torch.allclose(ft[net][k], v, atol=1e-6), f"{net}.{k} was not loaded"
    assert all(s["step"] == 2 for s in ft["opt_G"]["state"].values())  # Adam started afresh
    assert not torch.equal(ft["grid_z"], src["grid_z"])                # this run's seed (0), not the source's (7)
    # the guard: without init_from the weights are another initialisation
    run(tmp_path / "scratch", *GAN_SINE, "trainer.max_steps=2", *frozen_lr)
    other = checkpoint.load(tmp_path / "scratch" / "checkpoints" / "last.pt")
    assert not all(torch.allclose(other["G"][k], v, atol=1e-6) for k, v in src["G"].items())


@pytest.mark.parametrize("override,fragment", [
    ("model.generator.hidden=[16,16]", "model.generator.hidden=[32, 32] but this run has"),
    ("model.z_dim=8", "model.z_dim"),
    ("data.num_points=32", "shape"),
])
def test_init_from_a_checkpoint_of_another_model_or_shape_is_one_sentence(tmp_path, pretrained, override,
                                                                          fragment):
    with pytest.raises(UserError) as e:
        run(tmp_path / "ft", *GAN_SINE, "trainer.max_steps=1", f"init_from={pretrained}", override)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_init_from_another_model_names_it(tmp_path, mnist_root):
    data = ["data=mnist", f"data.root={mnist_root}", "data.batch_size=8", "trainer.max_steps=1"]
    run(tmp_path / "dc", *tiny("dcgan"), *data)
    with pytest.raises(UserError, match="model=dcgan checkpoint but this run trains model=gan"):
        run(tmp_path / "ft", *tiny("gan"), *data, f"init_from={tmp_path / 'dc' / 'checkpoints' / 'last.pt'}")


def _linear_weights(state: dict) -> list[str]:
    """The MLP D's layer weights in order (their indices in net depend on whether D has dropout layers)."""
    return sorted((k for k in state if re.fullmatch(r"net\.\d+\.weight", k)), key=lambda k: int(k.split(".")[1]))


def test_a_resumed_fine_tune_continues_it(tmp_path, pretrained):
    """init_from + freeze_d for 2 steps, resumed for 2 more == 4 steps in one go, bit for bit: the resume does
    not load init_from's weights again; D's frozen first block is still the pretrained one."""
    common = [*GAN_SINE, f"init_from={pretrained}", "model.freeze_d=1", "trainer.deterministic=true"]
    run(tmp_path / "one", *common, "trainer.max_steps=4")
    run(tmp_path / "two", *common, "trainer.max_steps=2")
    run(tmp_path / "two", *common, "trainer.max_steps=4", "resume=auto")
    a, b = (checkpoint.load(tmp_path / d / "checkpoints" / "last.pt") for d in ("one", "two"))
    src = checkpoint.load(pretrained)
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resuming the fine-tune"
    first, second = _linear_weights(src["D"])[:2]
    assert torch.equal(a["D"][first], src["D"][first])  # frozen: D's first block
    assert not torch.equal(a["D"][second], src["D"][second])  # the next block trained


@pytest.mark.parametrize("model,shape,blocks", [("gan", (64,), 3), ("dcgan", (1, 32, 32), 4),
                                                ("stylegan", (1, 32, 32), 4)])
def test_freeze_d_blocks_of_every_model(model, shape, blocks):
    cfg = make_cfg(*tiny(model), "data=mnist")
    D = build_network(cfg.model.discriminator, "discriminator", shape)
    found = d_blocks(D)
    assert len(found) == blocks
    assert sum(p.numel() for b in found for m in b for p in m.parameters()) == sum(p.numel() for p in D.parameters())


def test_freeze_d_too_large_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="model.freeze_d=3 is out of range") as e:
        run(tmp_path / "x", *GAN_SINE, "trainer.max_steps=1", "model.freeze_d=3")
    assert "\n" not in str(e.value)


def test_fine_tune_with_freeze_d_on_two_ranks(tmp_path, pretrained):
    """DDP: the frozen block is left out of the all-reduce and stays as loaded; the ranks agree."""
    run_dir = tmp_path / "ddp" / "run"
    run_dir.mkdir(parents=True)
    cfg = make_cfg(*tiny("gan"), *FAST, "data=sine", "data.size=256", "data.batch_size=8", "trainer.max_steps=3",
                   f"init_from={pretrained}", "model.freeze_d=1", "trainer.devices=2")
    launch.run(_train_and_dump, cfg, str(run_dir))
    d0, d1 = (torch.load(tmp_path / "ddp" / "dumps" / f"rank{r}.pt") for r in (0, 1))
    src = checkpoint.load(pretrained)
    for k in d0["D"]:
        assert torch.equal(d0["D"][k], d1["D"][k]), k
    first, second = _linear_weights(src["D"])[:2]
    assert torch.equal(d0["D"][first], src["D"][first])
    assert not torch.equal(d0["D"][second], src["D"][second])
