"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) so that loading it can never
run code: G, D, G-EMA, both optimisers, both AMP scalers, the step, every RNG state, the fixed grid
latents and the resolved config.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gantrain.config import UserError

FORMAT_VERSION = 1
_PERIODIC = re.compile(r"^step_(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.pt\.tmp(\d+)$")


# ---------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as weights-only-loadable data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    # RNG states must be CPU byte tensors, also when the checkpoint was loaded with map_location=cuda
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"][: torch.cuda.device_count()]]
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------ writing
def save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write atomically: a temp file in the same folder, flushed and fsynced, then renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written one.
    """
    write_atomically(Path(path), lambda f: torch.save(obj, f),
                      lambda: sum(t.numel() * t.element_size() for t in _tensors(obj)))


def write_atomically(path: Path, write: Callable[[BinaryIO], None], size: Callable[[], int]) -> None:
    """``write`` into a temp file beside ``path``, fsync, rename over ``path`` (checkpoints, metric caches,
    gantrain-eval's JSON); ``size()``: the bytes it needs, for the disk-full sentence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            need, free = size() / 2**20, shutil.disk_usage(path.parent).free / 2**20
            raise UserError(f"the disk is full: writing {path} needs about {need:.0f} MiB and {free:.0f} MiB "
                            f"are free; free some space and resume (the previous file is intact).") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {path}: the run directory is not writable; "
                            "choose another with hydra.run.dir=PATH.") from e
        raise
    _fsync_dir(path.parent)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def remove_stale_temps(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.NAME.tmpPID``) of writers that no longer run, e.g. a run killed mid-write."""
    removed = []
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return removed
    for p in ckpt_dir.iterdir():
        m = _TEMP.match(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def save_periodic(last: Path, step: int, keep: int) -> Path:
    """``step_XXXXXXX.pt`` beside the just-written ``last`` (last.pt), keeping the newest ``keep`` of them.

    The state is not serialised a second time: the step file is a hard link to ``last`` (a copy where the file
    system has no links). ``save`` always replaces last.pt by a new file, so the link keeps this step's bytes.
    """
    ckpt_dir = last.parent
    path = ckpt_dir / f"step_{step:07d}.pt"
    tmp = _temp_name(path)
    try:
        os.link(last, tmp)
        os.replace(tmp, path)
        _fsync_dir(ckpt_dir)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(last, "rb") as src:
            write_atomically(path, lambda f: shutil.copyfileobj(src, f), lambda: last.stat().st_size)
    periodic = sorted(p for p in ckpt_dir.iterdir() if _PERIODIC.match(p.name))
    for old in periodic[: max(0, len(periodic) - keep)]:
        old.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------------------------ reading
def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; every problem becomes a UserError with one sentence."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: check the path.")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder: give the .pt file, e.g. {path}/checkpoints/last.pt.")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): use an earlier checkpoint from the same folder.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
                        "(it could run code when loaded), so it was not loaded.") from e
    except Exception as e:  # garbage bytes surface as KeyError, IndexError, struct.error, ...
        detail = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise UserError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {detail}): "
                        "use an earlier checkpoint from the same folder.") from e
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "G" not in ckpt:
        raise UserError(f"{path} is not a gantrain checkpoint (no format_version / G entries).")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format version {ckpt['format_version']}, newer than this "
                        f"gantrain understands ({FORMAT_VERSION}): upgrade gantrain.")
    return ckpt


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``run_dir/checkpoints`` (last.pt, else the highest step_*.pt)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    if (ckpt_dir / "last.pt").is_file():
        return ckpt_dir / "last.pt"
    periodic = sorted(p for p in ckpt_dir.iterdir() if _PERIODIC.match(p.name))
    return periodic[-1] if periodic else None
