"""What gantrain-generate may be asked to write: bounded in memory, checked against the free disk, and no temp
files left behind (a killed writer's stale ones are removed by the next call, its own on any failure).

A grid (``.png``) and a ``.gif`` are built in memory, so their size is bounded; ``.npz``
and directories are streamed, so their size is checked against the free space before anything is generated.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from gantrain import files
from gantrain.errors import UserError

MAX_GRID_BYTES = 256 * 2**20       # one .png grid's canvas (uint8)
MAX_CURVES = 10_000                # curves in one plot (matplotlib keeps every line)
MAX_FRAMES_BYTES = 1024 * 2**20    # an animation's frames, held until it is written
CURVE_IMAGE = (128, 256, 3)        # writers.curve_image's size: one frame or file of curve data
PNG_OVERHEAD = 1024                # bytes a small PNG may add over its raw pixels


def check(kind: str, out: Path, n: int, frames: int, shape: tuple[int, ...]) -> None:
    """Refuse, before generating, an output that would not fit in memory (grid, animation) or on the disk
    (``.npz``, a directory); ``frames``: an animation's frame count."""
    curves = len(shape) == 1
    pixels = math.prod(CURVE_IMAGE) if curves else math.prod(shape)
    if kind == "grid" and curves and n > MAX_CURVES:
        raise UserError(f"-n {n} is too many curves for one .png plot (at most {MAX_CURVES}): write -o "
                        "samples.npz or a directory for more.")
    if kind == "grid" and not curves:
        c, h, w = shape
        nrow = max(1, math.ceil(math.sqrt(n)))
        canvas = (2 + math.ceil(n / nrow) * (h + 2)) * (2 + nrow * (w + 2)) * c
        if canvas > MAX_GRID_BYTES:
            most = int(MAX_GRID_BYTES / ((h + 2) * (w + 2) * c))
            raise UserError(f"-n {n} is too many for a .png grid: it would be a {files.human(canvas)} image (at most "
                            f"{files.human(MAX_GRID_BYTES)}, about {most} samples of {h}x{w}); write -o "
                            "samples.npz or a directory for more.")
    if kind == "gif" and frames * pixels > MAX_FRAMES_BYTES:  # an .mp4 is streamed
        raise UserError(f"-n {n} with {frames} frames is too long an animation: its frames would take "
                        f"{files.human(frames * pixels)} of memory (at most {files.human(MAX_FRAMES_BYTES)}); "
                        "use fewer keyframes (-n) or fewer frames between them (--interpolate).")
    fix = "free some space or ask for fewer samples (-n)"
    if kind == "npz":
        per = 4 * shape[0] if curves else pixels
        files.check_space(out, n * per + 4096, fix)
    if kind == "dir":
        files.check_space(out / "x.png", n * (pixels + PNG_OVERHEAD), fix)


def _temp_pattern(kind: str, out: Path, pid: str = r"(\d+)") -> tuple[Path, re.Pattern]:
    """(folder, pattern) of generate's temp files ``.NAME.tmpPID`` for the output ``out``."""
    if kind == "dir":
        return out, re.compile(rf"^\..+\.png\.tmp{pid}$")
    return out.parent, re.compile(rf"^\.{re.escape(out.name)}\.tmp{pid}$")


def remove_stale_temps(kind: str, out: Path) -> list[Path]:
    """Delete temp files of this output left by a gantrain-generate that was killed while writing."""
    return files.remove_dead_temps(*_temp_pattern(kind, out))


def remove_own_temps(kind: str, out: Path) -> None:
    """Delete this process's temp files of ``out`` (after a failure or Ctrl-C)."""
    folder, pattern = _temp_pattern(kind, out, str(os.getpid()))
    try:
        for p in folder.iterdir():
            if pattern.match(p.name):
                files.unlink_quietly(p)
    except OSError:
        pass
