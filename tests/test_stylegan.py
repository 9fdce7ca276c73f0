"""StyleGAN networks: shapes, style mixing, truncation, noise, w_avg, shape checks, bf16, equalised lr.

Tiny widths (channel_base 256, at most 16 channels, w_dim 16) keep the whole file fast on a CPU.
"""

import math

import pytest
import torch

from gantrain.errors import UserError
from gantrain.models.layers import EqualLinear, MinibatchStdDev, ModulatedConv2d, NoiseInjection
from gantrain.models.stylegan import Discriminator, Generator, style_mixing_images, truncation_strip

Z = 16
TINY = {"channel_base": 256, "max_channels": 16}


def make_g(res=32, ch=3, **kw):
    args = dict(z_dim=Z, w_dim=Z, mapping_layers=2, **TINY)
    args.update(kw)
    return Generator((ch, res, res), **args)


def set_noise_strength(G, value):
    for m in G.modules():
        if isinstance(m, NoiseInjection):
            m.strength.data.fill_(value)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("ch", [1, 3])
def test_shapes(res, ch):
    G = make_g(res, ch)
    D = Discriminator((ch, res, res), **TINY)
    z = torch.randn(6, Z)
    ws = G.mapping(z)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    assert ws.shape == (6, G.num_ws, Z)
    img = G(z)
    assert img.shape == (6, ch, res, res)
    assert torch.isfinite(img).all()
    logits = D(img)
    assert logits.shape == (6,)
    # every style index is read by some layer, each by at most 2 (conv + toRGB share one)
    idx = [i for i, _ in G.style_layers()]
    assert sorted(set(idx)) == list(range(G.num_ws))
    # a batch size the mbstd group does not divide still works
    assert D(img[:5]).shape == (5,)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 16, 16), (3, 32, 64), (3, 48, 48), (4, 32, 32),
                                   (2, 64, 64), (64,), (32, 32)])
def test_invalid_shapes_raise_user_error(shape):
    with pytest.raises(UserError) as e:
        Generator(shape, **TINY)
    msg = str(e.value)
    assert msg.startswith("StyleGAN needs ")
    with pytest.raises(UserError):
        Discriminator(shape, **TINY)


def test_size_message_names_the_rule_and_the_size():
    with pytest.raises(UserError, match=r"square power-of-two images of at least 32x32; got 28x28"):
        Generator((1, 28, 28), **TINY)


def _styles_seen(G, z):
    """Runs ``G(z)`` with every modulated conv hooked; returns {ws index: [w inputs of that layer]}."""
    seen = {}
    handles = []
    for i, conv in G.style_layers():
        def hook(mod, args, i=i):
            seen.setdefault(i, []).append(args[1].detach().clone())
        handles.append(conv.register_forward_pre_hook(hook))
    try:
        G(z)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_style_mixing_changes_which_w_reaches_which_layer():
    G = make_g(64, style_mixing_prob=1.0).train()
    z = torch.randn(64, Z)
    w1 = G._map(z).detach()
    seen = _styles_seen(G, z)
    per_layer = torch.stack([seen[i][0] for i in range(G.num_ws)], dim=1)    # (N, num_ws, w_dim)
    from_z = torch.isclose(per_layer, w1[:, None], atol=1e-6).all(dim=2)     # (N, num_ws)
    crossovers = set()
    for n in range(z.shape[0]):
        c = int(from_z[n].long().sum())
        # layers [0, c) get w(z), layers [c, num_ws) all get one other w
        assert 1 <= c < G.num_ws, f"sample {n} was not mixed"
        assert from_z[n, :c].all() and not from_z[n, c:].any()
        other = per_layer[n, c:]
        assert torch.allclose(other, other[:1].expand_as(other))
        crossovers.add(c)
    assert len(crossovers) > 2, "the crossover layer should be random"


def test_no_style_mixing_in_eval_or_with_prob_zero():
    for G in (make_g(32, style_mixing_prob=1.0).eval(), make_g(32, style_mixing_prob=0.0).train()):
        z = torch.randn(8, Z)
        w1 = G._map(z).detach()
        seen = _styles_seen(G, z)
        for i in range(G.num_ws):
            assert torch.allclose(seen[i][0], w1, atol=1e-6)


