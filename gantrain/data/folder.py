"""Folders of images: CelebA and any folder (``data=folder``).

* ``celeba``: ``<root>/celeba/img_align_celeba/*.jpg`` (or ``<root>/img_align_celeba``), read as a folder.
* ``folder``: every image file under ``data.root`` (recursive; hidden files and folders are ignored).

Images are EXIF-rotated, centre-cropped to a square, resized to the resolution and converted to
``data.channels`` (1 = "L", 3 = "RGB"; transparent pixels are composited onto white), once, in parallel,
into the decoded cache (gantrain/data/decoded_cache.py) that later runs memory-map instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from gantrain.data.base import Dataset, data_root, image_resolution, setting
from gantrain.data.decoded_cache import ImageCache, cache_folder, check_size
from gantrain.data.streaming import make_image_dataset
from gantrain.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"})
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def scan_images(top: Path, recursive: bool = True) -> tuple[list[tuple[str, int, int]], int]:
    """Image files under ``top`` as sorted (path, size, mtime_ns), and the count of other files.

    Hidden files and folders (name starting with '.') are ignored, the cache folder among them."""
    files: list[tuple[str, int, int]] = []
    others = 0
    seen = set()
    stack = [str(top)]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:      # a symlink loop
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError as e:
            log.warning("cannot list %s (%s); skipping it", d, e.strerror)
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    if recursive:
                        stack.append(e.path)
                    continue
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                    st = e.stat()
                    files.append((e.path, st.st_size, st.st_mtime_ns))
                else:
                    others += 1
            except OSError:
                others += 1
    files.sort()
    return files, others


def _to_mode(im, mode: str):
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):     # 16-bit / float greyscale
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        background.alpha_composite(im)
        im = background
    return im if im.mode == mode else im.convert(mode)


def decode_image(path: str, resolution: int, channels: int) -> np.ndarray | None:
    """One image -> uint8 (R, R, C): EXIF-rotated, converted, centre-cropped, resized. None if unreadable."""
    from PIL import Image, ImageOps

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(mode, (resolution, resolution))        # DCT-domain downscale: much faster
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, mode)
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.BICUBIC)   # antialiased
            arr = np.asarray(im, dtype=np.uint8)
    except Exception:         # unreadable, truncated, not an image, decompression bomb...
        return None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape != (resolution, resolution, channels):
        return None
    return arr


def _celeba_dir(root: Path) -> Path:
    candidates = [root / "celeba" / "img_align_celeba", root / "img_align_celeba"]
    if root.name == "img_align_celeba":
        candidates.insert(0, root)
    for c in candidates:
        if c.is_dir() and any(os.path.splitext(n)[1].lower() in (".jpg", ".jpeg") for n in os.listdir(c)):
            return c
    raise UserError(f"CelebA not found in {root}: download img_align_celeba.zip (\"Align&Cropped Images\") "
                    f"from {CELEBA_URL} and unzip it into {root / 'celeba'}, so that "
                    f"{root / 'celeba' / 'img_align_celeba' / '000001.jpg'} exists.")


def _image_files(name: str, root: Path) -> tuple[Path, list[tuple[str, int, int]], int]:
    """(the folder the images are in, its image files, the count of other files), or a UserError saying why
    there are none."""
    if name == "celeba":
        top = _celeba_dir(root)
        return (top, *scan_images(top, recursive=False))
    if not root.exists():
        raise UserError(f"data.root={root} does not exist; point it at a folder of images.")
    if not root.is_dir():
        raise UserError(f"data.root={root} is not a folder; point it at a folder of images.")
    try:
        with os.scandir(root):
            pass
    except OSError as e:
        raise UserError(f"data.root={root} cannot be read ({e.strerror}); give this user read access "
                        "to it or point data.root elsewhere.") from None
    files, others = scan_images(root, recursive=True)
    if not files:
        raise UserError(f"no image files found in {root} (searched recursively for "
                        f"{', '.join(sorted(IMAGE_EXTENSIONS))}); point data.root at a folder of images.")
    return root, files, others


def build_folder(cfg_data, *, device, seed, rank, world_size, resolution=None, progress=True) -> Dataset:
    name = str(cfg_data.name)
    if name == "folder" and not setting(cfg_data, "root"):
        raise UserError("data=folder needs the images' location: add data.root=/path/to/images.")
    root = data_root(cfg_data)
    res = image_resolution(cfg_data, resolution, 64)
    channels = int(setting(cfg_data, "channels", 3))
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} is not supported: choose 1 (greyscale) or 3 (RGB).")
    top, files, others = _image_files(name, root)
    check_size(len(files), res, channels)   # an absurd resolution, before anything is decoded
    cache_dir, in_root = cache_folder(cfg_data, root)
    cache = ImageCache(files, top=top, cache_dir=cache_dir, name=name, resolution=res, channels=channels,
                       location_independent=in_root)
    workers = int(setting(cfg_data, "decode_workers", 0)) or os.cpu_count() or 1
    array, meta = cache.get(decode_image, workers=workers, progress=progress, desc=f"decoding {name} {res}x{res}")
    unreadable = int(meta.get("unreadable", 0))
    if others or unreadable:
        examples = meta.get("unreadable_examples") or []
        log.warning("%s: skipped %d of %d files in %s: %d not images (by extension), %d unreadable%s",
                    name, others + unreadable, others + len(files), top, others, unreadable,
                    f" (e.g. {', '.join(examples)})" if examples else "")
    min_images = int(setting(cfg_data, "min_images", 1))
    if array.shape[0] < max(1, min_images):
        raise UserError(f"{top} has {array.shape[0]} readable images, fewer than "
                        f"data.min_images={min_images}; "
                        "add images or point data.root elsewhere.")
    return make_image_dataset(array, cfg_data, name=name, device=device, seed=seed, rank=rank,
                              world_size=world_size)
