"""The decoded-image cache: a folder of images decoded once into ``<cache_dir>/<name>-<hash>.npy``.

One cache per (file list with sizes and mtimes, resolution, channels): uint8 (N, R, R, C) in a .npy file that
later runs memory-map instead of decoding the images again, plus a ``.json`` beside it (format version, count,
unreadable files). A process that finds it missing or damaged builds it under a file lock, so concurrent
runs decode once; a damaged cache is rebuilt with a warning saying why.

* Before decoding, the cache's size is known (N images of R x R x C bytes): a resolution whose single image
  is absurd, or a cache that would not fit the free space of ``data.cache_dir``, is refused with the size.
* It is written through temp files renamed into place; the temp file (``.NAME.npy.PID.tmp``) of a writer
  that no longer runs is removed by the next run.
* The folder: ``data.cache_dir``, else ``<root>/.gantrain_cache``, else (a read-only root) ~/.cache/gantrain/cache.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gantrain import files
from gantrain.data.base import setting
from gantrain.data.decode import decode_all
from gantrain.errors import UserError

log = logging.getLogger(__name__)

# Bump when the decoded-cache layout or the decoding itself changes: old caches are then rebuilt.
CACHE_VERSION = 1
FALLBACK_CACHE_DIR = "~/.cache/gantrain/cache"
MAX_IMAGE_BYTES = 8192 * 8192 * 3      # one decoded image: at most 8192x8192 RGB (192 MiB)
STALE_TEMP = re.compile(r"^\..+\.(?:npy|json)\.(\d+)\.tmp$")
CACHE_FIX = "free some space, set data.cache_dir to a folder on a larger disk, or lower data.resolution"
Decoder = Callable[..., "np.ndarray | None"]   # decode(path, resolution, channels) -> uint8 (R, R, C) or None


def check_size(n: int, resolution: int, channels: int, cache_path: Path | None = None) -> None:
    """Refuse a per-image size that is absurd and, with ``cache_path``, a cache that would not fit its disk."""
    per_image = resolution * resolution * channels
    if per_image > MAX_IMAGE_BYTES:
        raise UserError(f"data.resolution={resolution} is too large: one decoded image would take "
                        f"{files.human(per_image)} ({n} images: {files.human(per_image * n)}); use at most "
                        f"{int((MAX_IMAGE_BYTES // channels) ** 0.5)} (models train at 64 to 1024).")
    if cache_path is not None:
        files.check_space(cache_path, n * per_image + 4096, CACHE_FIX)


def _npy_header(shape: Sequence[int], length: int | None = None) -> bytes:
    """A .npy v1.0 header for uint8 C-order data, padded to ``length`` bytes (default: a multiple of 64)."""
    body = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(int(s) for s in shape)!r}, }}"
    body = body.encode("latin1")
    if length is None:
        length = 10 + len(body) + 1
        length += -length % 64
    pad = length - 10 - len(body) - 1
    if pad < 0 or length - 10 > 0xFFFF:
        raise ValueError("npy header does not fit")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length - 10) + body + b" " * pad + b"\n"


def write_cache(decode: Decoder, paths: Sequence[str], path: Path, meta_path: Path, *,
                version: int, resolution: int, channels: int, workers: int, progress: bool, desc: str) -> None:
    """Decode ``paths`` into the cache ``path`` (uint8 N,R,R,C .npy) and its ``meta_path`` JSON, through temp files
    renamed into place; nothing is left behind when it fails."""
    files.remove_dead_temps(path.parent, STALE_TEMP)
    n, r, c = len(paths), resolution, channels
    check_size(n, r, c, path)
    header = _npy_header((n, r, r, c))
    try:  # the .json is renamed into place first, the .npy (whose presence load() looks for) last
        with files.replacing(path, _temp(path)) as tmp, files.replacing(meta_path, _temp(meta_path)) as tmp_meta:
            with open(tmp, "wb") as f:
                f.write(header)
                count, bad = decode_all(decode, paths, f, resolution=r, channels=c, workers=workers,
                                        progress=progress, desc=desc)
                f.seek(0)
                f.write(_npy_header((count, r, r, c), length=len(header)))   # the real count, same length
                f.flush()
                os.fsync(f.fileno())
            meta = {"version": version, "count": count, "resolution": r, "channels": c, "files": n,
                    "unreadable": len(bad), "unreadable_examples": [os.path.basename(p) for p in bad[:5]]}
            tmp_meta.write_text(json.dumps(meta, indent=1))
    except OSError as e:  # the temp files are gone already: the sentence counts the space they held as free
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise files.disk_full(path, len(header) + n * r * r * c, CACHE_FIX) from None
        raise UserError(f"cannot write the decoded-image cache {path} ({e.strerror or e}): set data.cache_dir to a "
                        "writable folder.") from None


def _temp(path: Path) -> Path:
    """The cache's temp name ``.NAME.PID.tmp`` (:data:`STALE_TEMP` finds those of dead writers)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


