"""Image data sets: MNIST / Fashion-MNIST through torchvision, CelebA and any folder of images.

* ``mnist``, ``fashion_mnist``: torchvision's own loaders read the IDX files under
  ``<root>/MNIST/raw`` (``<root>/FashionMNIST/raw``). 28x28x1. When a model asks for another
  ``resolution`` the digits are padded with the background value (0 in uint8, i.e. -1 after scaling;
  black, which is MNIST's and Fashion-MNIST's background) centred in the larger square, or resized
  with antialiasing when it is smaller.
* ``celeba``: ``<root>/celeba/img_align_celeba/*.jpg`` (or ``<root>/img_align_celeba``), read as a folder.
* ``folder``: every image file under ``data.root`` (recursive; hidden files and folders are ignored).

CelebA and folder images are centre-cropped to a square, resized to the resolution and converted to
``data.channels`` (1 = "L", 3 = "RGB"; transparent pixels are composited onto white), once, in
parallel, into a decoded cache ``<cache_dir>/<name>-<hash>.npy`` (uint8 N,H,W,C) that later runs
memory-map instead of decoding JPEGs again. Data sets whose decoded bytes fit in
``data.max_device_bytes`` live in one uint8 tensor on the device; larger ones are streamed from the
cache by a background thread (into pinned memory when the device is CUDA).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from gantrain.data import decode
from gantrain.data.base import Dataset, TensorDataset, uint8_to_float
from gantrain.data.decode import _npy_header  # noqa: F401 (re-exported)
from gantrain.errors import UserError

log = logging.getLogger(__name__)

# Bump when the decoded-cache layout or the decoding itself changes: old caches are then rebuilt.
CACHE_VERSION = 1
DEFAULT_ROOT = "~/.cache/gantrain/data"
FALLBACK_CACHE_DIR = "~/.cache/gantrain/cache"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"})
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def _cfg(cfg, key, default=None):
    value = cfg.get(key, None) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return default if value is None else value


def _root(cfg_data) -> Path:
    root = _cfg(cfg_data, "root", os.environ.get("GANTRAIN_DATA", DEFAULT_ROOT))
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).absolute()


# ============================================================================ device / streaming


def array_to_device(array: np.ndarray, device: torch.device, chunk: int = 8192) -> torch.Tensor:
    """uint8 (N,H,W,C) numpy array or memmap -> uint8 (N,C,H,W) tensor on ``device``, copied in chunks."""
    n, h, w, c = array.shape
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device)
    for i in range(0, n, chunk):
        part = torch.from_numpy(np.array(array[i:i + chunk]))      # a writable copy of this chunk
        out[i:i + part.shape[0]] = part.to(device).permute(0, 3, 1, 2)
    return out


class StreamingImageDataset(Dataset):
    """Images read per batch from a uint8 (N,H,W,C) array (normally the memory-mapped decoded cache).

    A background thread reads batch ``step + 1`` while the caller trains on ``step``; it is used only
    when the next call asks for exactly that batch, so ``batch`` stays a pure function of ``step``.
    """

    def __init__(self, array: np.ndarray, **kw) -> None:
        n, h, w, c = array.shape
        super().__init__(kind="image", shape=(c, h, w), total=n, **kw)
        self.array = array
        self._pin = self.device.type == "cuda"
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="gantrain-data")
        self._pending = None     # ((step, batch_size), Future)

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        stored = idx % self.stored                           # data.xflip: the second half is mirrored
        order = np.argsort(stored, kind="stable")            # read the file in order
        rows = self.array[stored[order]]
        out = np.empty_like(rows)
        out[order] = rows
        if self.xflip:
            out[idx >= self.stored] = out[idx >= self.stored, :, ::-1]  # (N, H, W, C): mirror W
        t = torch.from_numpy(out)
        return t.pin_memory() if self._pin else t

    def _read_step(self, step: int, batch_size: int) -> torch.Tensor:
        return self._read(self.indices(step, batch_size).numpy())

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=self._pin)
        return uint8_to_float(t.permute(0, 3, 1, 2).contiguous())

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        self._position(step, batch_size)                     # validates step and batch_size
        if self._pool is None:
            raise RuntimeError(f"data set {self.name} is closed")
        key = (int(step), int(batch_size))
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == key:
            t = pending[1].result()
        else:
            t = self._read_step(*key)
        self._pending = ((key[0] + 1, key[1]), self._pool.submit(self._read_step, key[0] + 1, key[1]))
        return self._finish(t)

    def real_samples(self, n: int) -> torch.Tensor:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        return self._finish(self._read(self._fixed_indices(n).numpy()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None
        super().close()


def make_image_dataset(array: np.ndarray, cfg_data, *, name: str, device: torch.device, seed: int, rank: int,
                       world_size: int) -> Dataset:
    """Device-resident when the decoded bytes fit ``data.max_device_bytes``, else streamed from ``array``."""
    kw = dict(name=name, device=device, seed=seed, rank=rank, world_size=world_size,
              xflip=bool(_cfg(cfg_data, "xflip", False)))
    limit = int(_cfg(cfg_data, "max_device_bytes", 4 * 1024**3))
    if array.nbytes <= limit:
        return TensorDataset(array_to_device(array, device), kind="image", **kw)
    log.info("data set %s: %.1f MB decoded exceeds data.max_device_bytes=%d; streaming it from %s",
             name, array.nbytes / 1e6, limit, getattr(array, "filename", None) or "host memory")
    return StreamingImageDataset(array, **kw)


# ============================================================================ MNIST / Fashion-MNIST

_IDX_FILES = ("{split}-images-idx3-ubyte", "{split}-labels-idx1-ubyte")


def _check_idx(path: Path, ndim: int) -> tuple[str | None, tuple[int, ...]]:
    """Check an uncompressed uint8 IDX file's magic number and size; returns (problem or None, dims)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except OSError as e:
        return f"cannot be read ({e.strerror})", ()
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] != ndim:
        return f"has no uint8 {ndim}-d IDX header (magic 0x0000080{ndim})", ()
    if len(head) < 4 + 4 * ndim:
        return "is truncated (incomplete header)", ()
    dims = struct.unpack(">" + "I" * ndim, head[4:])
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"is {state} ({size} bytes, expected {expected})", dims
    return None, dims


