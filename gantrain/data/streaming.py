"""Where decoded images live: in one uint8 tensor on the device, or streamed per batch from the cache file.

Data sets whose decoded bytes fit in ``data.max_device_bytes`` live on the device; larger ones are read
from the memory-mapped decoded cache by a background thread (into pinned memory when the device is CUDA).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from gantrain.data.base import Dataset, TensorDataset, setting
from gantrain.torch_utils import from_uint8

log = logging.getLogger(__name__)


def array_to_device(array: np.ndarray, device: torch.device, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N,H,W,C) numpy array or memmap -> uint8 (N,C,H,W) tensor on ``device``, copied in chunks."""
    n, h, w, c = array.shape
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device)
    for i in range(0, n, chunk):
        part = torch.from_numpy(np.array(array[i:i + chunk]))      # a writable copy of this chunk
        out[i:i + part.shape[0]] = part.to(device).permute(0, 3, 1, 2)
    return out


class StreamingImageDataset(Dataset):
    """Images read per batch from a uint8 (N,H,W,C) array (normally the memory-mapped decoded cache).

    A background thread reads batch ``step + 1`` while the caller trains on ``step``; it is used only
    when the next call asks for exactly that batch, so ``batch`` stays a pure function of ``step``.
    """

    def __init__(self, array: np.ndarray, **kw) -> None:
        n, h, w, c = array.shape
        super().__init__(kind="image", shape=(c, h, w), total=n, **kw)
        self.array = array
        self._pin = self.device.type == "cuda"
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="gantrain-data")
        self._pending = None     # ((step, batch_size), Future)

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        stored = idx % self.stored                           # data.xflip: the second half is mirrored
        order = np.argsort(stored, kind="stable")            # read the file in order
        rows = self.array[stored[order]]
        out = np.empty_like(rows)
        out[order] = rows
        if self.xflip:
            out[idx >= self.stored] = out[idx >= self.stored, :, ::-1]  # (N, H, W, C): mirror W
        t = torch.from_numpy(out)
        return t.pin_memory() if self._pin else t

    def _read_step(self, step: int, batch_size: int) -> torch.Tensor:
        return self._read(self.indices(step, batch_size).numpy())

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=self._pin)
        return from_uint8(t.permute(0, 3, 1, 2).contiguous())

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        self._position(step, batch_size)                     # validates step and batch_size
        if self._pool is None:
            raise RuntimeError(f"data set {self.name} is closed")
        key = (int(step), int(batch_size))
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            t = pending[1].result()
        else:
            t = self._read_step(*key)
        self._pending = ((key[0] + 1, key[1]), self._pool.submit(self._read_step, key[0] + 1, key[1]))
        return self._finish(t)

    def real_samples(self, n: int) -> torch.Tensor:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        return self._finish(self._read(self._fixed_indices(n).numpy()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None
        super().close()


def make_image_dataset(array: np.ndarray, cfg_data, *, name: str, device: torch.device, seed: int, rank: int,
                       world_size: int) -> Dataset:
    """Device-resident when the decoded bytes fit ``data.max_device_bytes``, else streamed from ``array``."""
    kw = dict(name=name, device=device, seed=seed, rank=rank, world_size=world_size,
              xflip=bool(setting(cfg_data, "xflip", False)))
    limit = int(setting(cfg_data, "max_device_bytes", 4 * 1024**3))
    if array.nbytes <= limit:
        return TensorDataset(array_to_device(array, device), kind="image", **kw)
    log.info("data set %s: %.1f MB decoded exceeds data.max_device_bytes=%d; streaming it from %s",
             name, array.nbytes / 1e6, limit, getattr(array, "filename", None) or "host memory")
    return StreamingImageDataset(array, **kw)