def test_style_mixing_probability_is_respected():
    G = make_g(32, style_mixing_prob=0.5).train()
    z = torch.randn(2000, Z)
    w1 = G._map(z).detach()
    with torch.no_grad():
        ws = G._style_mix(G.mapping(z), z, 1.0, None)
    mixed = ~torch.isclose(ws[:, -1], w1, atol=1e-6).all(dim=1)
    assert 0.45 < mixed.float().mean().item() < 0.55


def test_truncation_psi_zero_gives_one_image():
    G = make_g(32, ch=3).eval()
    set_noise_strength(G, 0.2)
    G.w_avg.copy_(torch.randn(Z))
    z = torch.randn(5, Z)
    for mode in ("const", "none"):
        img = G(z, psi=0.0, noise_mode=mode)
        assert torch.allclose(img, img[:1].expand_as(img), atol=1e-5)
        # and without truncation the images differ
        img1 = G(z, psi=1.0, noise_mode=mode)
        assert (img1 - img1[:1]).abs().amax() > 1e-2
    # psi=0 maps to w_avg exactly; the cutoff leaves later layers alone
    ws = G.mapping(z, psi=0.0, truncation_cutoff=3)
    assert torch.allclose(ws[:, :3], G.w_avg.expand(5, 3, Z))
    assert torch.allclose(ws[:, 3:], G.mapping(z)[:, 3:])
    ws_half = G.mapping(z, psi=0.5)
    assert torch.allclose(ws_half, G.w_avg + 0.5 * (G.mapping(z) - G.w_avg), atol=1e-6)


def test_truncation_strip_and_style_mixing_images():
    G = make_g(32).train()
    set_noise_strength(G, 0.2)
    G.w_avg.copy_(torch.randn(Z))
    w_avg = G.w_avg.clone()
    z = torch.randn(3, Z)
    strip = truncation_strip(G, z, psis=(1.0, 0.5, 0.0))
    assert strip.shape == (9, 3, 32, 32)
    assert G.training and torch.equal(G.w_avg, w_avg)       # mode restored, w_avg untouched
    grid = strip.reshape(3, 3, 3, 32, 32)
    assert torch.allclose(grid[:, 2], grid[:1, 2].expand(3, -1, -1, -1), atol=1e-5)   # psi=0 column
    G.eval()
    assert torch.allclose(grid[:, 0], G(z, psi=1.0, noise_mode="const"), atol=1e-5)

    zr, zc = torch.randn(2, Z), torch.randn(3, Z)
    crossover = 4
    mix = style_mixing_images(G, zr, zc, crossover)
    assert mix.shape == (6, 3, 32, 32)
    wr, wc = G.mapping(zr), G.mapping(zc)
    i, j = 1, 2
    ws = torch.cat([wr[i:i + 1, :crossover], wc[j:j + 1, crossover:]], dim=1)
    assert torch.allclose(mix[i * 3 + j], G.synthesis(ws, noise_mode="const")[0], atol=1e-5)
    # crossover = num_ws gives the row images, 0 the column images
    rows = style_mixing_images(G, zr, zc, G.num_ws).reshape(2, 3, 3, 32, 32)
    assert torch.allclose(rows[:, 0], G(zr, noise_mode="const"), atol=1e-5)
    cols = style_mixing_images(G, zr, zc, 0).reshape(2, 3, 3, 32, 32)
    assert torch.allclose(cols[0], G(zc, noise_mode="const"), atol=1e-5)


def _high_frequency_share(x):
    spec = torch.fft.fft2(x).abs().square()
    f = torch.fft.fftfreq(x.shape[-1]).abs()
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    return ((spec * high).sum() / spec.sum()).item()


