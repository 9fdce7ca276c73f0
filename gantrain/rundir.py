"""One run per run directory: an exclusive lock held for the run's lifetime.

``fcntl.flock`` on ``RUN_DIR/.gantrain.lock``: the OS releases it when the process ends, however it ends (kill -9
leaves no stale lock). The file holds the PID of the process holding the lock, for the sentence that refuses a
second run. Only the main process of a job takes it (rank 0 of a multi-process job; each sweep job locks its own
directory); a process that already holds the lock of a directory may take it again (nested use, tests).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from gantrain.errors import UserError

LOCK_NAME = ".gantrain.lock"
_held: dict[str, tuple[int, int]] = {}  # resolved run dir -> (fd, depth) held by this process


def _refuse(run_dir: Path, fd: int) -> UserError:
    try:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        pid = ""
    who = f"process {pid}" if pid.isdigit() else "another process"
    return UserError(f"the run directory {run_dir} is in use by another gantrain run ({who} holds "
                     f"{run_dir / LOCK_NAME}): wait for it to finish or stop it, or choose another directory "
                     "with hydra.run.dir=PATH.")


def acquire(run_dir: str | os.PathLike) -> None:
    """Take the run directory's lock (created if needed), or raise a UserError naming the PID that holds it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"the run directory {run_dir} cannot be created ({e.strerror or e}): choose another with "
                        "hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m).") from None
    key = str(run_dir.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        return
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UserError(f"the run directory {run_dir} is not writable ({e.strerror or e}): choose another with "
                        "hydra.run.dir=PATH (hydra.sweep.dir=PATH with -m).") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _refuse(run_dir, fd)
        os.close(fd)
        raise error from None
    except OSError:  # a file system without locks (some network mounts): run unlocked, as before
        os.close(fd)
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the lock holds without the PID (a full disk); the refusal then says "another process"
    _held[key] = (fd, 1)


def release(run_dir: str | os.PathLike) -> None:
    key = str(Path(run_dir).resolve())
    if key not in _held:
        return
    fd, depth = _held.pop(key)
    if depth > 1:
        _held[key] = (fd, depth - 1)
        return
    os.close(fd)  # closing the last descriptor releases the lock; the file stays (removing it would race)


@contextmanager
def locked(run_dir: str | os.PathLike, enabled: bool = True):
    """``with locked(run_dir):`` the run's lifetime (a no-op when ``enabled`` is false: ranks > 0)."""
    if not enabled:
        yield
        return
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)
