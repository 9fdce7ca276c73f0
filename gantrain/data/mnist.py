"""MNIST and Fashion-MNIST: the IDX files under ``<root>/MNIST/raw`` (``<root>/FashionMNIST/raw``).

torchvision's own loaders read them; before that, each file's magic number and size are checked, so a
missing, packed or truncated file is named with the fix. 28x28x1. When a model asks for another
``resolution`` the digits are padded with the background value (0 in uint8, i.e. -1 after scaling; black,
which is MNIST's and Fashion-MNIST's background) centred in the larger square, or resized with
antialiasing when it is smaller.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from gantrain.data.base import Dataset, data_root, image_resolution, setting
from gantrain.data.decoded_cache import check_size
from gantrain.data.streaming import make_image_dataset
from gantrain.errors import UserError

IDX_FILES = ("{split}-images-idx3-ubyte", "{split}-labels-idx1-ubyte")
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def _check_idx(path: Path, ndim: int) -> tuple[str | None, tuple[int, ...]]:
    """Check an uncompressed uint8 IDX file's magic number and size; returns (problem or None, dims)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except OSError as e:
        return f"cannot be read ({e.strerror})", ()
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
        return f"has no uint8 {ndim}-d IDX header (magic 0x0000080{ndim})", ()
    if len(head) < 4 + 4 * ndim:
        return "is truncated (incomplete header)", ()
    dims = struct.unpack(">" + "I" * ndim, head[4:])
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"is {state} ({size} bytes, expected {expected})", dims
    return None, dims


def _refuse_missing(title: str, raw: Path, download: bool, error: BaseException | None) -> None:
    """torchvision insists on all four files (train and t10k) before it reads either split: name the absent."""
    needed = [p.format(split=s) for s in ("train", "t10k") for p in IDX_FILES]
    missing = [f for f in needed if not (raw / f).is_file()]
    if not missing:
        return
    names = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
    if download:
        raise UserError(f"{title} could not be downloaded into {raw} ({error}); "
                        f"copy {names} there by hand.")
    gz = [f for f in missing if (raw / (f + ".gz")).is_file()]
    hint = f"unpack the .gz archives there (gunzip {raw}/*.gz)" if gz else "copy them there"
    raise UserError(f"{title} not found: expected {names} in {raw}; pass data.download=true or {hint}.")


def _refuse_damaged(title: str, raw: Path, train: bool) -> None:
    """The split's image and label files: a valid header, the size it promises, 28x28, as many of each."""
    files = [raw / p.format(split="train" if train else "t10k") for p in IDX_FILES]
    counts = []
    for path, nd in zip(files, (3, 1)):
        problem, dims = _check_idx(path, nd)
        if problem is None and nd == 3 and tuple(dims[1:]) != (28, 28):
            problem = f"holds {dims[1]}x{dims[2]} images, not 28x28"
        if problem:
            raise UserError(f"{title} file {path} {problem}: delete it and download it again "
                            "(data.download=true).")
        counts.append(dims[0])
    if counts[0] != counts[1]:
        raise UserError(f"{title} files in {raw} disagree ({counts[0]} images, {counts[1]} labels): delete "
                        f"{files[0].name} and {files[1].name} and download them again (data.download=true).")


def load_mnist_like(cfg_data, name: str, split: str | None = None):
    """The split's images as a uint8 (N, 28, 28) tensor, via torchvision; UserError when absent or corrupt.
    With ``split`` given (the metrics' classifier): (images, int64 labels) of that split."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    title = TITLES[name]
    root = data_root(cfg_data)
    with_labels = split is not None
    split = split or str(setting(cfg_data, "split", "train"))
    if split not in ("train", "test"):
        raise UserError(f"data.split={split} is unknown for {title}: choose train or test.")
    train = split == "train"
    download = bool(setting(cfg_data, "download", False))
    raw = root / cls.__name__ / "raw"
    error: BaseException | None = None
    ds = None
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as e:           # torchvision raises RuntimeError, AssertionError, URLError...
        error = e
    _refuse_missing(title, raw, download, error)
    _refuse_damaged(title, raw, train)
    if ds is None:
        raise UserError(f"torchvision could not read {title} from {raw} ({error}); delete the files there "
                        "and download them again (data.download=true).")
    data = ds.data
    if data.dtype != torch.uint8 or data.ndim != 3:
        raise UserError(f"{title} in {raw} has unexpected data ({data.dtype}, {tuple(data.shape)}); "
                        "delete it and download it again (data.download=true).")
    return (data, ds.targets.long()) if with_labels else data


def fit_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N,C,S,S) -> (N,C,R,R): pad with 0 (centred; the extra pixel, if odd, goes right/bottom) when
    R > S, resize with antialiasing when R < S."""
    size = x.shape[-1]
    if resolution == size:
        return x
    if resolution > size:
        before = (resolution - size) // 2
        after = resolution - size - before
        return torch.nn.functional.pad(x, (before, after, before, after), value=0)
    out = torch.nn.functional.interpolate(x.float(), size=(resolution, resolution), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def build_mnist(cfg_data, *, device, seed, rank, world_size, resolution=None) -> Dataset:
    name = str(cfg_data.name)
    data = load_mnist_like(cfg_data, name).unsqueeze(1)          # (N, 1, 28, 28) uint8
    res = image_resolution(cfg_data, resolution, 28)
    check_size(len(data), res, 1)
    data = fit_resolution(data, res)
    array = data.permute(0, 2, 3, 1).contiguous().numpy()        # (N, H, W, 1)
    return make_image_dataset(array, cfg_data, name=name, device=device, seed=seed, rank=rank,
                              world_size=world_size)
