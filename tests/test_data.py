"""The data stage on tiny data written in the real formats (IDX files, JPEG/PNG/GIF folders); CPU, offline."""

from __future__ import annotations

import json
import logging
import math
import os
import threading

import numpy as np
import pytest
import torch

from gantrain.data import Dataset, StreamingImageDataset, TensorDataset, build_dataset, decoded_cache
from gantrain.data import folder as folder_mod
from gantrain.errors import UserError
from tests.conftest import (
    CELEBA_IMAGES,
    FOLDER_READABLE,
    FOLDER_SKIPPED,
    MNIST_TEST,
    MNIST_TRAIN,
    mnist_like_images,
    write_idx,
)

CPU = torch.device("cpu")


def build(cfg, **kw):
    kw.setdefault("device", CPU)
    kw.setdefault("progress", False)
    return build_dataset(cfg, **kw)


def rows(x: torch.Tensor) -> list:
    """Each example of a batch as hashable bytes."""
    return [r.numpy().tobytes() for r in x.reshape(x.shape[0], -1)]


def epoch_rows(ds: Dataset, batch_size: int, epoch: int = 0) -> list:
    bpe = ds.num_examples // batch_size
    return [r for s in range(epoch * bpe, (epoch + 1) * bpe) for r in rows(ds.batch(s, batch_size))]


# ----------------------------------------------------------------------------- sine


def test_sine_shapes_and_formula(data_cfg):
    cfg = data_cfg("sine", size=512, num_points=48)
    ds = build(cfg)
    assert (ds.kind, ds.shape, ds.num_examples, ds.name) == ("curve", (48,), 512, "sine")
    assert torch.allclose(ds.x, torch.linspace(-1, 1, 48))
    b = ds.batch(0, 32)
    assert b.shape == (32, 48) and b.dtype == torch.float32 and b.device == CPU
    # least squares y = a*sin(pi x) + c*cos(pi x): A = |(a, c)|, phi = atan2(c, a)
    y = ds.data.double()
    basis = torch.stack([torch.sin(math.pi * ds.x), torch.cos(math.pi * ds.x)], 1).double()
    coef = torch.linalg.lstsq(basis, y.T).solution            # (2, N)
    amp = coef.norm(dim=0)
    phi = torch.atan2(coef[1], coef[0]) % (2 * math.pi)
    assert amp.min() > 0.5 - 0.03 and amp.max() < 1.0 + 0.03
    assert torch.allclose(amp, ds.amplitude.double(), atol=0.03)
    dphi = torch.remainder(phi - ds.phase.double() + math.pi, 2 * math.pi) - math.pi
    assert dphi.abs().max() < 0.1
    # amplitudes and phases spread over their ranges, residual noise has the configured std
    assert amp.min() < 0.55 and amp.max() > 0.95
    assert phi.min() < 0.3 and phi.max() > 2 * math.pi - 0.3
    resid = y - (basis @ coef).T
    assert 0.015 < resid.std().item() < 0.025


def test_sine_data_fixed_across_run_seeds_but_order_differs(data_cfg):
    cfg = data_cfg("sine", size=256)
    a, b = build(cfg, seed=0), build(cfg, seed=1)
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.batch(0, 64), b.batch(0, 64))
    assert sorted(epoch_rows(a, 64)) == sorted(epoch_rows(b, 64))
    assert torch.equal(a.real_samples(8), b.real_samples(8))
    c = build(data_cfg("sine", size=256, noise=0.0))
    assert not torch.equal(a.data, c.data)


def test_sine_bad_range_is_user_error(data_cfg):
    with pytest.raises(UserError, match="amplitude"):
        build(data_cfg("sine", amplitude=[1.0, 0.5]))


# ----------------------------------------------------------------------------- sampling contract


def test_batch_is_pure_function_of_step(data_cfg):
    cfg = data_cfg("sine", size=200)
    ds = build(cfg, seed=3)
    b5 = ds.batch(5, 16)
    for s in (9, 0, 30):
        ds.batch(s, 16)
    assert torch.equal(ds.batch(5, 16), b5)                    # same object, any call order
    assert torch.equal(build(cfg, seed=3).batch(5, 16), b5)    # a fresh object: resume needs no state
    assert not torch.equal(ds.batch(6, 16), b5)
    assert not torch.equal(build(cfg, seed=4).batch(5, 16), b5)
    # epoch 1 is another permutation than epoch 0
    bpe = 200 // 16
    assert epoch_rows(ds, 16, 0) != epoch_rows(ds, 16, 1)
    assert not torch.equal(ds.batch(0, 16), ds.batch(bpe, 16))


