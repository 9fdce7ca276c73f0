"""Real-data statistics and trained classifiers on disk, under ``metrics.cache_dir`` (default
``~/.cache/gantrain/metrics``): one ``NAME.pt`` per entry, written atomically, read with
``torch.load(weights_only=True)``, and a file lock so that parallel sweep jobs compute a missing entry once."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gantrain import checkpoint
from gantrain.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/gantrain/metrics"


class Cache:
    """Tensors on disk: atomic writes (temp file + os.replace), ``torch.load(weights_only=True)``, and a file
    lock so that concurrent sweep jobs compute a missing entry once."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(os.path.expanduser(str(root or DEFAULT_CACHE_DIR)))

    def get(self, name: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The cached entry ``name`` (a dict of tensors and plain values), computing it when absent.

        Returns ``(entry, hit)``."""
        from filelock import FileLock

        path = self.root / f"{name}.pt"
        try:  # a cache that cannot be written (read-only, a file, a full disk) costs time, not the run
            self.root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            lock.acquire()
        except OSError as e:
            log.warning("metrics.cache_dir=%s cannot be used (%s): computing %s without caching it; set "
                        "metrics.cache_dir to a writable folder to keep it", self.root, e.strerror or e, name)
            return compute(), False
        try:
            if path.is_file():
                try:
                    return torch.load(path, map_location="cpu", weights_only=True), True
                except Exception as e:  # noqa: BLE001 - a truncated or foreign file: compute it again
                    log.warning("metrics cache %s is unreadable (%s); recomputing it", path, e)
            entry = compute()
            try:
                checkpoint.save(entry, path, full_fix="free some space to cache it next time",  # atomic
                                unwritable_fix="set metrics.cache_dir to a writable folder to cache it")
            except UserError as e:
                log.warning("the metrics cache was not written, the run goes on (%s)", str(e).rstrip("."))
            return entry, False
        finally:
            lock.release()


def fingerprint(*tensors: torch.Tensor) -> str:
    """12 hex digits of the tensors' dtype, shape and bytes: part of a cache entry's name."""
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]