class ImageCache:
    """The decoded cache of one (file list, resolution, channels): ``<dir>/<name>-<hash>.npy`` plus a
    ``.json`` beside it (format version, count, unreadable files)."""

    def __init__(self, files: Sequence[tuple[str, int, int]], *, top: Path, cache_dir: Path, name: str,
                 resolution: int, channels: int, location_independent: bool) -> None:
        self.files, self.resolution, self.channels = files, resolution, channels
        h = hashlib.sha256(f"gantrain-cache v{CACHE_VERSION} r{resolution} c{channels}\n".encode())
        if not location_independent:
            h.update(f"{top}\n".encode())
        for path, size, mtime in files:
            h.update(f"{os.path.relpath(path, top)}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
        self.key = h.hexdigest()[:16]
        self.path = cache_dir / f"{name}-{self.key}.npy"
        self.meta_path = cache_dir / f"{name}-{self.key}.json"
        self.lock_path = cache_dir / f"{name}-{self.key}.lock"

    def load(self) -> tuple[np.ndarray | None, dict | None, str | None]:
        """(memmap, meta, None) for a valid cache, else (None, None, why it is not usable)."""
        if not self.path.exists():
            return None, None, "missing"
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as e:
            return None, None, f"its metadata {self.meta_path.name} is unreadable ({e})"
        if meta.get("version") != CACHE_VERSION:
            return None, None, f"it has format version {meta.get('version')}, this is {CACHE_VERSION}"
        shape = (meta.get("count"), self.resolution, self.resolution, self.channels)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as e:
            return None, None, f"it is corrupt ({e})"
        if not isinstance(arr, np.memmap) or arr.dtype != np.uint8 or arr.shape != shape:
            return None, None, f"it holds {arr.dtype} {arr.shape}, expected uint8 {shape}"
        size = self.path.stat().st_size
        if size != arr.offset + arr.nbytes:
            return None, None, f"its size is {size} bytes, expected {arr.offset + arr.nbytes}"
        return arr, meta, None

    def build(self, decode: Decoder, *, workers: int, progress: bool, desc: str) -> None:
        write_cache(decode, [p for p, _, _ in self.files], self.path, self.meta_path, version=CACHE_VERSION,
                    resolution=self.resolution, channels=self.channels, workers=workers, progress=progress,
                    desc=desc)

    def get(self, decode: Decoder, *, workers: int, progress: bool, desc: str) -> tuple[np.ndarray, dict]:
        """The valid cache (memmap, meta), built with ``decode`` first when missing or damaged (once, under the
        lock: another process may be building it at the same moment)."""
        from filelock import FileLock

        arr, meta, why = self.load()
        if arr is not None:
            return arr, meta
        with FileLock(str(self.lock_path)):
            arr, meta, why = self.load()            # another process may have built it meanwhile
            if arr is not None:
                return arr, meta
            if why == "missing":
                log.info("decoding %d images once into %s", len(self.files), self.path)
            else:
                log.warning("rebuilding the decoded-image cache %s: %s", self.path, why)
            self.build(decode, workers=workers, progress=progress, desc=desc)
            arr, meta, why = self.load()
        if arr is None:
            raise RuntimeError(f"the decoded-image cache {self.path} is unusable right after building it: "
                               f"{why}")
        return arr, meta


def cache_folder(cfg_data, root: Path) -> tuple[Path, bool]:
    """(cache folder, whether it is the default one inside the data root)."""
    explicit = setting(cfg_data, "cache_dir")
    if explicit:
        path = Path(os.path.expandvars(os.path.expanduser(str(explicit)))).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"data.cache_dir={path} cannot be created ({e.strerror}); "
                            "choose a writable folder.") from None
        if not os.access(path, os.W_OK):
            raise UserError(f"data.cache_dir={path} is not writable; choose a writable folder.")
        return path, False
    path = root / ".gantrain_cache"
    try:
        path.mkdir(exist_ok=True)
        if os.access(path, os.W_OK):
            return path, True
    except OSError:
        pass
    fallback = Path(os.path.expanduser(FALLBACK_CACHE_DIR))
    log.info("%s is not writable; keeping the decoded-image cache in %s", root, fallback)
    try:
        fallback.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"no writable cache folder: {path} and {fallback} both fail ({e.strerror}); "
                        "set data.cache_dir=/a/writable/folder.") from None
    return fallback, False
