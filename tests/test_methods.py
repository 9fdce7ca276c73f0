"""The methods researchers compare: spectral normalisation, WGAN-GP, StyleGAN2's path-length regulariser and
keeping the best checkpoint. Each trains every model it applies to, resumes exactly and runs under 2 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantrain import checkpoint
from gantrain.distributed import collectives, launch
from gantrain.errors import UserError
from gantrain.losses import GANLoss
from gantrain.models import dcgan, mlp
from gantrain.training.loop import train
from tests.test_distributed import _train_and_dump
from tests.utils import FAST, make_cfg, tiny

GAN_SINE = [*tiny("gan"), "data=sine", "data.size=256", "data.batch_size=8"]
SN = "model.discriminator.spectral_norm=true"
WGAN_GP = ["loss=wgan_gp", "optim=wgan_gp", "trainer.d_steps=2"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def folder(root: Path, model: str) -> list[str]:
    return [*tiny(model), "data=folder", f"data.root={root}", "data.resolution=16" if model == "dcgan"
            else "data.resolution=32", "data.batch_size=4"]


def run(out: Path, *overrides: str) -> float:
    return train(make_cfg(*FAST, *overrides), out)


def last(out: Path) -> dict:
    return checkpoint.load(out / "checkpoints" / "last.pt")


def assert_exact_resume(tmp_path: Path, common: list[str], n: int) -> dict:
    """n + n steps (resume=auto) == 2n steps, bit for bit: G, D (with their buffers), optimisers."""
    common = [*common, "trainer.deterministic=true", "ckpt.every_n_steps=1000", "log.every_n_steps=1"]
    run(tmp_path / "one", *common, f"trainer.max_steps={2 * n}")
    run(tmp_path / "two", *common, f"trainer.max_steps={n}")
    run(tmp_path / "two", *common, f"trainer.max_steps={2 * n}", "resume=auto")
    a, b = last(tmp_path / "one"), last(tmp_path / "two")
    for key in ("G", "D"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for key in ("opt_G", "opt_D"):
        for pid, state in a[key]["state"].items():
            for name, t in state.items():
                assert torch.equal(t, b[key]["state"][pid][name]), f"{key} state {pid}.{name}"
    return a


# ------------------------------------------------------------------------------- spectral normalisation
def test_spectral_norm_replaces_batchnorm_in_dcgan_and_normalises_every_layer():
    torch.manual_seed(0)
    D = dcgan.Discriminator((1, 16, 16), base_channels=8, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in dcgan.Discriminator((1, 16, 16), base_channels=8).modules())
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    M = mlp.Discriminator((64,), hidden=(32, 32), spectral_norm=True)
    for _ in range(30):  # the power iteration converges over training-mode forwards
        D(torch.randn(2, 1, 16, 16))
        M(torch.randn(2, 64))
    for m in [*convs, *(m for m in M.modules() if isinstance(m, torch.nn.Linear))]:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma == pytest.approx(1.0, abs=0.05)
    # the power-iteration vectors are buffers: in the state dict, so checkpoints carry them
    assert any(k.endswith("_u") for k in D.state_dict()) and any(k.endswith("_v") for k in M.state_dict())


@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_spectral_norm_trains_and_resumes_exactly(tmp_path, image_folder, model):
    common = GAN_SINE if model == "gan" else folder(image_folder, "dcgan")
    a = assert_exact_resume(tmp_path, [*common, SN, "loss=hinge", "optim=ttur"], n=3)
    assert any(k.endswith("_u") for k in a["D"])


def test_sngan_presets_compose():
    for name, model in (("sngan_sine", "gan"), ("sngan_mnist", "dcgan"), ("sngan_celeba", "dcgan")):
        cfg = make_cfg(f"experiment={name}")
        assert cfg.model.name == model and cfg.model.discriminator.spectral_norm and cfg.loss.name == "hinge"
        assert cfg.optim.discriminator.lr == 4 * cfg.optim.generator.lr and cfg.optim.generator.betas == [0.0, 0.9]


# ------------------------------------------------------------------------------------------- WGAN-GP
def test_gradient_penalty_of_a_linear_critic_is_lambda_times_norm_minus_one_squared():
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([[3.0, 0, 0, 4.0, 0, 0]]))  # ||grad|| = 5 everywhere
    loss = GANLoss("wasserstein", gp_weight=10.0)
    x, y = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    assert loss.gradient_penalty(critic, x, y).item() == pytest.approx(10.0 * 16)
    assert float(loss.d_loss(torch.tensor([2.0, 4.0]), torch.tensor([1.0]))) == pytest.approx(1.0 - 3.0)
    assert float(loss.g_loss(torch.tensor([1.0, 3.0]))) == pytest.approx(-2.0)


def test_the_d_step_adds_the_penalty_to_the_critics_gradient():
    """With gp_weight=10 and ||w|| = 5 the penalty's gradient is 2 * 10 * (5 - 1) * w / 5 = 16 w."""
    from gantrain.training.steps import StepContext, d_step

    grads = {}
    for gp in (0.0, 10.0):
        torch.manual_seed(0)  # the same G and batches: only the penalty differs
        critic = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            critic.weight.copy_(torch.tensor([[3.0, 4.0]]))
        G = torch.nn.Linear(3, 2)
        off = torch.amp.GradScaler("cpu", enabled=False)
        opt = torch.optim.SGD(critic.parameters(), lr=0.0)
        t = StepContext(D=critic, G_run=G, D_run=critic, G_learn=G, D_learn=critic,
                        opt_G=torch.optim.SGD(G.parameters(), lr=0.0), opt_D=opt,
                        loss=GANLoss("wasserstein", gp_weight=gp), scaler_G=off, scaler_D=off)
        d_step(t, torch.randn(4, 2), torch.randn(4, 3), d_index=0)
        grads[gp] = critic.weight.grad.clone()
    torch.testing.assert_close(grads[10.0] - grads[0.0], 16 * torch.tensor([[3.0, 4.0]]))


