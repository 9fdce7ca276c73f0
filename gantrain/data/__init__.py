"""The data stage: real batches already on the device, and the shape of one example.

    data = build_dataset(cfg.data, device=device, seed=cfg.seed, rank=rank, world_size=world_size,
                         resolution=model_resolution, progress=rank == 0)
    x = data.batch(step, cfg.data.batch_size)   # pure in (seed, rank, world_size, step, batch_size)

Data knows nothing of models: a model that needs another image size passes ``resolution``.

    base.py           the Dataset contract: deterministic, shardable, resumable batches
    sine.py           the built-in sine curves
    mnist.py          MNIST / Fashion-MNIST from their IDX files
    folder.py         CelebA and any folder of images, decoded once
    decoded_cache.py  the file-locked decoded-image cache (.npy + .json), and where it lives
    decode.py         decoding in worker processes that die with the run
    streaming.py      device-resident, or streamed per batch from the cache
    labels.py         class labels for conditional models
"""

from __future__ import annotations

import logging

import torch

from gantrain.data import labels as class_labels
from gantrain.data.base import Dataset, TensorDataset
from gantrain.data.folder import build_folder
from gantrain.data.mnist import build_mnist
from gantrain.data.sine import SineDataset
from gantrain.data.streaming import StreamingImageDataset
from gantrain.errors import UserError

log = logging.getLogger(__name__)

NAMES = ("sine", "mnist", "fashion_mnist", "celeba", "folder")

__all__ = ["NAMES", "Dataset", "SineDataset", "StreamingImageDataset", "TensorDataset", "build_dataset"]


def build_dataset(cfg_data, *, device: torch.device, seed: int = 0, rank: int = 0, world_size: int = 1,
                  resolution: int | None = None, progress: bool = True, labels: bool = False) -> Dataset:
    """Build the data set named by ``cfg_data.name`` (the ``data`` config node).

    ``resolution``: the image size the model needs. MNIST-like data (28x28) is padded with the
    background value (0, i.e. -1 after scaling to [-1, 1]) up to it, or resized down to it; for
    celeba/folder it overrides ``data.resolution``. Ignored for sine curves.
    ``progress``: show a progress bar while decoding images (pass ``rank == 0``).
    ``labels``: also the class of every example (``ds.labels``, ``ds.batch_labels``; gantrain/data/labels.py).
    """
    name = cfg_data.name
    if labels:
        class_labels.check_labelled(str(name))
    device = torch.device(device)
    common = dict(device=device, seed=seed, rank=rank, world_size=world_size)
    if name == "sine":
        if cfg_data.get("xflip"):
            raise UserError("data.xflip=true mirrors images, but sine curves are not images: remove data.xflip "
                            "for data=sine.")
        ds = SineDataset(cfg_data, **common)
    elif name in ("mnist", "fashion_mnist"):
        ds = build_mnist(cfg_data, resolution=resolution, **common)
    elif name in ("celeba", "folder"):
        ds = build_folder(cfg_data, resolution=resolution, progress=progress, **common)
    else:
        raise UserError(f"data.name={name} is unknown: choose one of {', '.join(NAMES)}.")
    if labels:
        class_labels.attach(ds, cfg_data)
    log.info("data %s: %d examples of shape %s for this process, %s on %s", ds.name, ds.num_examples,
             ds.shape, "streamed" if isinstance(ds, StreamingImageDataset) else "resident", device)
    return ds
