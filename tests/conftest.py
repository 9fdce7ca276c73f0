"""Shared fixtures: tiny data sets written in their real on-disk formats (no network).

* ``mnist_root``    -> root with ``MNIST/raw/*`` and ``FashionMNIST/raw/*`` IDX files (train + t10k)
* ``image_folder``  -> a folder of JPEGs (nested too) plus a greyscale JPEG, an RGBA PNG, a palette GIF,
                       a text file and a corrupt .jpg
* ``celeba_root``   -> root with ``celeba/img_align_celeba/NNNNNN.jpg`` (178x218 like the real faces)
* ``data_cfg``      -> ``data_cfg(name, **overrides)``: a ``data`` node built on the typed schema
"""

from __future__ import annotations

import os

# One intra-op thread per process: the suite starts training subprocesses (and DDP ranks) beside the
# pytest process, and OpenMP threads spinning on 2 shared cores made tiny models 10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

@pytest.fixture(autouse=True, scope="session")
def _metrics_cache(tmp_path_factory):
    """Metric caches (classifier, real-data statistics) in a temp dir, never the user's ~/.cache."""
    old = os.environ.get("GANTRAIN_METRICS_CACHE")
    os.environ["GANTRAIN_METRICS_CACHE"] = str(tmp_path_factory.mktemp("metrics-cache"))
    yield
    if old is None:
        os.environ.pop("GANTRAIN_METRICS_CACHE", None)
    else:
        os.environ["GANTRAIN_METRICS_CACHE"] = old


MNIST_TRAIN = 64          # examples in each fixture's train split
MNIST_TEST = 16           # ... and in its t10k split
FOLDER_JPEGS = 12         # plain RGB JPEGs in image_folder (some in a sub-folder)
FOLDER_READABLE = FOLDER_JPEGS + 3      # + greyscale JPEG, RGBA PNG, palette GIF
FOLDER_SKIPPED = 2        # notes.txt (not an image) + broken.jpg (unreadable)
CELEBA_IMAGES = 10


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 0x0000080N, big-endian dims, raw bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def mnist_like_images(n: int, seed: int) -> np.ndarray:
    """n distinct 28x28 'digits': a bright random blob on a black background, index coded in row 0."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    x[:, 6:22, 6:22] = rng.integers(0, 256, size=(n, 16, 16), dtype=np.uint8)
    x[:, 14, 14] = 255
    x[:, 27, 27] = np.arange(n) % 256 // 2      # a faint corner pixel: examples stay distinct
    return x


def write_mnist_like(raw: Path, seed: int) -> None:
    for split, n in (("train", MNIST_TRAIN), ("t10k", MNIST_TEST)):
        write_idx(raw / f"{split}-images-idx3-ubyte", mnist_like_images(n, seed + (split == "t10k")))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_mnist_like(root / "MNIST" / "raw", seed=1)
    write_mnist_like(root / "FashionMNIST" / "raw", seed=3)
    return root


def _noise_image(rng, w: int, h: int, mode: str = "RGB"):
    from PIL import Image

    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    # smooth blocks (JPEG keeps them) on top of a per-image colour, so every image decodes differently
    arr = np.repeat(np.repeat(arr[::8, ::8], 8, 0), 8, 1)[:h, :w]
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(7)
    root = tmp_path / "images"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(FOLDER_JPEGS):
        folder = root if i < 6 else (root / "sub" if i < 10 else root / "sub" / "deeper")
        w, h = (40, 30) if i % 2 else (24, 36)             # landscape and portrait: centre crop matters
        _noise_image(rng, w, h).save(folder / f"img{i:02d}.jpg", quality=95)
    _noise_image(rng, 32, 32, "L").save(root / "grey.jpg", quality=95)
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)           # fully transparent: decodes to white
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "clear.png")
    pal = _noise_image(rng, 24, 24).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(root / "palette.GIF")
    (root / "notes.txt").write_text("not an image\n")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" + bytes(100))
    return root


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    root = tmp_path / "celeba_data"
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(1, CELEBA_IMAGES + 1):
        _noise_image(rng, 178, 218).save(folder / f"{i:06d}.jpg", quality=90)
    return root


@pytest.fixture
def data_cfg():
    """``data_cfg(name, **overrides)`` -> a DictConfig ``data`` node on the typed schema, from conf/data."""
    from omegaconf import OmegaConf

    from gantrain.config import DataConfig

    conf = Path(__file__).resolve().parents[1] / "conf" / "data"

    def make(name: str, **overrides):
        import yaml

        node = yaml.safe_load((conf / f"{name}.yaml").read_text())
        # root defaults to an env-var interpolation (or ??? for folder): tests pass their own root
        if str(node.get("root", "")).startswith(("${", "???")):
            node["root"] = None
        return OmegaConf.merge(OmegaConf.structured(DataConfig), node, overrides)

    return make
