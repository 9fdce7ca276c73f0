"""Differentiable augmentation (gantrain/augment.py): what each op does, ADA's p, config errors, the logs."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from gantrain.augment import ADA_OPS, Augment, build_augment
from gantrain.config import AugmentConfig
from gantrain.errors import UserError
from gantrain.training.loop import train

from .test_checkpoint import scalar_steps
from .utils import FAST, make_cfg, tiny


def cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(AugmentConfig), kw)


def images(n=16, c=3, side=16, seed=0):
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_ada_at_p0_is_the_identity_and_at_p1_changes_every_image():
    x = images()
    aug = build_augment(cfg(name="ada", p=0.0), shape=(3, 16, 16), batch=16, world=1, device=torch.device("cpu"))
    assert torch.allclose(aug(x), x, atol=1e-5)  # the identity warp, up to rounding
    aug = build_augment(cfg(name="ada", p=1.0), shape=(3, 16, 16), batch=16, world=1, device=torch.device("cpu"))
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and all(not torch.allclose(a, b) for a, b in zip(x, y))


def test_flips_turns_and_integer_shifts_move_pixels_without_blurring():
    """Geometric ops on the pixel grid: every output pixel is one input pixel (no interpolation)."""
    x = images(n=32)
    aug = Augment("ada", ("xflip", "rotate90", "translation"), device=torch.device("cpu"), p=1.0)
    torch.manual_seed(1)
    y = aug(x)
    for a, b in zip(x, y):
        values = set(a.flatten().tolist())
        assert all(min(abs(v - u) for u in values) < 1e-5 for v in b.flatten().tolist())
    flip = Augment("ada", ("xflip",), device=torch.device("cpu"), p=1.0)
    assert torch.allclose(flip(x), x.flip(-1), atol=1e-6)


@pytest.mark.parametrize("name", ["diffaug", "ada"])
def test_augmentation_is_differentiable_with_respect_to_the_images(name):
    x = images(n=4).requires_grad_(True)
    aug = build_augment(cfg(name=name, p=1.0), shape=(3, 16, 16), batch=4, world=1, device=torch.device("cpu"))
    aug(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaug_policy_picks_the_ops():
    x = images(n=8)
    cut = Augment("diffaug", ("cutout",), device=torch.device("cpu"))
    y = cut(x)
    holes = (y == 0) & (x != 0)
    # a square of half the side (8x8) in every channel of each image, cut off where it crosses the border
    assert all(0 < int(h.sum()) <= 3 * 8 * 8 and torch.equal(h[0], h[1]) for h in holes)
    shift = Augment("diffaug", ("translation",), device=torch.device("cpu"))
    assert (shift(x) == 0).any() and not torch.equal(shift(x), x)


def test_ada_moves_p_towards_the_target_at_its_speed():
    aug = build_augment(cfg(name="ada", interval=4, ada_kimg=1), shape=(1, 8, 8), batch=10, world=1,
                        device=torch.device("cpu"))
    assert aug.speed == pytest.approx(10 * 4 / 1000)
    confident = torch.ones(10)                   # D says "real" to every real: r_t = 1 > 0.6
    for i in range(8):
        aug.observe(confident, i)
    assert aug.p.item() == pytest.approx(2 * aug.speed)  # adjusted twice (after D steps 3 and 7)
    unsure = torch.tensor([1.0] * 5 + [-1.0] * 5)  # r_t = 0 < 0.6: p goes down again, never below 0
    for i in range(8, 20):
        aug.observe(unsure, i)
    assert aug.p.item() == 0.0
    fixed = build_augment(cfg(name="ada", p=0.3), shape=(1, 8, 8), batch=10, world=1, device=torch.device("cpu"))
    for i in range(8):
        fixed.observe(confident, i)
    assert fixed.p.item() == pytest.approx(0.3)


@pytest.mark.parametrize("overrides,fragment", [
    (["augment=ada", "data=sine"], "sine"),
    (["augment=diffaug", "augment.policy=[translation,blur]"], "augment.policy"),
    (["augment=ada", "augment.p=1.5"], "augment.p"),
    (["augment=ada", "augment.target=0"], "augment.target"),
])
def test_bad_augment_settings_are_one_sentence(tmp_path, mnist_root, overrides, fragment):
    data = [] if "data=sine" in overrides else ["data=mnist", f"data.root={mnist_root}"]
    with pytest.raises(UserError, match=fragment) as e:
        train(make_cfg(*FAST, *tiny("dcgan" if data else "gan"), *data, *overrides, "trainer.max_steps=1"), tmp_path)
    assert "\n" not in str(e.value)


def test_aug_p_and_rt_are_logged(tmp_path, mnist_root):
    train(make_cfg(*FAST, *tiny("dcgan"), "data=mnist", f"data.root={mnist_root}", "data.batch_size=8",
                   "augment=ada", "trainer.max_steps=4", "log.every_n_steps=2"), tmp_path)
    steps = scalar_steps(tmp_path)
    assert steps["Aug/p"] == steps["D/rt"] == [2, 4]


def test_every_ada_op_is_known():
    assert set(AugmentConfig().ops) == set(ADA_OPS)
