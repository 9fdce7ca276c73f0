"""The GAN losses on known logits, the seeds' label tricks, and R1 against a hand-computed value."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gantrain.losses import GANLoss

REAL, FAKE = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_nonsaturating_and_minimax_match_their_formulas():
    ns, mm = GANLoss("nonsaturating"), GANLoss("minimax")
    d = sum(softplus(-r) for r in REAL.tolist()) / 2 + sum(softplus(f) for f in FAKE.tolist()) / 2
    assert ns.d_loss(REAL, FAKE).item() == pytest.approx(d) == mm.d_loss(REAL, FAKE).item()
    # G: non-saturating -log D(G(z)); minimax log(1 - D(G(z)))
    assert ns.g_loss(FAKE).item() == pytest.approx(sum(softplus(-f) for f in FAKE.tolist()) / 2)
    assert mm.g_loss(FAKE).item() == pytest.approx(-sum(softplus(f) for f in FAKE.tolist()) / 2)


def test_hinge_and_least_squares_match_their_formulas():
    hinge, ls = GANLoss("hinge"), GANLoss("least_squares")
    assert hinge.d_loss(REAL, FAKE).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert hinge.g_loss(FAKE).item() == pytest.approx(1.25)
    assert ls.d_loss(REAL, FAKE).item() == pytest.approx(0.5 * ((1 + 4) / 2 + (0.25 + 9) / 2))
    assert ls.g_loss(FAKE).item() == pytest.approx(0.5 * (0.25 + 16) / 2)


def test_label_smoothing_moves_the_real_target_only():
    plain, smooth = GANLoss(), GANLoss(label_smoothing=0.1)
    real, fake = torch.zeros(4), torch.zeros(4)
    # at logit 0 the BCE is log 2 whatever the target; away from it the smoothed target costs more
    assert smooth.d_loss(real + 5, fake - 5).item() > plain.d_loss(real + 5, fake - 5).item()
    assert smooth.d_loss(real + 5, fake + 5).item() - plain.d_loss(real + 5, fake + 5).item() == pytest.approx(
        smooth.d_loss(real + 5, fake - 5).item() - plain.d_loss(real + 5, fake - 5).item())


def test_label_noise_flips_about_p_of_the_labels():
    torch.manual_seed(0)
    loss = GANLoss(label_noise=0.25)
    targets = loss._targets(torch.zeros(100_000), real=True)
    assert targets.mean().item() == pytest.approx(0.75, abs=0.01)


def test_r1_matches_a_hand_computed_value():
    """D(x) = w . x + b has grad_x D = w for every sample, so R1 = gamma/2 * |w|^2 * interval."""
    D = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    with torch.no_grad():
        D[1].weight.copy_(torch.arange(12.0).view(1, 12) / 10)
    loss = GANLoss(r1_gamma=4.0, r1_interval=8)
    penalty = loss.r1(D, torch.randn(5, 3, 2, 2))
    assert penalty.item() == pytest.approx(4.0 / 2 * (torch.arange(12.0) / 10).square().sum().item() * 8)
    # and it is differentiable w.r.t. D's weights (it must train D)
    penalty.backward()
    assert D[1].weight.grad.abs().sum() > 0


def test_r1_of_a_quadratic_discriminator():
    """D(x) = sum x^2 has grad 2x: R1 = gamma/2 * mean_i |2 x_i|^2 (interval 1)."""
    class Quadratic(nn.Module):
        def forward(self, x):
            return x.square().flatten(1).sum(1)

    x = torch.randn(3, 1, 4, 4)
    penalty = GANLoss(r1_gamma=1.0, r1_interval=1).r1(Quadratic(), x)
    assert penalty.item() == pytest.approx(0.5 * (2 * x).square().flatten(1).sum(1).mean().item(), rel=1e-5)


def test_lazy_r1_schedule():
    loss = GANLoss(r1_gamma=1.0, r1_interval=4)
    assert [loss.r1_due(i) for i in range(9)] == [True, False, False, False, True, False, False, False, True]
    assert not any(GANLoss(r1_gamma=0.0).r1_due(i) for i in range(8))


def test_d_step_trains_on_r1_but_reports_the_gan_loss():
    """Loss/D is the GAN loss: it does not jump on the steps lazy R1 is due, while D's update includes R1."""
    from gantrain.models.mlp import Discriminator, Generator
    from gantrain.training.steps import StepContext, d_step

    def trainee(r1_gamma):
        torch.manual_seed(0)
        G, D = Generator((8,), z_dim=4, hidden=[16]), Discriminator((8,), hidden=[16], dropout=0.0)
        off = torch.amp.GradScaler("cpu", enabled=False)
        return StepContext(D=D, G_run=G, D_run=D, G_learn=G, D_learn=D, opt_G=torch.optim.SGD(G.parameters(), lr=0.1),
                           opt_D=torch.optim.SGD(D.parameters(), lr=0.1),
                           loss=GANLoss(r1_gamma=r1_gamma, r1_interval=1), scaler_G=off, scaler_D=off)

    real, z = torch.randn(6, 8), torch.randn(6, 4)
    plain, with_r1 = trainee(0.0), trainee(10.0)
    loss_plain = d_step(plain, real, z, d_index=0)[0]
    loss_r1 = d_step(with_r1, real, z, d_index=0)[0]
    assert torch.equal(loss_plain, loss_r1)
    assert not all(torch.equal(a, b) for a, b in zip(plain.D.parameters(), with_r1.D.parameters()))
