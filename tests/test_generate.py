"""``gantrain-generate``: every output kind, for tiny trained checkpoints of each model, plus seeds,
truncation, the EMA generator, CUDA checkpoints on a CPU, foreign ``_target_``s and output errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gantrain import checkpoint, generate, sampling
from gantrain.models.loading import ema_to_plain
from gantrain.training.loop import train
from gantrain.writers import to_uint8_hwc
from tests.utils import FAST, gantrain, make_cfg, tiny


# ------------------------------------------------------------------------------ tiny checkpoints
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny trained checkpoints: gan on sine curves, dcgan (with EMA) on 16x16 RGB images,
    stylegan (EMA by default) on 32x32 greyscale images."""
    root = tmp_path_factory.mktemp("generate")
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    common = [*FAST, "metrics=off", "data.batch_size=8", "log.num_samples=8", "trainer.max_steps=2"]
    runs = {
        "gan": [*tiny("gan"), "data=sine", "data.size=256", "model.ema_kimg=null"],
        "dcgan": [*tiny("dcgan"), "data=folder", f"data.root={folder}", "data.resolution=16", "model.ema_kimg=1"],
        # (tests/utils.tiny("stylegan") names model.w_dim, which conf/model/stylegan.yaml does not have)
        "stylegan": ["model=stylegan", "model.z_dim=32", "model.generator.w_dim=32", "model.mapping_layers=2",
                     "model.channel_base=256", "model.max_channels=32", "data=folder", f"data.root={folder}", "data.resolution=32",
                     "data.channels=1", "model.style_mixing_prob=0.5"],
    }
    out = {}
    for name, overrides in runs.items():
        train(make_cfg(*common, *overrides), root / name)
        out[name] = root / name / "checkpoints" / "last.pt"
    return out


def gen(*args: str) -> None:
    """gantrain-generate in-process (the console script's own entry point)."""
    generate.main([str(a) for a in args])


