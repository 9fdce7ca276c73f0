"""The dataset contract shared by every data set: deterministic, shardable, resumable batches.

``batch(step, batch_size)`` is a pure function of ``(seed, rank, world_size, step, batch_size)``:

* epoch ``e = step // batches_per_epoch`` with ``batches_per_epoch = num_examples // batch_size``
  (the last incomplete batch of an epoch is dropped);
* the global permutation of all examples for epoch ``e`` comes from a CPU ``torch.Generator``
  seeded from ``(seed, e)`` (so it is the same on CPU and CUDA);
* rank ``r`` takes ``perm[r::world_size]`` cut to ``num_examples = total // world_size`` items,
  so ranks see disjoint shards and the same number of batches.

With ``xflip`` (``data.xflip=true``) the data set has ``2N`` examples: index ``i + N`` is example ``i``
mirrored left-right (``_mirror``), so an epoch shows every image once each way round.

Resuming at step ``s`` therefore needs no data state. The permutation of the current epoch is
cached (on the device for device-resident data); ``batch`` never synchronises host and device.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from gantrain.errors import UserError
from gantrain.torch_utils import from_uint8

# real_samples() draws its fixed examples with this seed, independent of the run's seed.
REAL_SAMPLES_SEED = 0x5EED
DEFAULT_ROOT = "~/.cache/gantrain/data"


def setting(cfg, key: str, default=None):
    """``cfg.key`` of a config node (DictConfig, dict or object), ``default`` when absent or null."""
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


def image_resolution(cfg_data, resolution: int | None, default: int) -> int:
    """The image size: the model's ``resolution`` when it asks for one, else ``data.resolution``, else
    ``default`` (the data set's own); refused unless positive."""
    res = int(resolution or setting(cfg_data, "resolution", default))
    if res < 1:
        raise UserError(f"data.resolution={res} is invalid: it must be positive.")
    return res


def data_root(cfg_data) -> Path:
    """``data.root`` as an absolute path (``~`` and ``$VARS`` expanded); default $GANTRAIN_DATA or DEFAULT_ROOT."""
    root = setting(cfg_data, "root", os.environ.get("GANTRAIN_DATA", DEFAULT_ROOT))
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).absolute()


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed for ``(seed, epoch)``."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) % 2**63


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without blocking the host when the device is CUDA."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Dataset:
    """Base class; subclasses implement ``_gather`` (and may override ``_gather_cpu``)."""

    kind: str                      # "image" or "curve"
    shape: tuple[int, ...]         # (C, H, W) for images, (L,) for curves
    num_examples: int              # examples visible to this rank
    name: str
    labels: torch.Tensor | None = None     # int64 class of each stored example, on the device (labels.py)
    class_names: list[str] | None = None

    def __init__(self, *, name: str, kind: str, shape: tuple[int, ...], total: int, device: torch.device,
                 seed: int = 0, rank: int = 0, world_size: int = 1, xflip: bool = False) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.name = name
        self.kind = kind
        self.shape = tuple(int(s) for s in shape)
        self.stored = int(total)                 # examples stored (the mirrored half is made on the fly)
        self.xflip = bool(xflip)
        self.total = self.stored * (2 if self.xflip else 1)  # examples in the whole data set (all ranks)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_examples = self.total // self.world_size
        if self.num_examples < 1:
            raise UserError(f"data set {name} has {self.total} examples, too few to give each of "
                            f"{self.world_size} processes one; use fewer processes or more data.")
        # the current epoch's order and the next one's (a prefetching thread may cross into it), on the CPU
        # and on the device; lru_cache is thread-safe
        self.epoch_permutation = functools.lru_cache(maxsize=2)(self._permutation)
        self._epoch_permutation_device = functools.lru_cache(maxsize=2)(
            lambda epoch: to_device(self.epoch_permutation(epoch), self.device))

    # ------------------------------------------------------------------ permutations
    def batches_per_epoch(self, batch_size: int) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        bpe = self.num_examples // batch_size
        if bpe < 1:
            raise UserError(f"data.batch_size={batch_size} is larger than the {self.num_examples} examples "
                            f"of data set {self.name} per process; lower data.batch_size.")
        return bpe

    def _permutation(self, epoch: int) -> torch.Tensor:
        """This rank's example order for ``epoch`` (CPU int64 tensor of length ``num_examples``); called
        through the cached ``epoch_permutation``."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        glob = torch.randperm(self.total, generator=g)
        return glob[self.rank::self.world_size][: self.num_examples].contiguous()

    def _position(self, step: int, batch_size: int) -> tuple[int, int]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        bpe = self.batches_per_epoch(batch_size)
        epoch, j = divmod(int(step), bpe)
        return epoch, j * batch_size

    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        """The example indices of ``batch(step, batch_size)`` (CPU int64), for tests and debugging."""
        epoch, start = self._position(step, batch_size)
        return self.epoch_permutation(epoch)[start:start + batch_size]

    def _fixed_indices(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(REAL_SAMPLES_SEED)
        perm = torch.randperm(self.total, generator=g)
        return perm[torch.arange(n) % self.total]

    # ------------------------------------------------------------------ public API
    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """Real examples for ``step``: float32 on the device ((N,C,H,W) in [-1, 1], or (N,L) curves)."""
        epoch, start = self._position(step, batch_size)
        idx = self._epoch_permutation_device(epoch)[start:start + batch_size]
        return self._gather(idx)

    def batch_labels(self, step: int, batch_size: int) -> torch.Tensor:
        """The classes of ``batch(step, batch_size)``: the same indices into ``labels`` (int64, device)."""
        epoch, start = self._position(step, batch_size)
        idx = self._epoch_permutation_device(epoch)[start:start + batch_size]
        return self.labels[idx % self.stored]

    def real_labels(self, n: int) -> torch.Tensor:
        """The classes of ``real_samples(n)``."""
        return self.labels[to_device(self._fixed_indices(n), self.device) % self.stored]

    def real_samples(self, n: int) -> torch.Tensor:
        """``n`` fixed examples (the same on every call, every rank and every run seed)."""
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        return self._gather(to_device(self._fixed_indices(n), self.device))

    def close(self) -> None:
        self.epoch_permutation.cache_clear()
        self._epoch_permutation_device.cache_clear()

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:   # idx: int64 on self.device
        raise NotImplementedError

    def _mirror(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``x`` (gathered at ``idx % stored``) with the examples of the second half mirrored left-right."""
        if not self.xflip:
            return x
        flip = (idx >= self.stored).view(-1, *[1] * (x.dim() - 1))
        return torch.where(flip, x.flip(-1), x)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
                f"num_examples={self.num_examples}, device={self.device})")


class TensorDataset(Dataset):
    """Everything on the device in one tensor. ``data`` is either uint8 images (N,C,H,W), converted to
    float in [-1, 1] per batch, or float curves (N,L) returned as they are."""

    def __init__(self, data: torch.Tensor, **kw) -> None:
        super().__init__(shape=tuple(data.shape[1:]), total=data.shape[0], **kw)
        self.data = data.to(self.device)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        x = torch.index_select(self.data, 0, idx % self.stored if self.xflip else idx)
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        return self._mirror(x, idx)

    def close(self) -> None:
        super().close()
        self.data = self.data.new_empty((0, *self.data.shape[1:]))  # a slice would keep the storage alive