def load_mnist_like(cfg_data, name: str, split: str | None = None):
    """The split's images as a uint8 (N, 28, 28) tensor, via torchvision; UserError when absent or corrupt.
    With ``split`` given (the metrics' classifier): (images, int64 labels) of that split."""
    from torchvision import datasets

    cls, title = {"mnist": (datasets.MNIST, "MNIST"),
                  "fashion_mnist": (datasets.FashionMNIST, "Fashion-MNIST")}[name]
    root = _root(cfg_data)
    with_labels = split is not None
    split = split or str(_cfg(cfg_data, "split", "train"))
    if split not in ("train", "test"):
        raise UserError(f"data.split={split} is unknown for {title}: choose train or test.")
    train = split == "train"
    download = bool(_cfg(cfg_data, "download", False))
    raw = root / cls.__name__ / "raw"
    # torchvision insists on all four files (train and t10k) before it reads either split
    needed = [p.format(split=s) for s in ("train", "t10k") for p in _IDX_FILES]
    error: BaseException | None = None
    ds = None
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as e:           # torchvision raises RuntimeError, AssertionError, URLError...
        error = e
    missing = [f for f in needed if not (raw / f).is_file()]
    if missing:
        names = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        if download:
            raise UserError(f"{title} could not be downloaded into {raw} ({error}); "
                            f"copy {names} there by hand.")
        gz = [f for f in missing if (raw / (f + ".gz")).is_file()]
        hint = f"unpack the .gz archives there (gunzip {raw}/*.gz)" if gz else "copy them there"
        raise UserError(f"{title} not found: expected {names} in {raw}; pass data.download=true or {hint}.")
    files = [raw / p.format(split="train" if train else "t10k") for p in _IDX_FILES]
    counts = []
    for path, nd in zip(files, (3, 1)):
        problem, dims = _check_idx(path, nd)
        if problem is None and nd == 3 and tuple(dims[1:]) != (28, 28):
            problem = f"holds {dims[1]}x{dims[2]} images, not 28x28"
        if problem:
            raise UserError(f"{title} file {path} {problem}: delete it and download it again "
                            "(data.download=true).")
        counts.append(dims[0])
    if counts[0] != counts[1]:
        raise UserError(f"{title} files in {raw} disagree ({counts[0]} images, {counts[1]} labels): delete "
                        f"{files[0].name} and {files[1].name} and download them again (data.download=true).")
    if ds is None:
        raise UserError(f"torchvision could not read {title} from {raw} ({error}); delete the files there "
                        "and download them again (data.download=true).")
    data = ds.data
    if data.dtype != torch.uint8 or data.ndim != 3:
        raise UserError(f"{title} in {raw} has unexpected data ({data.dtype}, {tuple(data.shape)}); "
                        "delete it and download it again (data.download=true).")
    return (data, ds.targets.long()) if with_labels else data