@pytest.mark.parametrize("model", ["gan", "dcgan", "stylegan"])
def test_wgan_gp_trains_every_model(tmp_path, image_folder, model):
    data = GAN_SINE if model == "gan" else folder(image_folder, model)
    # dcgan also under bf16 autocast: the penalty is computed in float32 outside it
    extra = ["model.discriminator.batch_norm=false", "trainer.precision=bf16"] if model == "dcgan" else []
    a = assert_exact_resume(tmp_path, [*data, *WGAN_GP, *extra], n=2) if model == "gan" else None
    if a is None:
        run(tmp_path / "run", *data, *WGAN_GP, *extra, "trainer.max_steps=2", "log.every_n_steps=1")
        a = last(tmp_path / "run")
    assert a["step"] == (4 if model == "gan" else 2)
    assert all(torch.isfinite(t).all() for t in a["D"].values() if t.is_floating_point())


def test_wgan_gp_with_batchnorm_in_the_critic_is_refused(tmp_path, image_folder):
    with pytest.raises(UserError, match="needs a discriminator without BatchNorm"):
        run(tmp_path / "run", *folder(image_folder, "dcgan"), "loss=wgan_gp", "trainer.max_steps=1")
    cfg = make_cfg("experiment=wgan_gp_mnist")
    assert (cfg.loss.gp_weight, cfg.trainer.d_steps, list(cfg.optim.discriminator.betas)) == (10.0, 5, [0.0, 0.9])


