"""The quality benchmark's data sets, generated from fixed seeds and cached in real file formats.

* ``digits-<n>``: digits 0-9 rendered with PIL from several fonts (PIL's scalable default font and the
  TrueType fonts found on the machine), with a random affine map, stroke width and blur, centred in 28x28
  like MNIST, written as MNIST IDX files with labels (``<set>/MNIST/raw/``) so ``data=mnist data.root=<set>``
  and ``torchvision.datasets.MNIST`` read them as they are.
* ``digits-heldout``: another draw of the same family (10,000 train + 2,000 t10k): the scoring classifier is
  trained on its train split and the real statistics come from it, the same for every run scored.
* ``shapes`` / ``shapes-heldout``: RGB 32x32 PNGs of coloured shapes and glyphs on coloured backgrounds, in
  class subfolders (``train/<shape>/*.png``): ``data=folder`` and ``torchvision.datasets.ImageFolder``.

Each set is written into a temporary folder and renamed into place, so an interrupted build leaves nothing.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
from pathlib import Path

import numpy as np

VERSION = 1
DEFAULT_ROOT = "~/.cache/gantrain/quality"
DIGIT_SEEDS = {"digits-1500": 1, "digits-20000": 2, "digits-heldout": 3}
SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "cross", "glyph")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where the sets live: ``root``, else $GANTRAIN_QUALITY_DATA, else ~/.cache/gantrain/quality."""
    return Path(os.path.expanduser(str(root or os.environ.get("GANTRAIN_QUALITY_DATA") or DEFAULT_ROOT)))


def font_files() -> list[str]:
    """TrueType/OpenType fonts on the machine (sorted, so the draw is the same wherever the same fonts are)."""
    found: set[str] = set()
    for d in ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts")):
        for ext in ("ttf", "otf"):
            found.update(glob.glob(f"{d}/**/*.{ext}", recursive=True))
    return sorted(f for f in found if "Math" not in os.path.basename(f))


def _font(fonts: list[str], k: int, size: int):
    from PIL import ImageFont

    if k == len(fonts):  # PIL's own scalable font (Pillow >= 10.1)
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(fonts[k], size=size)


def render_digit(digit: int, rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """One 28x28 uint8 digit (white on black), MNIST-style: the glyph fits a 20x20 box, centred by mass."""
    from PIL import Image, ImageDraw, ImageFilter

    big = 96
    img = Image.new("L", (big, big), 0)
    font = _font(fonts, int(rng.integers(len(fonts) + 1)), int(rng.integers(52, 72)))
    ImageDraw.Draw(img).text((big / 2, big / 2), str(digit), fill=255, font=font, anchor="mm",
                             stroke_width=int(rng.integers(0, 6)), stroke_fill=255)
    angle, shear = np.deg2rad(rng.uniform(-15, 15)), rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    a, b = np.cos(angle) / sx, (np.sin(angle) + shear) / sx      # inverse map, output -> input
    c, d = -np.sin(angle) / sy, np.cos(angle) / sy
    cx = cy = big / 2
    img = img.transform((big, big), Image.AFFINE, (a, b, cx - a * cx - b * cy, c, d, cy - c * cx - d * cy),
                        resample=Image.BILINEAR)
    box = img.getbbox()
    if box is None:
        return np.zeros((28, 28), np.uint8)
    glyph = img.crop(box)
    scale = 20 / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))),
                         Image.LANCZOS)
    glyph = glyph.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
    g = np.asarray(glyph, np.float64)
    ys, xs = np.indices(g.shape)
    mass = max(g.sum(), 1e-9)
    oy = int(round(14 - (ys * g).sum() / mass))
    ox = int(round(14 - (xs * g).sum() / mass))
    oy, ox = min(max(oy, 0), 28 - g.shape[0]), min(max(ox, 0), 28 - g.shape[1])
    out = np.zeros((28, 28), np.float64)
    out[oy:oy + g.shape[0], ox:ox + g.shape[1]] = g
    return np.clip(out, 0, 255).round().astype(np.uint8)


def render_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digits (uint8 (n, 28, 28)) and their labels (uint8 (n,)), balanced over 0-9, from ``seed``."""
    rng = np.random.default_rng(seed)
    fonts = font_files()
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return np.stack([render_digit(int(k), rng, fonts) for k in labels]), labels


def write_idx(raw: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def _build(path: Path, write) -> Path:
    """``write(tmp)`` into a temporary folder, then rename it to ``path`` (skipped when ``path`` exists)."""
    if (path / "DONE").is_file():
        return path
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    (tmp / "DONE").write_text(f"version {VERSION}\n")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def digits(root: Path, name: str, n_train: int, n_test: int = 500) -> Path:
    """The MNIST-format set ``name`` (a folder to pass as ``data.root``), built when missing."""
    def write(tmp: Path) -> None:
        images, labels = render_digits(n_train + n_test, DIGIT_SEEDS[name])
        raw = tmp / "MNIST" / "raw"
        write_idx(raw, "train", images[:n_train], labels[:n_train])
        write_idx(raw, "t10k", images[n_train:], labels[n_train:])
    return _build(root / f"v{VERSION}" / name, write)


def render_shape(kind: int, rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """One 32x32 RGB image (uint8 (32, 32, 3)): shape ``SHAPE_CLASSES[kind]`` on a coloured background."""
    from PIL import Image, ImageDraw

    big = 64
    bg = tuple(int(v) for v in rng.integers(0, 120, 3))
    fg = tuple(int(v) for v in rng.integers(110, 256, 3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(12, 24)
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    rot = rng.uniform(0, 2 * np.pi)
    name = SHAPE_CLASSES[kind]
    if name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif name == "glyph":
        font = _font(fonts, int(rng.integers(len(fonts) + 1)), int(2.2 * r))
        draw.text((cx, cy), "ABEFGHKMRSWXYZ"[int(rng.integers(14))], fill=fg, font=font, anchor="mm")
    elif name == "cross":  # two bars at right angles
        for t in (rot, rot + np.pi / 2):
            u, v = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
            draw.polygon([tuple(np.array([cx, cy]) + a * r * u + b * 0.3 * r * v)
                          for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))], fill=fg)
    else:  # polygons: an upright-ish square, a triangle, an elongated rhombus
        corners = 3 if name == "triangle" else 4
        start = rot if name == "triangle" else np.pi / 4 + rng.uniform(-0.2, 0.2)
        if name == "diamond":
            start = rng.uniform(-0.3, 0.3)
        radii = [r, r * 0.55] * 2 if name == "diamond" else [r] * corners
        draw.polygon([(cx + q * np.cos(start + 2 * np.pi * k / corners), cy + q * np.sin(start + 2 * np.pi * k / corners))
                      for k, q in enumerate(radii)], fill=fg)
    return np.asarray(img.resize((32, 32), Image.LANCZOS), np.uint8)


def shapes(root: Path, name: str, n: int, seed: int) -> Path:
    """A folder of ``n`` 32x32 RGB PNGs in class subfolders (``<set>/images/<class>/``), built when missing."""
    def write(tmp: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        fonts = font_files()
        for c in SHAPE_CLASSES:
            (tmp / "images" / c).mkdir(parents=True)
        for i, kind in enumerate(rng.permutation(np.arange(n) % len(SHAPE_CLASSES))):
            Image.fromarray(render_shape(int(kind), rng, fonts)).save(
                tmp / "images" / SHAPE_CLASSES[kind] / f"{i:06d}.png")
    return _build(root / f"v{VERSION}" / name, write) / "images"