def fit_resolution(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 (N,C,S,S) -> (N,C,R,R): pad with 0 (centred; the extra pixel, if odd, goes right/bottom) when
    R > S, resize with antialiasing when R < S."""
    size = x.shape[-1]
    if resolution == size:
        return x
    if resolution > size:
        before = (resolution - size) // 2
        after = resolution - size - before
        return torch.nn.functional.pad(x, (before, after, before, after), value=0)
    out = torch.nn.functional.interpolate(x.float(), size=(resolution, resolution), mode="bilinear",
                                          antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def build_mnist(cfg_data, *, device, seed, rank, world_size, resolution=None) -> Dataset:
    name = str(cfg_data.name)
    data = load_mnist_like(cfg_data, name).unsqueeze(1)          # (N, 1, 28, 28) uint8
    res = int(resolution or _cfg(cfg_data, "resolution", 28))
    if res < 1:
        raise UserError(f"resolution {res} is invalid for {name}: it must be positive.")
    decode.check_size(len(data), res, 1)
    data = fit_resolution(data, res)
    array = data.permute(0, 2, 3, 1).contiguous().numpy()        # (N, H, W, 1)
    return make_image_dataset(array, cfg_data, name=name, device=device, seed=seed, rank=rank,
                              world_size=world_size)


# ============================================================================ folders of images


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

    def build(self, *, workers: int, progress: bool, desc: str) -> None:
        decode.write_cache(decode_image, [p for p, _, _ in self.files], self.path, self.meta_path,
                           version=CACHE_VERSION, resolution=self.resolution, channels=self.channels,
                           workers=workers, progress=progress, desc=desc)

    def get(self, *, workers: int, progress: bool, desc: str) -> tuple[np.ndarray, dict]:
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
            self.build(workers=workers, progress=progress, desc=desc)
            arr, meta, why = self.load()
        if arr is None:
            raise RuntimeError(f"the decoded-image cache {self.path} is unusable right after building it: "
                               f"{why}")
        return arr, meta


def _cache_dir(cfg_data, root: Path) -> tuple[Path, bool]:
    """(cache folder, whether it is the default one inside the data root)."""
    explicit = _cfg(cfg_data, "cache_dir")
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


def build_folder(cfg_data, *, device, seed, rank, world_size, resolution=None, progress=True) -> Dataset:
    name = str(cfg_data.name)
    if name == "folder" and not _cfg(cfg_data, "root"):
        raise UserError("data=folder needs the images' location: add data.root=/path/to/images.")
    root = _root(cfg_data)
    res = int(resolution or _cfg(cfg_data, "resolution", 64))
    channels = int(_cfg(cfg_data, "channels", 3))
    if res < 1:
        raise UserError(f"data.resolution={res} is invalid: it must be positive.")
    if channels not in (1, 3):
        raise UserError(f"data.channels={channels} is not supported: choose 1 (greyscale) or 3 (RGB).")
    if name == "celeba":
        top = _celeba_dir(root)
        files, others = scan_images(top, recursive=False)
    else:
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
        top = root
        files, others = scan_images(top, recursive=True)
        if not files:
            raise UserError(f"no image files found in {root} (searched recursively for "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); point data.root at a folder of images.")
    decode.check_size(len(files), res, channels)   # an absurd resolution, before anything is decoded
    cache_dir, in_root = _cache_dir(cfg_data, root)
    cache = ImageCache(files, top=top, cache_dir=cache_dir, name=name, resolution=res, channels=channels,
                       location_independent=in_root)
    workers = int(_cfg(cfg_data, "decode_workers", 0)) or os.cpu_count() or 1
    array, meta = cache.get(workers=workers, progress=progress, desc=f"decoding {name} {res}x{res}")
    unreadable = int(meta.get("unreadable", 0))
    if others or unreadable:
        examples = meta.get("unreadable_examples") or []
        log.warning("%s: skipped %d of %d files in %s: %d not images (by extension), %d unreadable%s",
                    name, others + unreadable, others + len(files), top, others, unreadable,
                    f" (e.g. {', '.join(examples)})" if examples else "")
    min_images = int(_cfg(cfg_data, "min_images", 1))
    if array.shape[0] < max(1, min_images):
        raise UserError(f"{top} has {array.shape[0]} readable images, fewer than "
                        f"data.min_images={min_images}; "
                        "add images or point data.root elsewhere.")
    return make_image_dataset(array, cfg_data, name=name, device=device, seed=seed, rank=rank,
                              world_size=world_size)
