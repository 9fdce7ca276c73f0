"""Decoding a folder of images into the cache file, in worker processes that cannot outlive the run.

* Workers die with their parent: ``PR_SET_PDEATHSIG`` (Linux) sends them SIGKILL when the process that
  started them dies, also by ``kill -9``; Ctrl-C is the parent's to handle (workers ignore SIGINT), and any
  failure or interrupt of the parent terminates them at once (``Pool.terminate``), without waiting for the
  image they are on.
* Before decoding, the cache's size is known (N images of R x R x C bytes): a resolution whose single image
  is absurd, or a cache that would not fit the free space of ``data.cache_dir``, is refused with the size.
* The temp file (``.NAME.npy.PID.tmp``) of a writer that no longer runs is removed by the next run.
"""

from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import re
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gantrain import files
from gantrain.errors import UserError

MAX_IMAGE_BYTES = 8192 * 8192 * 3      # one decoded image: at most 8192x8192 RGB (192 MiB)
STALE_TEMP = re.compile(r"^\..+\.(?:npy|json)\.(\d+)\.tmp$")
CACHE_FIX = "free some space, set data.cache_dir to a folder on a larger disk, or lower data.resolution"


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


def _pool_context():
    # fork: workers start at once and need not re-import the caller; they only use PIL and numpy.
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def die_with_parent(parent: int) -> None:
    """In a worker: SIGKILL when the parent dies (Linux), Ctrl-C left to the parent, default SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def decode_all(decode: Callable[..., np.ndarray | None], paths: Sequence[str], out, *, resolution: int,
               channels: int, workers: int, progress: bool, desc: str) -> tuple[int, list[str]]:
    """``decode(path, resolution, channels)`` for ``paths`` in order, writing each readable image's bytes to the
    binary file ``out``. Returns (number written, unreadable paths)."""
    from tqdm.auto import tqdm

    fn = functools.partial(decode, resolution=resolution, channels=channels)
    workers = max(1, min(workers, len(paths)))
    written, bad = 0, []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    pool = None
    try:
        if workers == 1:
            results = map(fn, paths)
        else:
            pool = _pool_context().Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),))
            results = pool.imap(fn, paths, chunksize=max(1, min(256, len(paths) // (workers * 8))))
        for path, arr in zip(paths, results):
            if arr is None:
                bad.append(path)
            else:
                out.write(arr.tobytes())
                written += 1
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # a failure or Ctrl-C: stop the workers now (a no-op after close + join)
    return written, bad


def write_cache(decode: Callable[..., np.ndarray | None], paths: Sequence[str], path: Path, meta_path: Path, *,
                version: int, resolution: int, channels: int, workers: int, progress: bool, desc: str) -> None:
    """Decode ``paths`` into the cache ``path`` (uint8 N,R,R,C .npy) and its ``meta_path`` JSON, through temp files
    renamed into place; nothing is left behind when it fails."""
    files.remove_dead_temps(path.parent, STALE_TEMP)
    n, r, c = len(paths), resolution, channels
    check_size(n, r, c, path)
    header = _npy_header((n, r, r, c))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            count, bad = decode_all(decode, paths, f, resolution=r, channels=c, workers=workers, progress=progress,
                                    desc=desc)
            f.seek(0)
            f.write(_npy_header((count, r, r, c), length=len(header)))   # the real count, same length
            f.flush()
            os.fsync(f.fileno())
        meta = {"version": version, "count": count, "resolution": r, "channels": c, "files": n,
                "unreadable": len(bad), "unreadable_examples": [os.path.basename(p) for p in bad[:5]]}
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, meta_path)
        os.replace(tmp, path)
    except OSError as e:
        files.unlink_quietly(tmp)  # first: the sentence then counts the space it held as free
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise files.disk_full(path, len(header) + n * r * r * c, CACHE_FIX) from None
        raise UserError(f"cannot write the decoded-image cache {path} ({e.strerror or e}): set data.cache_dir to a "
                        "writable folder.") from None
    finally:
        files.unlink_quietly(tmp)
        files.unlink_quietly(tmp_meta)
