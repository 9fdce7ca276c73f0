"""The MLP GAN's options against mode collapse: PacGAN packing and the minibatch-stddev feature in D,
BatchNorm in G. Each is checked on the network and in a short training run that resumes exactly."""

from __future__ import annotations

import pytest
import torch

from gantrain.errors import UserError
from gantrain.models import conditional, mlp
from tests.test_methods import GAN_SINE, assert_exact_resume


def test_pack_scores_consecutive_samples_together():
    torch.manual_seed(0)
    D = mlp.Discriminator((6,), hidden=(16,), dropout=0, pack=2)
    assert D.net[1].in_features == 12                         # two samples side by side
    x = torch.randn(8, 6)
    out = D(x)
    assert out.shape == (4,)
    assert torch.allclose(out[1], D.net(torch.cat([x[2], x[3]])[None]).view(-1)[0])
    with pytest.raises(UserError, match="divisible"):
        D(torch.randn(7, 6))
    with pytest.raises(UserError, match="conditional"):
        conditional.MLPDiscriminator((6,), num_classes=3, hidden=(16,), pack=2)


def test_mbstd_makes_a_score_depend_on_its_group_only():
    torch.manual_seed(0)
    D = mlp.Discriminator((6,), hidden=(16,), dropout=0, mbstd=4)
    assert D.net[-1].in_features == 17                         # one more feature before the output
    x = torch.randn(8, 6)
    y = x.clone()
    y[2] += 3.0                           # groups as ProGAN's: samples i, i + N/4, ... (here 0, 2, 4, 6)
    a, b = D(x), D(y)
    assert not torch.allclose(a[[0, 4, 6]], b[[0, 4, 6]])       # its group-mates' scores move
    assert torch.allclose(a[1::2], b[1::2])                     # the other group's do not
    plain = mlp.Discriminator((6,), hidden=(16,), dropout=0)
    assert torch.allclose(plain(x)[0], plain(y)[0])
    cond = conditional.MLPDiscriminator((6,), num_classes=3, hidden=(16,), mbstd=4)
    assert cond(x, torch.zeros(8, dtype=torch.long)).shape == (8,)


def test_generator_batch_norm_after_every_hidden_layer_but_the_first():
    G = mlp.Generator((64,), z_dim=4, hidden=[8, 16, 32], batch_norm=True)
    assert [m.num_features for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d)] == [16, 32]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in mlp.Generator((64,), z_dim=4).modules())
    assert G(torch.randn(5, 4)).shape == (5, 64)


def test_pack_mbstd_and_batch_norm_train_and_resume_exactly(tmp_path):
    a = assert_exact_resume(tmp_path, [*GAN_SINE, "model.discriminator.pack=2", "model.discriminator.mbstd=4",
                                       "model.generator.batch_norm=true"], n=3)
    assert a["D"]["net.1.weight"].shape[1] == 2 * 64 and any("running_mean" in k for k in a["G"])


def test_the_sine_default_packs_and_other_data_do_not():
    from gantrain.config import validate
    from tests.utils import make_cfg

    sine, digits = make_cfg(), make_cfg("data=mnist")           # conf/model_data/gan_sine.yaml: gan + sine only
    assert (sine.model.discriminator.pack, sine.model.ema_kimg, sine.model.ema_rampup) == (2, 40, 0.1)
    assert (digits.model.discriminator.pack, digits.model.ema_kimg, digits.model.ema_rampup) == (1, 10, 0.05)
    assert make_cfg("experiment=sngan_sine").model.discriminator.pack == 1   # the presets as measured
    assert make_cfg("model.discriminator.pack=1").model.discriminator.pack == 1  # the command line wins
    with pytest.raises(UserError, match="pack=2 needs micro-batches divisible"):
        validate(make_cfg("data.batch_size=12", "trainer.accumulate=4"))
