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
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from gantrain import files
from gantrain.checkpoint_check import validate
from gantrain.errors import UserError

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
RESUME_FIX = "free some space and resume (the previous file is intact)"
RUN_DIR_FIX = "choose another with hydra.run.dir=PATH"


def save(obj: dict[str, Any], path: str | os.PathLike, full_fix: str = RESUME_FIX,
         unwritable_fix: str = RUN_DIR_FIX) -> None:
    """Write atomically: a temp file in the same folder, flushed and fsynced, then renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written one. The free space
    is checked first: the tensors' bytes, or the size of the file it replaces when that is larger.
    """
    path = Path(path)

    def size() -> int:
        old = path.stat().st_size if path.is_file() else 0
        return max(old, sum(t.numel() * t.element_size() for t in _tensors(obj)))

    write_atomically(path, lambda f: torch.save(obj, f), size, full_fix, unwritable_fix)


def write_atomically(path: Path, write: Callable[[BinaryIO], None], size: Callable[[], int],
                     full_fix: str = RESUME_FIX, unwritable_fix: str = RUN_DIR_FIX) -> None:
    """``write`` into a temp file beside ``path``, fsync, rename over ``path`` (checkpoints, metric caches,
    gantrain-eval's JSON); ``size()``: the bytes it needs (checked before writing, and in the disk-full sentence).

    Any failure of the write (an OSError, or the RuntimeError torch's zip writer raises on a full disk) removes
    the temp file and becomes one sentence: the disk is full (``full_fix``), the place is not writable
    (``unwritable_fix``), or the write failed with its reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or e}): {unwritable_fix}.") from None
    need = size()
    files.check_space(path, need, full_fix)
    tmp = files.temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        code = getattr(e, "errno", None)
        free = files.free_bytes(path.parent)  # measured with the partial temp file still there
        written = tmp.stat().st_size if tmp.exists() else 0
        files.unlink_quietly(tmp)
        # torch's zip writer says "unexpected pos" rather than ENOSPC: a failure with (almost) no space left is one
        if code in (errno.ENOSPC, errno.EDQUOT) or (not isinstance(e, OSError) and free is not None and free < 2**20):
            raise files.disk_full(path, max(need, written), full_fix) from e
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"cannot write {path}: the folder is not writable ({e.strerror}); {unwritable_fix}.") from e
        detail = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise UserError(f"cannot write {path} ({detail}): {unwritable_fix}.") from e
    except BaseException:  # Ctrl-C, a bug in ``write``: no temp file left behind
        files.unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


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
    return files.remove_dead_temps(ckpt_dir, _TEMP)


def periodic_files(ckpt_dir: Path) -> list[Path]:
    """The ``step_*.pt`` files of ``ckpt_dir``, oldest step first (by the step's number, not the name's text:
    ``step_10000000.pt`` comes after ``step_9999990.pt``)."""
    try:
        found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _PERIODIC.match(p.name))]
    except OSError:
        return []
    return [p for _, p in sorted(found)]


def link_beside(last: Path, name: str) -> Path:
    """``name`` beside ``last``, holding its bytes: a hard link (a copy where links fail), replaced atomically."""
    path = last.parent / name
    tmp = files.temp_name(path)
    try:
        os.link(last, tmp)
        os.replace(tmp, path)  # a no-op when path is already this inode (POSIX): tmp then stays, hence the unlink
        files.unlink_quietly(tmp)
        _fsync_dir(last.parent)
    except OSError:
        files.unlink_quietly(tmp)
        with open(last, "rb") as src:
            write_atomically(path, lambda f: shutil.copyfileobj(src, f), lambda: last.stat().st_size)
    return path


def save_periodic(last: Path, step: int, keep: int) -> Path:
    """``step_XXXXXXX.pt`` beside the just-written ``last`` (last.pt), keeping the newest ``keep`` of them.

    The state is not serialised a second time: the step file is a hard link to ``last`` (a copy where the file
    system has no links). ``save`` always replaces last.pt by a new file, so the link keeps this step's bytes.
    """
    ckpt_dir = last.parent
    path = link_beside(last, f"step_{step:07d}.pt")
    periodic = periodic_files(ckpt_dir)
    for old in periodic[: max(0, len(periodic) - keep)]:
        files.unlink_quietly(old)
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
    if not zipfile.is_zipfile(path):
        raise UserError(f"checkpoint {path} is damaged or truncated (not a complete PyTorch zip archive, which "
                        "is what gantrain writes): use an earlier checkpoint from the same folder.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # unknown opcodes: damaged bytes, not a refused object
            raise UserError(f"checkpoint {path} is damaged (its pickled data is not readable): use an earlier "
                            "checkpoint from the same folder.") from e
        raise UserError(f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
                        "(it could run code when loaded), so it was not loaded.") from e
    except Exception as e:  # garbage bytes surface as KeyError, IndexError, struct.error, ...
        detail = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise UserError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {detail}): "
                        "use an earlier checkpoint from the same folder.") from e
    validate(ckpt, path, FORMAT_VERSION)
    return ckpt


@contextmanager
def restoring(path: str | os.PathLike, field: str):
    """Loading ``field`` of checkpoint ``path`` into this run's objects: a mismatch becomes one sentence."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        detail = " ".join(str(e).split()).rstrip(".") or type(e).__name__  # state_dict errors span lines
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise UserError(f"checkpoint {path}: its {field} does not fit this run ({detail}); the file is damaged or "
                        "was edited: use another checkpoint.") from None


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``run_dir/checkpoints`` (last.pt, else the highest step_*.pt)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    if (ckpt_dir / "last.pt").is_file():
        return ckpt_dir / "last.pt"
    periodic = periodic_files(ckpt_dir)
    return periodic[-1] if periodic else None