def test_each_example_once_per_epoch_and_ranks_disjoint(data_cfg):
    cfg = data_cfg("sine", size=101)
    all_rows = set(rows(build(cfg).data))
    assert len(all_rows) == 101
    one = build(cfg, seed=2)
    ep = epoch_rows(one, 10)                        # 10 batches of 10, one example dropped
    assert len(ep) == 100 and len(set(ep)) == 100 and set(ep) <= all_rows
    r0, r1 = (build(cfg, seed=2, rank=r, world_size=2) for r in (0, 1))
    assert r0.num_examples == r1.num_examples == 50
    for epoch in (0, 3):
        e0, e1 = set(epoch_rows(r0, 5, epoch)), set(epoch_rows(r1, 5, epoch))
        assert len(e0) == len(e1) == 50
        assert not e0 & e1
        assert e0 | e1 <= all_rows
    # the shards come from one global permutation: rank r holds perm[r::2]
    glob = one.epoch_permutation(0)             # world_size=1: the global permutation itself
    assert torch.equal(r0.epoch_permutation(0), glob[0::2][:50])
    assert torch.equal(r1.epoch_permutation(0), glob[1::2][:50])


def test_batch_size_too_large_is_user_error(data_cfg):
    ds = build(data_cfg("sine", size=10))
    with pytest.raises(UserError, match="batch_size"):
        ds.batch(0, 11)


def test_unknown_name_is_user_error(data_cfg):
    cfg = data_cfg("sine")
    cfg.name = "cifar"
    with pytest.raises(UserError, match="cifar"):
        build(cfg)


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("name,folder,seed", [("mnist", "MNIST", 1), ("fashion_mnist", "FashionMNIST", 3)])
def test_mnist_like_reads_idx_files(data_cfg, mnist_root, name, folder, seed):
    ds = build(data_cfg(name, root=str(mnist_root)))
    assert isinstance(ds, TensorDataset)
    assert (ds.kind, ds.shape, ds.num_examples) == ("image", (1, 28, 28), MNIST_TRAIN)
    b = ds.batch(0, 16)
    assert b.shape == (16, 1, 28, 28) and b.dtype == torch.float32
    assert b.min() >= -1 and b.max() <= 1 and b.min() == -1 and b.max() == 1
    expected = torch.from_numpy(mnist_like_images(MNIST_TRAIN, seed)).float() / 127.5 - 1
    idx = ds.indices(0, 16)
    assert torch.equal(b[:, 0], expected[idx])
    test = build(data_cfg(name, root=str(mnist_root), split="test"))
    assert test.num_examples == MNIST_TEST
    ds.close()  # frees the device copy (a slice of it would keep the whole storage alive)
    assert ds.data.untyped_storage().nbytes() == 0


def test_mnist_padded_to_model_resolution(data_cfg, mnist_root):
    ds = build(data_cfg("mnist", root=str(mnist_root)), resolution=32)
    assert ds.shape == (1, 32, 32)
    b = ds.batch(1, 8)
    assert b.shape == (8, 1, 32, 32)
    expected = torch.from_numpy(mnist_like_images(MNIST_TRAIN, 1)).float() / 127.5 - 1
    assert torch.equal(b[:, 0, 2:30, 2:30], expected[ds.indices(1, 8)])
    border = torch.cat([b[..., :2, :].flatten(), b[..., 30:, :].flatten(), b[..., :2].flatten(),
                        b[..., 30:].flatten()])
    assert (border == -1).all()
    small = build(data_cfg("mnist", root=str(mnist_root)), resolution=14)
    assert small.batch(0, 4).shape == (4, 1, 14, 14)


