"""Where augmentation acts in the D and G steps (gantrain/steps.py): every image D sees goes through the same
augmentation (reals, fakes, the G step's fakes, R1's reals), and G's gradient passes through every op."""

from __future__ import annotations

import pytest
import torch

from gantrain.augment import ADA_OPS, DIFFAUG_OPS, Augment
from gantrain.losses import GANLoss
from gantrain.models.dcgan import Discriminator, Generator
from gantrain.training.steps import StepContext, d_step, g_step

SHAPE = (3, 16, 16)


class Recording(Augment):
    """An Augment that notes what it is called on: (requires_grad, has a graph back to G, the tensor)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls: list[tuple[bool, bool, torch.Tensor]] = []

    def __call__(self, x):
        self.calls.append((x.requires_grad, x.grad_fn is not None, x))
        return super().__call__(x)


def trainee(augment, r1_gamma=0.0):
    torch.manual_seed(0)
    G, D = Generator(SHAPE, z_dim=8, base_channels=8), Discriminator(SHAPE, base_channels=8)
    off = torch.amp.GradScaler("cpu", enabled=False)
    return StepContext(D=D, G_run=G, D_run=D, G_learn=G, D_learn=D, opt_G=torch.optim.SGD(G.parameters(), lr=0.01),
                       opt_D=torch.optim.SGD(D.parameters(), lr=0.01), loss=GANLoss(r1_gamma=r1_gamma, r1_interval=1),
                       scaler_G=off, scaler_D=off, augment=augment)


def test_every_image_d_sees_goes_through_the_augmentation():
    aug = Recording("diffaug", DIFFAUG_OPS, device=torch.device("cpu"))
    t = trainee(aug, r1_gamma=1.0)
    real = torch.rand(4, *SHAPE) * 2 - 1
    d_step(t, real, torch.randn(4, 8), d_index=0)
    assert len(aug.calls) == 3  # reals, fakes, R1's reals
    (_, _, reals), (_, fake_graph, _), (r1_grad, _, r1_reals) = aug.calls
    assert torch.equal(reals, real) and not fake_graph  # the D step's fakes carry no graph into G
    assert r1_grad and torch.equal(r1_reals, real)  # R1 differentiates D(aug(x)) w.r.t. the un-augmented reals
    aug.calls.clear()
    g_step(t, torch.randn(4, 8), 0)
    assert len(aug.calls) == 1 and aug.calls[0][1]  # the G step's fakes, with their graph back to G


@pytest.mark.parametrize("name,op", [("diffaug", op) for op in DIFFAUG_OPS] + [("ada", op) for op in ADA_OPS])
def test_g_gets_a_gradient_through_every_op(name, op):
    """The G step's gradient reaches every weight of G through each op alone (at p=1 for ADA), and it is
    not a constant: another batch of latents gives another gradient."""
    aug = Augment(name, (op,), device=torch.device("cpu"), p=1.0)
    t = trainee(aug)
    grads = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        g_step(t, torch.randn(8, 8), 0)
        grads.append(torch.cat([p.grad.flatten() for p in t.G_run.parameters()]))
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in t.G_run.parameters())
    assert not torch.allclose(*grads)

