"""Decoding images in worker processes that cannot outlive the run.

Workers die with their parent: ``PR_SET_PDEATHSIG`` (Linux) sends them SIGKILL when the process that started
them dies, also by ``kill -9``; Ctrl-C is the parent's to handle (workers ignore SIGINT), and any failure or
interrupt of the parent terminates them at once (``Pool.terminate``), without waiting for the image they are on.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence

import numpy as np


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


def _start_pool(workers: int):
    """The worker pool, started with SIGINT held back: a Ctrl-C that lands while a worker is being forked would
    otherwise be raised inside an at-fork hook (logging's), where Python ignores it, and be lost; held back,
    it is raised as soon as the pool is up, in the decoding loop's ``try``."""
    held = hasattr(signal, "pthread_sigmask")
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return _pool_context().Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),))
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
            pool = _start_pool(workers)
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