def test_mnist_missing_files_user_error(data_cfg, tmp_path):
    with pytest.raises(UserError) as e:
        build(data_cfg("mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "data.download=true" in msg


def test_mnist_missing_gz_hint(data_cfg, mnist_root):
    raw = mnist_root / "FashionMNIST" / "raw"
    os.rename(raw / "train-images-idx3-ubyte", raw / "train-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match="gunzip"):
        build(data_cfg("fashion_mnist", root=str(mnist_root)))


def test_mnist_truncated_file_user_error(data_cfg, mnist_root):
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(UserError) as e:
        build(data_cfg("mnist", root=str(mnist_root)))
    assert str(path) in str(e.value) and "truncated" in str(e.value) and "delete" in str(e.value)


def test_mnist_bad_magic_user_error(data_cfg, mnist_root):
    path = mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(b"<html>not found</html>" + bytes(64))
    with pytest.raises(UserError) as e:
        build(data_cfg("mnist", root=str(mnist_root)))
    assert str(path) in str(e.value) and "delete" in str(e.value)


def test_mnist_label_count_mismatch_user_error(data_cfg, mnist_root):
    write_idx(mnist_root / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(MNIST_TRAIN - 1))
    with pytest.raises(UserError, match="disagree"):
        build(data_cfg("mnist", root=str(mnist_root)))


# ----------------------------------------------------------------------------- folder / CelebA


def folder_cfg(data_cfg, root, **kw):
    kw.setdefault("resolution", 16)
    kw.setdefault("decode_workers", 1)
    return data_cfg("folder", root=str(root), **kw)


def test_folder_images_and_skip_warning(data_cfg, image_folder, caplog):
    caplog.set_level(logging.WARNING, logger="gantrain.data.folder")
    ds = build(folder_cfg(data_cfg, image_folder))
    assert (ds.kind, ds.shape, ds.num_examples, ds.name) == ("image", (3, 16, 16), FOLDER_READABLE, "folder")
    b = ds.batch(0, 5)
    assert b.shape == (5, 3, 16, 16) and b.dtype == torch.float32
    assert b.min() >= -1 and b.max() <= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"skipped {FOLDER_SKIPPED} of {FOLDER_READABLE + FOLDER_SKIPPED}" in warnings[0].getMessage()
    assert "broken.jpg" in warnings[0].getMessage()
    everything = ds.real_samples(ds.num_examples * 3)         # wraps around: every example appears
    distinct = {r for r in rows(everything)}
    assert len(distinct) == FOLDER_READABLE
    # the transparent PNG is composited on white; the greyscale JPEG has three equal channels
    assert any((x == 1).all() for x in everything)
    assert any(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) and not (x == 1).all() for x in everything)


def test_folder_greyscale_channels(data_cfg, image_folder):
    ds = build(folder_cfg(data_cfg, image_folder, channels=1, resolution=8))
    assert ds.shape == (1, 8, 8) and ds.batch(0, 4).shape == (4, 1, 8, 8)
    assert ds.num_examples == FOLDER_READABLE


def test_model_resolution_overrides_config(data_cfg, image_folder):
    ds = build(folder_cfg(data_cfg, image_folder, resolution=64), resolution=8)
    assert ds.shape == (3, 8, 8)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_images", "min_images"])
def test_folder_bad_root_user_error(data_cfg, tmp_path, image_folder, case):
    root = {"missing": tmp_path / "nope", "file": tmp_path / "f.txt", "empty": tmp_path / "empty",
            "no_images": tmp_path / "texts", "min_images": image_folder}[case]
    if case == "file":
        root.write_text("x")
    if case in ("empty", "no_images"):
        root.mkdir()
    if case == "no_images":
        (root / "a.txt").write_text("x")
    kw = {"min_images": 100} if case == "min_images" else {}
    with pytest.raises(UserError) as e:
        build(folder_cfg(data_cfg, root, **kw))
    assert str(root) in str(e.value)
    if case == "min_images":
        assert "min_images=100" in str(e.value)


def test_folder_without_root_user_error(data_cfg):
    with pytest.raises(UserError, match="data.root"):
        build(data_cfg("folder"))


def test_centre_crop_resize_and_colour(data_cfg, tmp_path):
    from PIL import Image

    root = tmp_path / "stripes"
    root.mkdir()
    arr = np.zeros((10, 30, 3), dtype=np.uint8)      # landscape: red | green | blue thirds
    arr[:, :10, 0] = 255
    arr[:, 10:20, 1] = 255
    arr[:, 20:, 2] = 255
    Image.fromarray(arr).save(root / "a.png")
    Image.fromarray(arr.transpose(1, 0, 2).copy()).save(root / "b.bmp")    # portrait, same thirds
    ds = build(folder_cfg(data_cfg, root, resolution=6))
    x = ds.real_samples(2)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 6, 6)
    assert torch.equal(x[0], green) and torch.equal(x[1], green)
    grey = build(folder_cfg(data_cfg, root, resolution=6, channels=1, cache_dir=str(tmp_path / "c")))
    g = grey.real_samples(1)[0, 0]                                # ITU-R 601 luma of pure green: 150
    assert torch.allclose(g, torch.full_like(g, 150 / 127.5 - 1), atol=1 / 127.5)


def test_npy_header_padding_is_readable(tmp_path):
    header = decoded_cache._npy_header((3, 2, 2, 1), length=256)
    assert len(header) == 256
    (tmp_path / "a.npy").write_bytes(header + bytes(range(12)))
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert a.shape == (3, 2, 2, 1) and a.offset == 256 and a.ravel().tolist() == list(range(12))


def test_celeba(data_cfg, celeba_root):
    ds = build(data_cfg("celeba", root=str(celeba_root), decode_workers=1), resolution=16)
    assert (ds.shape, ds.num_examples, ds.name) == ((3, 16, 16), CELEBA_IMAGES, "celeba")
    assert (celeba_root / ".gantrain_cache").is_dir()
    # <root>/img_align_celeba directly is accepted too
    direct = build(data_cfg("celeba", root=str(celeba_root / "celeba"), decode_workers=1), resolution=16)
    assert direct.num_examples == CELEBA_IMAGES
    assert torch.equal(direct.real_samples(4), ds.real_samples(4))
    # default resolution is the config's 64
    assert build(data_cfg("celeba", root=str(celeba_root), decode_workers=1)).shape == (3, 64, 64)


def test_celeba_missing_says_what_to_download(data_cfg, tmp_path):
    with pytest.raises(UserError) as e:
        build(data_cfg("celeba", root=str(tmp_path)))
    msg = str(e.value)
    assert "img_align_celeba.zip" in msg and "mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in msg
    assert "Align&Cropped" in msg and str(tmp_path / "celeba") in msg


# ----------------------------------------------------------------------------- decoded cache


class CountingDecoder:
    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()
        self.real = folder_mod.decode_image

    def __call__(self, *a, **k):
        with self.lock:
            self.calls += 1
        return self.real(*a, **k)


def cache_files(root):
    return sorted((root / ".gantrain_cache").glob("*.npy"))


def test_cache_built_once(data_cfg, image_folder, monkeypatch):
    counter = CountingDecoder()
    monkeypatch.setattr(folder_mod, "decode_image", counter)
    cfg = folder_cfg(data_cfg, image_folder)
    first = build(cfg).real_samples(8)
    assert counter.calls == FOLDER_READABLE + 1                 # every image file once (broken.jpg too)
    (npy,) = cache_files(image_folder)
    mtime = npy.stat().st_mtime_ns
    assert np.load(npy, mmap_mode="r").shape == (FOLDER_READABLE, 16, 16, 3)
    second = build(cfg).real_samples(8)
    assert counter.calls == FOLDER_READABLE + 1                 # no decoding the second time
    assert npy.stat().st_mtime_ns == mtime
    assert torch.equal(first, second)
    build(folder_cfg(data_cfg, image_folder, resolution=8))     # another resolution: another cache
    assert len(cache_files(image_folder)) == 2
    # a changed file list is a new cache
    (image_folder / "img00.jpg").unlink()
    assert build(cfg).num_examples == FOLDER_READABLE - 1
    assert len(cache_files(image_folder)) == 3


@pytest.mark.parametrize("damage", ["truncate", "extended", "header", "version", "meta_missing"])
def test_corrupt_cache_is_rebuilt(data_cfg, image_folder, monkeypatch, caplog, damage):
    cfg = folder_cfg(data_cfg, image_folder)
    good = build(cfg).real_samples(FOLDER_READABLE)
    (npy,) = cache_files(image_folder)
    meta = npy.with_suffix(".json")
    if damage == "truncate":
        with open(npy, "r+b") as f:
            f.truncate(npy.stat().st_size - 100)
    elif damage == "extended":
        with open(npy, "ab") as f:
            f.write(bytes(100))
    elif damage == "header":
        with open(npy, "r+b") as f:
            f.write(b"garbage!")
    elif damage == "version":
        m = json.loads(meta.read_text())
        m["version"] = 0
        meta.write_text(json.dumps(m))
    else:
        meta.unlink()
    counter = CountingDecoder()
    monkeypatch.setattr(folder_mod, "decode_image", counter)
    caplog.set_level(logging.WARNING, logger="gantrain.data.decoded_cache")
    again = build(cfg).real_samples(FOLDER_READABLE)
    assert counter.calls == FOLDER_READABLE + 1
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert torch.equal(again, good)
    assert np.load(npy, mmap_mode="r").shape == (FOLDER_READABLE, 16, 16, 3)


def test_concurrent_builders_decode_once(data_cfg, image_folder, monkeypatch):
    counter = CountingDecoder()
    monkeypatch.setattr(folder_mod, "decode_image", counter)
    cfg = folder_cfg(data_cfg, image_folder)
    results, errors = [], []

    def job():
        try:
            results.append(build(cfg).real_samples(6))
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counter.calls == FOLDER_READABLE + 1
    assert all(torch.equal(r, results[0]) for r in results)


def test_process_pool_decode_matches_serial(data_cfg, image_folder, tmp_path):
    serial = build(folder_cfg(data_cfg, image_folder, cache_dir=str(tmp_path / "c1")))
    pooled = build(folder_cfg(data_cfg, image_folder, cache_dir=str(tmp_path / "c2"), decode_workers=2))
    assert len(list((tmp_path / "c2").glob("*.npy"))) == 1
    assert not (image_folder / ".gantrain_cache").exists()
    assert torch.equal(serial.real_samples(FOLDER_READABLE), pooled.real_samples(FOLDER_READABLE))


def test_unwritable_root_falls_back_to_home_cache(data_cfg, image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    real_access = os.access

    def access(path, mode, *a, **k):          # chmod would not stop root, so pretend instead
        if str(path).startswith(str(image_folder)) and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(folder_mod.os, "access", access)
    ds = build(folder_cfg(data_cfg, image_folder))
    assert ds.num_examples == FOLDER_READABLE
    assert not cache_files(image_folder)
    assert len(list((tmp_path / "home" / ".cache" / "gantrain" / "cache").glob("folder-*.npy"))) == 1

# ----------------------------------------------------------------------------- streaming


def test_streaming_matches_in_memory(data_cfg, image_folder):
    mem = build(folder_cfg(data_cfg, image_folder), seed=5)
    stream = build(folder_cfg(data_cfg, image_folder, max_device_bytes=1), seed=5)
    assert isinstance(mem, TensorDataset) and isinstance(stream, StreamingImageDataset)
    assert stream.shape == mem.shape and stream.num_examples == mem.num_examples
    try:
        for step in [0, 1, 2, 3, 7, 2, 8, 9, 0]:                  # crosses epochs, repeats, jumps back
            a, b = mem.batch(step, 4), stream.batch(step, 4)
            assert b.dtype == torch.float32 and b.is_contiguous()
            assert torch.equal(a, b), step
        assert torch.equal(mem.real_samples(20), stream.real_samples(20))
        r1 = build(folder_cfg(data_cfg, image_folder, max_device_bytes=1), seed=5, rank=1, world_size=2)
        m1 = build(folder_cfg(data_cfg, image_folder), seed=5, rank=1, world_size=2)
        assert torch.equal(r1.batch(3, 2), m1.batch(3, 2))
        r1.close()
    finally:
        stream.close()


def test_streaming_mnist_from_host_memory(data_cfg, mnist_root):
    mem = build(data_cfg("mnist", root=str(mnist_root)), resolution=32)
    stream = build(data_cfg("mnist", root=str(mnist_root), max_device_bytes=1000), resolution=32)
    assert isinstance(stream, StreamingImageDataset)
    for step in range(6):
        assert torch.equal(mem.batch(step, 16), stream.batch(step, 16))
    stream.close()
    with pytest.raises(RuntimeError):
        stream.batch(0, 16)


def test_streaming_reads_the_next_batch_ahead_on_its_own_thread(data_cfg, image_folder, monkeypatch):
    """Sequential steps are read by the prefetch thread, one step ahead; only the first step and a jump are
    read on the caller's thread."""
    import threading

    reads: list[tuple[int, str]] = []
    real_read_step = StreamingImageDataset._read_step

    def spy(self, step, batch_size):
        reads.append((step, threading.current_thread().name))
        return real_read_step(self, step, batch_size)

    monkeypatch.setattr(StreamingImageDataset, "_read_step", spy)
    stream = build(folder_cfg(data_cfg, image_folder, max_device_bytes=1), seed=5)
    try:
        for step in [0, 1, 2, 3, 7, 8]:
            stream.batch(step, 4)
        stream._pending[1].result()                                # the last prefetch (step 9) has finished
    finally:
        stream.close()
    caller = threading.current_thread().name
    on_caller = sorted(s for s, name in reads if name == caller)
    ahead = sorted(s for s, name in reads if name.startswith("gantrain-data"))
    assert on_caller == [0, 7] and ahead == [1, 2, 3, 4, 8, 9]