# ---------------------------------------------------------------------------------------- two ranks
def test_two_ranks_keep_the_spectral_norm_vectors_and_the_penalised_critic_identical(tmp_path):
    """Each rank runs its own power iteration; it depends on the weights only (identical on every rank after
    each averaged step) and starts from rank 0's broadcast vectors, so the ranks' vectors stay identical."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = make_cfg(*FAST, *GAN_SINE, SN, *WGAN_GP, "model.discriminator.dropout=0", "trainer.max_steps=6",
                   "data.batch_size=16", "trainer.devices=2", "log.every_n_steps=3")
    launch.run(_train_and_dump, cfg, str(run_dir))
    d0, d1 = torch.load(tmp_path / "dumps" / "rank0.pt"), torch.load(tmp_path / "dumps" / "rank1.pt")
    assert any(k.endswith("_u") for k in d0["D"])
    for net in ("G", "D"):
        for k in d0[net]:
            assert torch.equal(d0[net][k], d1[net][k]), f"{net}.{k} differs between the ranks"


# -------------------------------------------------------------------------- path-length regularisation
STYLEGAN = ["data.resolution=32", "data.batch_size=4", "loss.pl_interval=2"]


def test_path_length_running_mean_and_penalty(image_folder):
    from gantrain.models.stylegan import Generator
    from gantrain.path_length import PathLength

    torch.manual_seed(0)
    G = Generator((3, 32, 32), z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, max_channels=16)
    pl = PathLength(weight=2.0, interval=4, decay=0.01)
    assert [pl.due(i) for i in range(5)] == [True, False, False, False, True] and not pl.due(None)
    penalty = pl.penalty(G, torch.randn(8, 16))
    assert float(pl.mean) > 0 and penalty.requires_grad and penalty.item() > 0
    first = float(pl.mean)   # 0.01 of the first batch's mean length
    pl.penalty(G, torch.randn(8, 16))
    assert 1.5 * first < float(pl.mean) < 2.5 * first  # about 0.01 * (2 - 0.01) of the mean length
    pl.load_state_dict({"pl_mean": torch.tensor(123.0)})
    assert pl.state_dict() == {"pl_mean": torch.tensor(123.0)}


def test_stylegan_path_length_resumes_exactly_and_pl_weight_0_turns_it_off(tmp_path, image_folder):
    common = [*folder(image_folder, "stylegan"), *STYLEGAN]
    a = assert_exact_resume(tmp_path, common, n=2)
    b = last(tmp_path / "two")
    assert float(a["loss"]["path_length"]["pl_mean"]) > 0
    assert torch.equal(a["loss"]["path_length"]["pl_mean"], b["loss"]["path_length"]["pl_mean"])
    run(tmp_path / "off", *common, "loss.pl_weight=0", "trainer.max_steps=1")
    assert last(tmp_path / "off")["loss"] == {}


def test_path_length_needs_stylegan(tmp_path, image_folder):
    with pytest.raises(UserError, match=r"loss.pl_weight=2.0 \(path-length regularisation\) needs StyleGAN"):
        run(tmp_path / "run", *folder(image_folder, "dcgan"), "loss=bce_r1", "trainer.max_steps=1")


def _train_and_record_pl(cfg, out_dir):
    """train() on this rank, recording the path-length running mean after every penalty."""
    from gantrain.path_length import PathLength

    seen, penalty = [], PathLength.penalty

    def spy(self, G, z):
        out = penalty(self, G, z)
        seen.append(float(self.mean))
        return out

    PathLength.penalty = spy
    train(cfg, out_dir)
    torch.save(seen, Path(out_dir).parent / f"pl{collectives.rank()}.pt")


def test_two_ranks_share_the_path_length_mean(tmp_path, image_folder):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = make_cfg(*FAST, *folder(image_folder, "stylegan"), *STYLEGAN, "trainer.max_steps=3", "trainer.devices=2")
    launch.run(_train_and_record_pl, cfg, str(run_dir))
    pl0, pl1 = torch.load(tmp_path / "pl0.pt"), torch.load(tmp_path / "pl1.pt")
    assert len(pl0) == 2 and pl0 == pl1  # steps 0 and 2; the same mean on both ranks


# ------------------------------------------------------------------------------------ ckpt.best=true
BEST = [*GAN_SINE, "metrics=default", "metrics.every_n_steps=2", "metrics.num_samples=64", "ckpt.best=true",
        "ckpt.every_n_steps=4", "log.every_n_steps=2", "trainer.deterministic=true"]


def metric_values(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


def test_best_checkpoint_follows_the_primary_metric_across_a_resume(tmp_path):
    run(tmp_path / "two", *BEST, "trainer.max_steps=6", "optim.generator.lr=0.01")
    run(tmp_path / "two", *BEST, "trainer.max_steps=12", "optim.generator.lr=0.01", "resume=auto")
    values = metric_values(tmp_path / "two", "Metrics/sine_ks")
    assert sorted(values) == [2, 4, 6, 8, 10, 12]
    step = min(values, key=values.get)
    best = checkpoint.load(tmp_path / "two" / "checkpoints" / "best.pt")
    assert best["step"] == step and best["best"] == {"metric": "sine_ks", "value": pytest.approx(values[step]),
                                                     "step": step}
    assert last(tmp_path / "two")["best"]["step"] == step      # the resumed run knew the best so far
    logged = metric_values(tmp_path / "two", "Best/step")
    assert max(logged) == step and logged[step] == step and set(logged) <= set(values)
    if step % 4 == 0:  # the step file and best.pt are one file
        assert (tmp_path / "two" / "checkpoints" / f"step_{step:07d}.pt").samefile(
            tmp_path / "two" / "checkpoints" / "best.pt")


def test_best_without_metrics_is_refused(tmp_path):
    with pytest.raises(UserError, match="ckpt.best=true keeps the checkpoint with the best metrics.primary"):
        run(tmp_path / "run", *GAN_SINE, "ckpt.best=true", "trainer.max_steps=1")


def test_best_keeps_only_improvements_and_resumes_its_value():
    from gantrain.training.best import Best

    b = Best("fid")
    assert [b.update(v, s) for s, v in ((1, 5.0), (2, 6.0), (3, float("nan")), (4, 4.0), (5, None))] == \
        [True, False, False, True, False]
    c = Best("fid")
    c.load_state_dict(b.state_dict())
    assert (c.value, c.step) == (4.0, 4) and not c.update(4.5, 9)
    d = Best("kid")
    d.load_state_dict(b.state_dict())  # another metric: starts afresh
    assert d.value is None


def test_a_checkpoint_from_before_spectral_norm_existed_still_resumes(tmp_path):
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=2")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path)
    del ckpt["config"]["model"]["discriminator"]["spectral_norm"]  # as written before the setting existed
    checkpoint.save(ckpt, path)
    run(tmp_path / "run", *GAN_SINE, "trainer.max_steps=3", "resume=auto")
    assert last(tmp_path / "run")["step"] == 3
