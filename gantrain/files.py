"""Small file-system helpers shared by the writers: atomic replacement (temp file + ``os.replace``), sizes in
words, free-space and writability checks, temp files of dead writers, and removal that never hides the error being reported."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gantrain.errors import UserError


def temp_name(path: str | os.PathLike) -> Path:
    """The temp file beside ``path`` that a writer fills before renaming it over ``path``: ``.NAME.tmpPID``
    (:func:`remove_dead_temps` finds those of writers that no longer run by that PID)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def replacing(path: str | os.PathLike, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """``with replacing(out) as tmp: write tmp``: ``tmp`` replaces ``out`` atomically when the block ends, so a
    reader never sees a half-written ``out``; on an error (Ctrl-C included) ``tmp`` is removed and ``out`` kept.
    ``tmp``: another temp name than :func:`temp_name`'s (a writer that needs a suffix, a cache's own pattern)."""
    tmp = temp_name(path) if tmp is None else Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def probe_writable(folder: str | os.PathLike) -> None:
    """Create and remove a file in ``folder``: raises the OSError a writer would meet there (none: writable)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def human(nbytes: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; never ``'0 MiB'`` for a small but non-empty size."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent); None if unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(path: str | os.PathLike, need: int, fix: str) -> UserError:
    """The disk-full sentence: what was being written, how much it needs, how much is free, the fix."""
    free = free_bytes(Path(path).parent)
    have = "an unknown amount" if free is None else human(free)
    return UserError(f"the disk is full: writing {path} needs about {human(need)} and {have} "
                     f"{'is' if free is None else 'are'} free; {fix}.")


def check_space(path: str | os.PathLike, need: int, fix: str, margin: float = 1.02) -> None:
    """Refuse, before writing anything, a file of ``need`` bytes that would not fit beside ``path``."""
    free = free_bytes(Path(path).parent)
    if free is not None and need * margin + 64 * 1024 > free:
        raise disk_full(path, need, fix)


def unlink_quietly(path: str | os.PathLike) -> None:
    """Remove ``path`` if it is there; a failure (read-only folder, ...) must not hide the error being raised."""
    try:
        Path(path).unlink(missing_ok=True)
    except OSError:
        pass


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (ours always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    try:  # a zombie (killed, not yet reaped) writes nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_temps(folder: str | os.PathLike, pattern: re.Pattern) -> list[Path]:
    """Delete files in ``folder`` whose name matches ``pattern`` (group 1: the writer's PID) and whose writer
    no longer runs, e.g. one killed while writing."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m is None or alive(int(m.group(1))):
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