def test_noise_changes_fine_detail_only():
    G = make_g(64).eval()
    set_noise_strength(G, 0.1)
    z = torch.randn(8, Z)
    a, b = G(z, noise_mode="random"), G(z, noise_mode="random")
    other = G(torch.randn(8, Z), noise_mode="random")
    d_noise, d_z = a - b, a - other
    assert d_noise.abs().mean() > 1e-3                         # noise does something...
    assert d_noise.square().mean() < 0.25 * d_z.square().mean()   # ...much less than a new z
    assert _high_frequency_share(d_noise) > 3 * _high_frequency_share(d_z)   # ...and at fine scales
    # fresh noise per sample: the same z twice in a batch gives two images
    pair = G(z[:1].repeat(2, 1), noise_mode="random")
    assert (pair[0] - pair[1]).abs().mean() > 1e-3
    # const noise is reproducible and is noise; none adds nothing
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert (G(z, noise_mode="const") - G(z, noise_mode="none")).abs().mean() > 1e-3
    set_noise_strength(G, 0.0)
    assert torch.allclose(G(z, noise_mode="none"), G(z, noise_mode="random"), atol=1e-6)


def test_noise_scales_are_per_channel_and_learned():
    G = make_g(32).train()
    strengths = [m.strength for m in G.modules() if isinstance(m, NoiseInjection)]
    assert len(strengths) == 2 * len(G.blocks) - 1
    for s, block_layer in zip(strengths, [m for m in G.modules() if isinstance(m, ModulatedConv2d)
                                          and m.demodulate]):
        assert s.shape == (block_layer.out_channels,) and s.requires_grad
    # the scale of channel 1 reaches channel 1 only
    layer = NoiseInjection(4, 8)
    layer.strength.data = torch.tensor([0.0, 1.0, 0.0, 0.0])
    out = layer(torch.zeros(2, 4, 8, 8), noise_mode="random")
    assert out[:, 1].abs().mean() > 0.5
    assert torch.equal(out[:, [0, 2, 3]], torch.zeros(2, 3, 8, 8))
    set_noise_strength(G, 0.1)
    G(torch.randn(4, Z)).square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in strengths)


def test_w_avg_moves_in_training_only():
    G = make_g(32).train()
    z = torch.randn(16, Z)
    before = G.w_avg.clone()
    G(z)
    expected = G._map(z).mean(0).detach().lerp(before, 0.995)
    assert torch.allclose(G.w_avg, expected, atol=1e-6)
    assert not torch.equal(G.w_avg, before)
    G.eval()
    frozen = G.w_avg.clone()
    G(z)
    G.mapping(z)
    assert torch.equal(G.w_avg, frozen)
    assert "w_avg" in G.state_dict()


@pytest.mark.parametrize("res", [32, 64])
def test_bf16_autocast_forward_backward_is_finite(res):
    G = make_g(res).train()
    D = Discriminator((3, res, res), **TINY).train()
    set_noise_strength(G, 0.1)
    z = torch.randn(8, Z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z)
        logits = D(img)
        loss = torch.nn.functional.softplus(-logits).mean()
    assert img.dtype == torch.bfloat16
    assert torch.isfinite(img.float()).all() and torch.isfinite(logits.float()).all()
    loss.backward()
    for net in (G, D):
        for name, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # bf16 agrees with float32 to bf16 precision (no fp32-only maths silently broken)
    G.eval()
    with torch.no_grad():
        ref = G(z, noise_mode="const")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = G(z, noise_mode="const").float()
    assert (low - ref).square().mean().sqrt() < 0.05 * ref.square().mean().sqrt()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_demodulation_survives_huge_styles_under_autocast(dtype):
    """Styles around 1e6 would overflow float16 in x * s; demodulation makes their scale irrelevant."""
    conv = ModulatedConv2d(8, 8, 3, w_dim=Z)
    x = torch.randn(2, 8, 8, 8)
    w = torch.randn(2, Z) * 1e6
    ref = conv(x, w)
    with torch.autocast("cpu", dtype=dtype):
        out = conv(x, w)
    assert out.dtype == dtype
    out = out.float()
    assert torch.isfinite(out).all()
    assert ref.std() < 10                          # demodulated: unit scale whatever the style size
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_mapping_layers_get_the_lr_multiplier():
    G = make_g(32, mapping_lr_mul=0.01)
    assert len(G.mapping_net) == 2
    for layer in G.mapping_net:
        assert isinstance(layer, EqualLinear)
        fan_in = layer.in_features
        assert layer.weight_gain == pytest.approx(0.01 / math.sqrt(fan_in))
        assert layer.bias_gain == pytest.approx(0.01)
        # stored weights are N(0, 1)/0.01; the runtime weight is He-scaled
        assert 50 < layer.weight.std().item() < 200
        assert layer.effective_weight().std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.3)

    # what the multiplier means for training: one Adam step moves the runtime weights of a
    # mapping layer 100x less than those of an ordinary equalised layer of the same size
    def runtime_step(layer):
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
        before = layer.effective_weight().detach().clone()
        layer(torch.randn(32, Z)).square().mean().backward()
        opt.step()
        return (layer.effective_weight().detach() - before).abs().mean().item()

    mapping_step = runtime_step(G.mapping_net[1])
    plain_step = runtime_step(EqualLinear(Z, Z, activation="lrelu"))
    assert mapping_step / plain_step == pytest.approx(0.01, rel=0.1)


