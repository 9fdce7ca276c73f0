"""gantrain-generate's outputs: which kind a path asks for, that it can be written, and the writers.

``.png`` a grid (for sine data a plot of the curves), ``.npz`` raw samples (``images`` uint8 N,H,W,C or
``curves`` float32 N,L, plus ``labels`` for a conditional checkpoint), a directory one PNG per sample,
``.gif`` the frames of an interpolation (``.mp4``: gantrain.media). Every file is written to a temp file
``.NAME.tmpPID`` beside it and renamed into place (files.replacing; gantrain.output_limits removes the temps
of a killed run);
batches are consumed as they come, so memory stays bounded for any N.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gantrain import files
from gantrain.errors import UserError
from gantrain.summaries import curves_figure
from gantrain.torch_utils import to_uint8

KINDS = {".png": "grid", ".npz": "npz", ".gif": "gif", ".mp4": "mp4"}


def output_kind(out: str, quiet: bool = False) -> tuple[str, Path]:
    """("grid" | "npz" | "gif" | "dir", path) from OUT; an unknown extension is a UserError (``quiet``: "?")."""
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir() or not path.suffix:
        return "dir", path
    kind = KINDS.get(path.suffix.lower())
    if kind is None and quiet:
        return "?", path
    if kind is None:
        raise UserError(f"-o {out}: the extension {path.suffix} is not one gantrain-generate writes; use .png "
                        "(a grid), .npz (raw samples), .gif or .mp4 (an interpolation) or a directory (one PNG per sample).")
    return kind, path


def check_output(kind: str, path: Path, out: str) -> None:
    """Create the output's folder and make sure it can be written, before any work is done."""
    folder = path if kind == "dir" else path.parent
    try:
        if path.exists() and kind != "dir" and path.is_dir():
            raise UserError(f"-o {out} is an existing folder, not a {kind} file: choose another name.")
        folder.mkdir(parents=True, exist_ok=True)
        files.probe_writable(folder)
    except OSError as e:
        raise UserError(f"cannot write -o {out}: {e.strerror or e} ({folder}); choose a writable path.") from None


def to_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> a uint8 array (N, H, W, C), as image files hold them."""
    return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def curve_image(y: np.ndarray, width: int = 256, height: int = 128, ylim: float = 1.5):
    """One curve as a small PIL line plot (fast enough for tens of thousands of files)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.line([(0, height / 2), (width, height / 2)], fill=(200, 200, 200))
    xs = np.linspace(4, width - 5, len(y))
    ys = (1 - (np.clip(y, -ylim, ylim) + ylim) / (2 * ylim)) * (height - 8) + 4
    draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(214, 39, 40), width=2)
    return img


def write_grid(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool, nrow: int | None = None) -> None:
    """One PNG: a plot of the curves, or the images tiled ``nrow`` per row (default: a square)."""
    with files.replacing(out) as tmp:
        if curves:
            curves_figure(batches, n=n, title=f"{n} generated curves", dpi=100).savefig(tmp, format="png")
        else:
            to_pil(_tile(batches, n, nrow or max(1, math.ceil(math.sqrt(n))))).save(tmp, format="PNG")


def _tile(batches: Iterator[torch.Tensor], n: int, nrow: int) -> np.ndarray:
    """make_grid's layout (padding 2), tiled by hand so that batches go straight into the uint8 canvas and
    never all exist as float tensors at once."""
    tiles = None
    done = 0
    for b in batches:
        imgs = to_uint8_hwc(b)
        if tiles is None:
            h, w, c = imgs.shape[1:]
            rows, pad = math.ceil(n / nrow), 2
            tiles = np.zeros((pad + rows * (h + pad), pad + nrow * (w + pad), c), dtype=np.uint8)
        for img in imgs:
            r, col = divmod(done, nrow)
            top, left = pad + r * (h + pad), pad + col * (w + pad)
            tiles[top:top + h, left:left + w] = img
            done += 1
    return tiles


def write_npz(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool,
              labels: np.ndarray | None = None) -> None:
    """Stream the samples into the .npz (a zip of one .npy) batch by batch: memory stays bounded.
    ``labels``: the samples' classes (conditional checkpoints), stored as ``labels``."""
    first = next(batches)
    arr = first.numpy().astype(np.float32) if curves else to_uint8_hwc(first)
    name = "curves" if curves else "images"
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
              "shape": (n, *arr.shape[1:])}
    with files.replacing(out) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            f.write(np.ascontiguousarray(arr).tobytes())
            for b in batches:
                arr = b.numpy().astype(np.float32) if curves else to_uint8_hwc(b)
                f.write(np.ascontiguousarray(arr).tobytes())
        if labels is not None:
            with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_STORED, allowZip64=True) as zf, \
                    zf.open("labels.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))


def write_dir(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(n - 1)))
    i = 0
    for b in batches:
        items = b.numpy() if curves else to_uint8_hwc(b)
        for item in items:
            img = curve_image(item) if curves else to_pil(item)
            with files.replacing(out / f"{i:0{digits}d}.png") as tmp:
                img.save(tmp, format="PNG")
            i += 1


def write_gif(frames: Iterator[torch.Tensor], out: Path, curves: bool, fps: float = 25.0) -> None:
    images = []
    for b in frames:
        if curves:
            images.extend(curve_image(y) for y in b.numpy())
        else:
            images.extend(to_pil(a) for a in to_uint8_hwc(b))
    with files.replacing(out) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0)
