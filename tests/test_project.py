"""``gantrain-project``: an image the generator made is recovered (PSNR thresholds measured on this tiny model),
w.npz reproduces proj.png, and refusals (no mapping network, wrong size or channels) are one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gantrain import checkpoint, project
from gantrain.models.loading import load_generator
from gantrain.writers import to_uint8_hwc
from tests.checkpoints import tiny_checkpoints

# PSNR after 100 steps for the generator's own images of seeds 1-6 (this 2-step tiny StyleGAN, starting from
# about 7-11 dB at w_avg): w 18.2-23.9 dB, w+ 21.6-25.4 dB; seed 2 gives 21.8 and 23.2.
PSNR_W, PSNR_W_PLUS = 18.0, 20.0


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("project"), ["dcgan", "stylegan"])


def own_image(ckpt, path, seed=2):
    G, _ = load_generator(checkpoint.load(ckpt), torch.device("cpu"))
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        Image.fromarray(to_uint8_hwc(G(z, noise_mode="const"))[0, ..., 0]).save(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / mse))


def test_projecting_the_generators_own_image_recovers_it(ckpts, tmp_path, capsys):
    target = own_image(ckpts["stylegan"], tmp_path / "own.png")
    project.main([str(ckpts["stylegan"]), str(target), "-o", str(tmp_path / "out"), "--steps", "100",
                  "--device", "cpu"])
    assert "PSNR" in capsys.readouterr().out
    out = tmp_path / "out"
    proj, tgt = (np.asarray(Image.open(out / name)) for name in ("proj.png", "target.png"))
    assert np.array_equal(tgt, np.asarray(Image.open(target)))
    assert psnr(proj, tgt) >= PSNR_W
    with np.load(out / "w.npz") as f:
        w, noise = torch.from_numpy(f["w"]), {k[6:]: torch.from_numpy(f[k]) for k in f.files if k.startswith("noise/")}
        assert w.shape == (1, 8, 32) and not f["w_plus"] and abs(float(f["psnr"]) - psnr(proj, tgt)) < 0.5
    assert torch.equal(w[0, 0], w[0, -1])                       # one w for every style layer
    gif = Image.open(out / "progress.gif")
    assert gif.n_frames == 51 and gif.size == (64, 32)         # target | projection, 50 frames + the last
    # w.npz and the noise maps reproduce proj.png with the checkpoint's generator
    G, _ = load_generator(checkpoint.load(ckpts["stylegan"]), torch.device("cpu"))
    assert len(noise) == 7
    for name, buf in G.named_buffers():
        if name in noise:
            buf.copy_(noise[name])
    with torch.no_grad():
        again = to_uint8_hwc(G.synthesis(w, noise_mode="const"))[0, ..., 0]
    assert np.abs(again.astype(int) - proj.astype(int)).max() <= 1
    other = np.asarray(Image.open(own_image(ckpts["stylegan"], tmp_path / "other.png", seed=3)))
    assert psnr(other, tgt) < PSNR_W - 5                          # another sample of G is far from it


def test_w_plus_gets_closer(ckpts, tmp_path):
    target = own_image(ckpts["stylegan"], tmp_path / "own.png")
    project.main([str(ckpts["stylegan"]), str(target), "-o", str(tmp_path / "out"), "--steps", "100", "--w-plus"])
    with np.load(tmp_path / "out" / "w.npz") as f:
        assert f["w_plus"] and not np.allclose(f["w"][0, 0], f["w"][0, -1])
    proj = np.asarray(Image.open(tmp_path / "out" / "proj.png"))
    assert psnr(proj, np.asarray(Image.open(target))) >= PSNR_W_PLUS


def test_resize_crops_and_resizes_only_when_asked(ckpts, tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40), dtype=np.uint8)).save(tmp_path / "big.png")
    err = fails(capsys, ckpts["stylegan"], tmp_path / "big.png", "-o", tmp_path / "out")
    assert "is 40x50 but the generator makes 32x32" in err and "--resize" in err
    project.main([str(ckpts["stylegan"]), str(tmp_path / "big.png"), "-o", str(tmp_path / "out"), "--steps", "1",
                  "--resize"])
    assert Image.open(tmp_path / "out" / "target.png").size == (32, 32)


def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        project.main([str(a) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gantrain-project: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_input_is_one_sentence(ckpts, tmp_path, capsys):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(rgb)
    assert "no w space" in fails(capsys, ckpts["dcgan"], rgb, "-o", tmp_path / "out")
    assert "RGB (3 channels) image but the generator makes greyscale" in fails(
        capsys, ckpts["stylegan"], rgb, "-o", tmp_path / "out")
    (tmp_path / "not.png").write_bytes(b"not an image")
    assert "cannot read" in fails(capsys, ckpts["stylegan"], tmp_path / "not.png", "-o", tmp_path / "out")
    assert "at least 1 step" in fails(capsys, ckpts["stylegan"], rgb, "--steps", "0")
    obj = torch.load(ckpts["stylegan"], weights_only=True)
    del obj["D"]["fromrgb.weight"]
    torch.save(obj, tmp_path / "no_d.pt")
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(grey)
    assert "--feature-weight 0" in fails(capsys, tmp_path / "no_d.pt", grey, "-o", tmp_path / "out")
    assert not (tmp_path / "out").exists()