def test_synthesis_layers_use_equalised_lr():
    G = make_g(32)
    D = Discriminator((3, 32, 32), **TINY)
    for m in list(G.modules()) + list(D.modules()):
        if hasattr(m, "weight_gain") and isinstance(getattr(m, "weight", None), torch.nn.Parameter):
            fan_in = m.weight[0].numel()
            lr_mul = getattr(m, "lr_mul", 1.0)
            assert m.weight_gain == pytest.approx(lr_mul / math.sqrt(fan_in))
            assert m.weight.std().item() == pytest.approx(1 / lr_mul, rel=0.5)


def test_generator_and_discriminator_train():
    """A few optimiser steps on each network change their outputs in the intended direction."""
    G = make_g(32, ch=1).train()
    D = Discriminator((1, 32, 32), **TINY).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    real = torch.rand(16, 1, 32, 32) * 2 - 1
    z = torch.randn(16, Z)
    with torch.no_grad():
        gap0 = (D(real) - D(G(z))).mean().item()
    for _ in range(5):
        loss = torch.nn.functional.softplus(D(G(z).detach())).mean() + \
            torch.nn.functional.softplus(-D(real)).mean()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    with torch.no_grad():
        gap1 = (D(real) - D(G(z))).mean().item()
    assert gap1 > gap0
    D.requires_grad_(False)
    with torch.no_grad():
        fake0 = D(G(z)).mean().item()
    for _ in range(5):
        loss = torch.nn.functional.softplus(-D(G(z))).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    with torch.no_grad():
        assert D(G(z)).mean().item() > fake0


def test_minibatch_stddev():
    layer = MinibatchStdDev(group_size=4)
    x = torch.randn(8, 3, 4, 4)
    out = layer(x)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], x)
    # samples n and n + 4 form group members (index = g * M + m with M = 2 groups' stride)
    for m in range(2):
        members = x[m::2]                                         # 4 samples of group m
        expected = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        assert torch.allclose(out[m::2, 3], expected.expand(4, 4, 4), atol=1e-5)
    # in D, a sample's logit depends on the other members of its group (that is the point)
    D = Discriminator((1, 32, 32), mbstd_group=4, **TINY)
    real = torch.randn(4, 1, 32, 32)
    changed = real.clone()
    changed[1:] *= 3
    assert not torch.allclose(D(real)[0], D(changed)[0])
    D1 = Discriminator((1, 32, 32), mbstd_group=1, **TINY)
    assert torch.allclose(D1(real)[0], D1(changed)[0], atol=1e-6)


def test_evaluation_and_generation_samples_do_not_depend_on_the_global_random_state():
    """Metrics, sample grids and gantrain-generate sample with fixed noise: the same weights and latents give
    the same images whatever training has done to the global random stream."""
    from types import SimpleNamespace

    from gantrain.metrics import Evaluator
    from gantrain.models import sample

    G = make_g(32).eval()
    set_noise_strength(G, 0.1)
    z = torch.randn(4, Z)
    torch.manual_seed(1)
    a, plain_a = sample(G, z), G(z)
    torch.manual_seed(2)
    b, plain_b = sample(G, z), G(z)
    assert torch.equal(a, b) and not torch.equal(plain_a, plain_b)   # G's own default draws fresh noise
    evaluator = SimpleNamespace(num_samples=6, batch_size=4, device=torch.device("cpu"))
    torch.manual_seed(1)
    first = Evaluator.generate(evaluator, G)
    torch.manual_seed(2)
    assert torch.equal(first, Evaluator.generate(evaluator, G))
