"""gantrain-generate's --style-mix figure (seeds in, the paper's layout out) and .mp4 walks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from gantrain import checkpoint, generate, sampling
from gantrain.models import sample
from gantrain.models.loading import load_generator
from gantrain.models.stylegan import style_mixing_images
from gantrain.writers import to_uint8_hwc
from tests.checkpoints import tiny_checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("media"))


def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        generate.main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gantrain-generate: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_style_mix_figure_for_chosen_seeds(ckpts, tmp_path):
    out = tmp_path / "mix.png"
    generate.main([str(ckpts["stylegan"]), "--style-mix", "1,2,3", "10,11", "-o", str(out), "--truncation", "0.8"])
    fig = np.asarray(Image.open(out).convert("L")).astype(int)
    assert fig.shape == (2 + 4 * 34, 2 + 3 * 34)                    # 3 + 1 rows, 2 + 1 columns of 32x32 tiles
    tile = lambda r, c: fig[2 + r * 34: 34 + r * 34, 2 + c * 34: 34 + c * 34]
    G, _ = load_generator(checkpoint.load(ckpts["stylegan"]), torch.device("cpu"))
    z = {s: torch.randn(1, 32, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3, 10, 11)}
    with torch.no_grad():
        own = {s: to_uint8_hwc(sample(G, z[s], 0.8))[0, ..., 0].astype(int) for s in z}
        mixed = to_uint8_hwc(style_mixing_images(G, z[2], z[11], G.num_ws // 2, 0.8))[0, ..., 0].astype(int)
    assert tile(0, 0).max() == 0                                     # the corner is black
    assert np.abs(tile(0, 2) - own[11]).max() <= 1 and np.abs(tile(3, 0) - own[3]).max() <= 1
    assert np.abs(tile(2, 2) - mixed).max() <= 1                     # coarse styles of seed 2, fine of seed 11
    assert np.abs(tile(2, 2) - own[2]).mean() > 1 and np.abs(tile(2, 2) - own[11]).mean() > 1


def test_style_mix_bad_input(ckpts, tmp_path, capsys):
    assert "mapping network" in fails(capsys, ckpts["dcgan"], "--style-mix", "1", "2", "-o", tmp_path / "m.png")
    assert "comma-separated seeds" in fails(capsys, ckpts["stylegan"], "--style-mix", "1,x", "2", "-o",
                                            tmp_path / "m.png")
    assert "use -o something.png" in fails(capsys, ckpts["stylegan"], "--style-mix", "1", "2", "-o",
                                           tmp_path / "m.npz")
    assert "without -n" in fails(capsys, ckpts["stylegan"], "--style-mix", "1", "2", "-n", "4", "-o",
                                 tmp_path / "m.png")


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None,
                    reason="imageio-ffmpeg is not installed: pip install 'gantrain[export]'")
@pytest.mark.parametrize("model", ["gan", "stylegan"])
def test_mp4_walk(ckpts, tmp_path, model):
    import imageio_ffmpeg

    out = tmp_path / "walk.mp4"
    generate.main([str(ckpts[model]), "-n", "3", "--interpolate", "4", "-o", str(out), "--seed", "2"])
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = [np.frombuffer(f, np.uint8).reshape(meta["size"][1], meta["size"][0], 3) for f in reader]
    assert meta["codec"] == "h264" and len(frames) == 3 * 5
    assert max(meta["size"]) >= 256 and np.std(frames[0]) > 0
    if model == "stylegan":   # 32x32 scaled up 8x: the first frame is the first keyframe
        G, _ = load_generator(checkpoint.load(ckpts[model]), torch.device("cpu"))
        first = next(sampling.interpolation(G, 3, 4, 2, None, torch.device("cpu"), False))[:1]
        expected = to_uint8_hwc(first)[0, ..., 0].astype(float)
        got = frames[0][..., 0].reshape(32, 8, 32, 8).mean(axis=(1, 3))
        assert np.abs(got - expected).mean() < 8                    # H.264 is lossy


def test_mp4_without_imageio_ffmpeg_names_the_extra(ckpts, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imageio_ffmpeg" else real(name, *a))
    err = fails(capsys, ckpts["gan"], "-o", tmp_path / "walk.mp4")
    assert "imageio-ffmpeg" in err and "gantrain[export]" in err and ".gif" in err