def fails(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as e:
        gen(*args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def edited(ckpt: Path, dest: Path, edit) -> Path:
    obj = torch.load(ckpt, weights_only=True)
    edit(obj)
    torch.save(obj, dest)
    return dest


def generator_of(ckpt: Path, which: str):
    """The checkpoint's G or EMA generator, built the ordinary way (hydra instantiate) for comparison."""
    from hydra.utils import instantiate

    obj = checkpoint.load(ckpt)
    G = instantiate(obj["config"]["model"]["generator"], shape=tuple(obj["data_shape"]))
    state = ema_to_plain(obj["G_ema"]) if which == "G_ema" else obj["G"]
    G.load_state_dict(state)
    return G.eval()


# ------------------------------------------------------------------------------------ output kinds
@pytest.mark.parametrize("model", ["gan", "dcgan", "stylegan"])
def test_png_grid(tmp_path, ckpts, model):
    out = tmp_path / "grid.png"
    gen(ckpts[model], "-n", 10, "-o", out, "--seed", 1)
    img = Image.open(out)
    if model == "gan":        # sine data: a plot of the curves
        assert img.size == (600, 400)
    else:                     # 4 per row, 3 rows, 2-pixel padding (like torchvision's make_grid)
        side = 16 if model == "dcgan" else 32
        assert img.size == (2 + 4 * (side + 2), 2 + 3 * (side + 2))
        assert img.mode == ("RGB" if model == "dcgan" else "L")
        assert np.asarray(img).std() > 0


def test_npz_images_are_the_ema_generators_samples_for_the_seed(tmp_path, ckpts):
    gen(ckpts["dcgan"], "-n", 300, "-o", tmp_path / "s.npz", "--seed", 7)
    with np.load(tmp_path / "s.npz") as f:
        assert f.files == ["images"]
        images = f["images"]
    assert images.shape == (300, 16, 16, 3) and images.dtype == np.uint8
    # the same samples computed by hand: latents from torch.Generator().manual_seed(7), EMA weights
    z = torch.randn(300, 100, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = to_uint8_hwc(generator_of(ckpts["dcgan"], "G_ema")(z))
        raw = to_uint8_hwc(generator_of(ckpts["dcgan"], "G")(z))
    assert np.array_equal(images, expected)
    assert not np.array_equal(images, raw)


def test_npz_curves_for_sine_data(tmp_path, ckpts):
    gen(ckpts["gan"], "-n", 5, "-o", tmp_path / "c.npz", "--seed", 3)
    with np.load(tmp_path / "c.npz") as f:
        assert f.files == ["curves"]
        curves = f["curves"]
    assert curves.shape == (5, 64) and curves.dtype == np.float32
    z = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert np.allclose(curves, generator_of(ckpts["gan"], "G")(z).numpy(), atol=1e-6)


@pytest.mark.parametrize("form", ["slash", "existing", "no_extension"])
def test_directory_gets_one_png_per_sample(tmp_path, ckpts, form):
    target = tmp_path / "samples"
    if form == "existing":
        target.mkdir()
    arg = f"{target}/" if form == "slash" else str(target)
    gen(ckpts["stylegan"], "-n", 5, "-o", arg, "--seed", 0)
    names = sorted(p.name for p in target.iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(target / names[0]).size == (32, 32)


def test_directory_of_curve_plots(tmp_path, ckpts):
    gen(ckpts["gan"], "-n", 3, "-o", tmp_path / "curves/")
    assert len(list((tmp_path / "curves").glob("*.png"))) == 3


@pytest.mark.parametrize("model", ["gan", "dcgan", "stylegan"])
def test_gif_is_a_smooth_loop(tmp_path, ckpts, model):
    out = tmp_path / "walk.gif"
    gen(ckpts[model], "-n", 3, "--interpolate", 4, "-o", out, "--seed", 2)
    gif = Image.open(out)
    assert gif.n_frames == 3 * (4 + 1)
    if model == "gan":
        return
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L"), dtype=np.float32))
    steps = [np.abs(frames[i] - frames[(i + 1) % len(frames)]).mean() for i in range(len(frames))]
    keyframes = [np.abs(frames[0] - frames[5]).mean(), np.abs(frames[5] - frames[10]).mean()]
    # neighbouring frames are closer than keyframes (a smooth walk, not a slideshow)
    assert max(steps) < max(keyframes)


def test_slerp_keeps_the_norm_between_latents():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 512, generator=g), torch.randn(1, 512, generator=g)
    mid = sampling.slerp(a, b, 0.5)
    assert abs(mid.norm() - (a.norm() + b.norm()) / 2) < 0.05 * a.norm()
    assert torch.allclose(sampling.slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(sampling.slerp(a, b, 1.0), b, atol=1e-4)


def test_default_output_is_samples_png(tmp_path, ckpts):
    r = gantrain(str(ckpts["dcgan"]), "-n", "4", cmd="gantrain-generate", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "samples.png").is_file() and "EMA generator" in r.stdout


# ------------------------------------------------------------------------------ seeds, truncation
def test_seed_makes_the_output_reproducible(tmp_path, ckpts):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        gen(ckpts["stylegan"], "-n", 6, "-o", tmp_path / f"{name}.npz", "--seed", seed)
    load = lambda n: np.load(tmp_path / f"{n}.npz")["images"]
    assert np.array_equal(load("a"), load("b"))
    assert not np.array_equal(load("a"), load("c"))


def test_truncation_for_stylegan(tmp_path, ckpts):
    for psi in ("1", "0.5", "0"):
        gen(ckpts["stylegan"], "-n", 4, "-o", tmp_path / f"psi{psi}.npz", "--seed", 1, "--truncation", psi)
    gen(ckpts["stylegan"], "-n", 4, "-o", tmp_path / "plain.npz", "--seed", 1)
    load = lambda n: np.load(tmp_path / f"{n}.npz")["images"].astype(int)
    assert np.array_equal(load("psi1"), load("plain"))
    zero = load("psi0")
    assert all(np.array_equal(zero[0], x) for x in zero)    # psi=0: every sample is the average w
    spread = lambda x: np.abs(x - x.mean(0)).mean()
    assert spread(load("psi0.5")) < spread(load("plain"))


@pytest.mark.parametrize("model", ["gan", "dcgan"])
def test_truncation_is_refused_where_unsupported(tmp_path, ckpts, capsys, model):
    err = fails(capsys, ckpts[model], "--truncation", "0.7", "-o", tmp_path / "x.png")
    assert "truncation" in err and f"this checkpoint's model ({model}) has none" in err
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------- EMA, CUDA, trust
def test_the_ema_generator_is_used_when_present(tmp_path, ckpts):
    def garbage_g(obj):
        obj["G"] = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in obj["G"].items()}

    def no_ema(obj):       # the garbage G is all that is left: the output must change
        garbage_g(obj)
        obj["G_ema"] = None

    ref, bad_g, plain = tmp_path / "ref.npz", tmp_path / "bad_g.npz", tmp_path / "plain.npz"
    gen(ckpts["dcgan"], "-n", 8, "-o", ref, "--seed", 0)
    gen(edited(ckpts["dcgan"], tmp_path / "g.pt", garbage_g), "-n", 8, "-o", bad_g, "--seed", 0)
    gen(edited(ckpts["dcgan"], tmp_path / "n.pt", no_ema), "-n", 8, "-o", plain, "--seed", 0)
    assert np.array_equal(np.load(ref)["images"], np.load(bad_g)["images"])
    assert not np.array_equal(np.load(ref)["images"], np.load(plain)["images"])


def test_a_cuda_checkpoint_generates_on_a_cpu_only_machine(tmp_path, ckpts, monkeypatch):
    """The file is written exactly as on a GPU machine: every storage tagged 'cuda:0'."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the point is a machine without it")
    obj = torch.load(ckpts["dcgan"], weights_only=True)
    cuda_file = tmp_path / "cuda.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, cuda_file)
    with pytest.raises(RuntimeError, match="CUDA"):      # a naive torch.load fails here ...
        torch.load(cuda_file, weights_only=True)
    gen(cuda_file, "-n", 4, "-o", tmp_path / "a.npz", "--seed", 0)      # ... gantrain-generate does not
    gen(ckpts["dcgan"], "-n", 4, "-o", tmp_path / "b.npz", "--seed", 0)
    assert np.array_equal(np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"])


@pytest.mark.parametrize("target", [
    "os.system",
    "builtins.eval",
    "torch.hub.load",
    "gantrain.models.layers.upsample2x",            # the project's, but a function, not a model class
    "gantrain.models.stylegan.torch.hub.load",      # reaching outside through a module attribute
    "gantrain.models.nonexistent.Generator",
])
def test_foreign_targets_in_a_checkpoint_are_refused(tmp_path, ckpts, capsys, monkeypatch, target):
    import builtins

    import gantrain.models.layers

    def set_target(obj):
        obj["config"]["model"]["generator"]["_target_"] = target

    called = []  # the targets themselves, replaced by recorders: none may be called
    record = lambda *a, **k: called.append(a)
    for owner, name in ((os, "system"), (builtins, "eval"), (torch.hub, "load"),
                        (gantrain.models.layers, "upsample2x")):
        monkeypatch.setattr(owner, name, record)
    bad = edited(ckpts["gan"], tmp_path / "bad.pt", set_target)
    err = fails(capsys, bad, "-o", tmp_path / "x.png")
    assert "_target_" in err and "not" in err and not called
    assert not (tmp_path / "x.png").exists()


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, capsys):
    from tests.test_checkpoint import evil_checkpoint

    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker)
    err = fails(capsys, evil, "-o", tmp_path / "x.png")
    assert "refused" in err and not marker.exists()


# ------------------------------------------------------------------------------------ output errors
def test_output_errors_are_one_sentence_exit_2(tmp_path, ckpts, capsys):
    assert "extension .jpg" in fails(capsys, ckpts["gan"], "-o", tmp_path / "x.jpg")
    (tmp_path / "file").write_text("a file, not a folder")
    assert "cannot write" in fails(capsys, ckpts["gan"], "-o", tmp_path / "file" / "x.png")
    assert "does not exist" in fails(capsys, tmp_path / "missing.pt")
    assert "--interpolate" in fails(capsys, ckpts["gan"], "--interpolate", "3", "-o", tmp_path / "x.png")
    assert "-n" in fails(capsys, ckpts["gan"], "-n", "0", "-o", tmp_path / "x.png")
    assert "cuda" in fails(capsys, ckpts["gan"], "--device", "cuda:7", "-o", tmp_path / "x.png")
    # through the console script too: exit 2, no traceback
    r = gantrain(str(ckpts["gan"]), "-o", str(tmp_path / "file" / "y.npz"), cmd="gantrain-generate")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


# --------------------------------------------------------------------------------------- large N
def test_tens_of_thousands_of_samples_in_batches(tmp_path, ckpts, monkeypatch, capsys):
    sizes = []
    real_forward = sampling._forward
    monkeypatch.setattr(sampling, "_forward", lambda G, z, psi: sizes.append(len(z)) or real_forward(G, z, psi))
    n = 20_000
    gen(ckpts["gan"], "-n", n, "-o", tmp_path / "many.npz", "--seed", 0)
    assert max(sizes) <= sampling.BATCH and sum(sizes) == n
    with np.load(tmp_path / "many.npz") as f:
        curves = f["curves"]
    assert curves.shape == (n, 64) and np.isfinite(curves).all()
    # batching does not change the samples: the first ones equal a run of -n 10
    gen(ckpts["gan"], "-n", 10, "-o", tmp_path / "few.npz", "--seed", 0)
    assert np.array_equal(np.load(tmp_path / "few.npz")["curves"], curves[:10])
    assert "generating" in capsys.readouterr().err      # the progress bar of a large N
    assert math.isclose(len(sizes), math.ceil(n / sampling.BATCH) + 1)
