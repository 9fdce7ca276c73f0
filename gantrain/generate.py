"""``gantrain-generate``: samples from a checkpoint alone (the config travels inside it).

    gantrain-generate CKPT [-n N] [-o OUT] [--seed S] [--truncation PSI] [--interpolate K] [--style-mix ROWS COLS] [--device D]

OUT by extension: ``.png`` a grid (for sine data a plot of the curves), ``.npz`` raw samples
(``images`` uint8 N,H,W,C or, for sine data, ``curves`` float32 N,L), a directory (a path ending in
``/``, an existing folder or a path without extension) one PNG per sample, ``.gif`` a smooth latent
interpolation through N keyframes (spherical in z; linear in w for StyleGAN) with K frames between
keyframes, ``.mp4`` the same as a video (needs imageio-ffmpeg). ``--style-mix ROWS COLS`` (StyleGAN, ``.png``):
the style-mixing figure for the given seeds (gantrain.media). The EMA generator is used when the checkpoint has one.

The config in a checkpoint is data, not code: only ``_target_``s naming the project's own model classes
(``gantrain.models.<module>.<Class>``) are instantiated, with plain values, without interpolation.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import secrets
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gantrain import generate_classes, interrupts, media, output_limits
from gantrain.errors import UserError
from gantrain.models import sample as _forward  # fixed noise: a seed fixes the output

BATCH = 256                         # latents per forward pass: memory stays bounded for any N
KINDS = {".png": "grid", ".npz": "npz", ".gif": "gif", ".mp4": "mp4"}
_TARGET = re.compile(r"^gantrain\.models\.([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


# -------------------------------------------------------------------------------- the generator
def _resolve_target(target: Any) -> type:
    """The class a checkpoint's ``_target_`` names, only if it is one of the project's model classes."""
    m = _TARGET.match(target) if isinstance(target, str) else None
    if m is None:
        raise UserError(f"the checkpoint's config names _target_={target!r}, which is not one of gantrain's own "
                        "model classes (gantrain.models.<module>.<Class>), so it was not instantiated.")
    try:
        module = importlib.import_module(f"gantrain.models.{m.group(1)}")
    except ImportError:
        module = None
    cls = getattr(module, m.group(2), None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == module.__name__):
        raise UserError(f"the checkpoint's config names _target_={target!r}, which is not a model class of this "
                        "gantrain (a checkpoint from another version or a crafted one), so it was not instantiated.")
    return cls


def _build(node: Any, **extra: Any) -> Any:
    """A minimal, safe ``instantiate``: plain values stay plain (no interpolation), dicts with a
    ``_target_`` become instances of gantrain's own model classes only."""
    if isinstance(node, list):
        return [_build(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return {k: _build(v) for k, v in node.items()}
    cls = _resolve_target(node["_target_"])
    if node.get("_partial_"):
        raise UserError(f"the checkpoint's config asks for a partial {node['_target_']}, which gantrain never "
                        "writes, so it was not instantiated.")
    args = [_build(v) for v in node.get("_args_", [])]
    kwargs = {k: _build(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    return cls(*args, **kwargs, **extra)


def ema_to_plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AveragedModel`` state_dict ("module.*" + "n_averaged") -> the wrapped module's state_dict."""
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}


def load_generator(ckpt: dict[str, Any], device: torch.device) -> tuple[nn.Module, bool]:
    """The checkpoint's generator in eval mode on ``device`` (the EMA one when present); (G, is_ema)."""
    try:
        node = ckpt["config"]["model"]["generator"]
        shape = tuple(int(s) for s in ckpt["data_shape"])
    except (KeyError, TypeError) as e:
        raise UserError(f"the checkpoint has no model.generator config or data_shape ({e}): it was not written "
                        "by gantrain's training loop.") from None
    if ckpt.get("class_names"):  # a conditional run's G(z, c) (gantrain/models/conditional.py)
        from gantrain.models.conditional import conditional_node

        try:
            node = conditional_node(node, len(ckpt["class_names"]))
        except (ValueError, AttributeError, TypeError) as e:
            raise UserError(f"the checkpoint's conditional generator cannot be rebuilt ({e}): the file is damaged "
                            "or was edited.") from None
    try:
        G = _build(node, shape=shape)
    except UserError:
        raise
    except Exception as e:  # a constructor refusing the stored settings
        raise UserError(f"cannot build the generator from the checkpoint's config: {e}.") from e
    use_ema = ckpt.get("G_ema") is not None
    state = ema_to_plain(ckpt["G_ema"]) if use_ema else ckpt["G"]
    try:
        G.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"the checkpoint's generator weights do not fit its config "
                        f"({str(e).splitlines()[0][:100]}): the file is damaged or was edited.") from None
    return G.to(device).eval().requires_grad_(False), use_ema


# -------------------------------------------------------------------------------------- sampling
def _latents(n: int, z_dim: int, seed: int) -> Iterator[torch.Tensor]:
    """``n`` latents in batches; drawn on the CPU from one generator, so they do not depend on the
    device or on the batch size."""
    g = torch.Generator().manual_seed(seed % 2**64)  # any integer: reduced as torch reduces -1 to 2**64 - 1
    for start in range(0, n, BATCH):
        yield torch.randn(min(BATCH, n - start), z_dim, generator=g)


def samples(G: nn.Module, n: int, seed: int, psi: float | None, device: torch.device,
            progress: bool, cols: int | None = None) -> Iterator[torch.Tensor]:
    """Batches of generated samples (float32, CPU), ``n`` in all; ``cols``: rows of the same ``cols``
    latents (``--class all``, gantrain/generate_classes.py)."""
    from tqdm import tqdm

    with torch.no_grad(), tqdm(total=n, disable=not progress, unit="sample", desc="generating") as bar:
        for z in generate_classes.latents(lambda k: _latents(k, G.z_dim, seed), n, cols):
            out = _forward(G, z.to(device), psi).float().cpu()
            bar.update(len(z))
            yield out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latents (rows of ``a`` and ``b``)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.arccos((an * bn).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    lin = (1 - t) * a + t * b
    sph = torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b
    return torch.where(so.abs() < 1e-6, lin, sph)


def interpolation(G: nn.Module, keyframes: int, between: int, seed: int, psi: float | None,
                  device: torch.device, progress: bool) -> Iterator[torch.Tensor]:
    """Frames of a closed loop through ``keyframes`` latents, ``between`` frames between each two:
    linear in w for generators with a mapping network (StyleGAN), spherical in z otherwise."""
    from tqdm import tqdm

    z = next(_latents(keyframes, G.z_dim, seed)) if keyframes <= BATCH else torch.cat(
        list(_latents(keyframes, G.z_dim, seed)))
    steps = [i / (between + 1) for i in range(between + 1)]
    style = getattr(G, "supports_truncation", False) and hasattr(G, "mapping") and hasattr(G, "synthesis")
    total = keyframes * len(steps)
    with torch.no_grad(), tqdm(total=total, disable=not progress, unit="frame", desc="interpolating") as bar:
        if style:
            ws = torch.cat([G.mapping(c.to(device), 1.0 if psi is None else psi) for c in z.split(BATCH)])
        for k in range(keyframes):
            j = (k + 1) % keyframes
            if style:
                w = torch.stack([torch.lerp(ws[k], ws[j], t) for t in steps])
                out = G.synthesis(w, noise_mode="const")
            else:
                lat = torch.stack([slerp(z[k:k + 1], z[j:j + 1], t)[0] for t in steps]).to(device)
                out = _forward(G, lat, psi)
            bar.update(len(steps))
            yield out.float().cpu()


# --------------------------------------------------------------------------------------- writers
def _pil(array: np.ndarray):
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


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_grid(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool, nrow: int | None = None) -> None:
    tmp = _tmp(out)
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        lw, alpha = (1.0, 0.8) if n <= 64 else (0.5, max(0.05, min(0.8, 40 / n)))
        for b in batches:
            y = b.numpy()
            x = np.linspace(-1, 1, y.shape[1])
            ax.plot(x, y.T, color="tab:red", lw=lw, alpha=alpha)
        ax.set_title(f"{n} generated curves")
        ax.set_ylim(-1.5, 1.5)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)
    else:
        nrow = nrow or max(1, math.ceil(math.sqrt(n)))
        tiles = None
        done = 0
        # make_grid's layout (padding 2), tiled by hand so that batches go straight into the uint8 canvas and
        # never all exist as float tensors at once
        for b in batches:
            imgs = to_uint8(b)
            if tiles is None:
                h, w, c = imgs.shape[1:]
                rows, pad = math.ceil(n / nrow), 2
                tiles = np.zeros((pad + rows * (h + pad), pad + nrow * (w + pad), c), dtype=np.uint8)
            for img in imgs:
                r, col = divmod(done, nrow)
                top, left = pad + r * (h + pad), pad + col * (w + pad)
                tiles[top:top + h, left:left + w] = img
                done += 1
        _pil(tiles).save(tmp, format="PNG")
    os.replace(tmp, out)


def write_npz(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool,
              labels: np.ndarray | None = None) -> None:
    """Stream the samples into the .npz (a zip of one .npy) batch by batch: memory stays bounded.
    ``labels``: the samples' classes (conditional checkpoints), stored as ``labels``."""
    tmp = _tmp(out)
    first = next(batches)
    arr = first.numpy().astype(np.float32) if curves else to_uint8(first)
    name = "curves" if curves else "images"
    header = {"descr": np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
              "shape": (n, *arr.shape[1:])}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf, \
            zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(f, header)
        f.write(np.ascontiguousarray(arr).tobytes())
        for b in batches:
            arr = b.numpy().astype(np.float32) if curves else to_uint8(b)
            f.write(np.ascontiguousarray(arr).tobytes())
    if labels is not None:
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_STORED, allowZip64=True) as zf, \
                zf.open("labels.npy", "w") as f:
            np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
    os.replace(tmp, out)


def write_dir(batches: Iterator[torch.Tensor], out: Path, n: int, curves: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(n - 1)))
    i = 0
    for b in batches:
        items = b.numpy() if curves else to_uint8(b)
        for item in items:
            img = curve_image(item) if curves else _pil(item)
            path = out / f"{i:0{digits}d}.png"
            tmp = _tmp(path)
            img.save(tmp, format="PNG")
            os.replace(tmp, path)
            i += 1


def write_gif(frames: Iterator[torch.Tensor], out: Path, curves: bool, fps: float = 25.0) -> None:
    images = []
    for b in frames:
        if curves:
            images.extend(curve_image(y) for y in b.numpy())
        else:
            images.extend(_pil(a) for a in to_uint8(b))
    tmp = _tmp(out)
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    os.replace(tmp, out)


# ------------------------------------------------------------------------------------------- CLI
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


def check_writable(kind: str, path: Path, out: str) -> None:
    """Create the output's folder and make sure it can be written, before any work is done."""
    folder = path if kind == "dir" else path.parent
    try:
        if path.exists() and kind != "dir" and path.is_dir():
            raise UserError(f"-o {out} is an existing folder, not a {kind} file: choose another name.")
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".gantrain-generate-probe{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write -o {out}: {e.strerror or e} ({folder}); choose a writable path.") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="gantrain-generate",
        description="Generate samples from a gantrain checkpoint (the EMA generator when there is one).",
        epilog="OUT by extension: .png a grid, .npz raw samples (images uint8 N,H,W,C; curves float32 N,L for "
               "sine data), .gif or .mp4 a latent interpolation, a directory (ends in /, exists, or no extension) one "
               "PNG per sample.")
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint, e.g. outputs/<date>/<time>/checkpoints/last.pt")
    p.add_argument("-n", type=int, default=None, metavar="N",
                   help="number of samples (default 64); for .gif the number of keyframes (default 4)")
    p.add_argument("-o", "--out", default="samples.png", metavar="OUT", help="output (default samples.png)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed: the same seed gives the same output")
    p.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="truncation psi (StyleGAN only): 1 = none, smaller = closer to the average")
    p.add_argument("--interpolate", type=int, default=None, metavar="K",
                   help="frames between keyframes of a .gif or .mp4 (default 16)")
    p.add_argument("--style-mix", nargs=2, default=None, metavar=("ROWS", "COLS"),
                   help="StyleGAN, -o X.png: the style-mixing figure; ROWS, COLS: comma-separated seeds, e.g. 1,2,3 7,8")
    p.add_argument("--class", dest="klass", default=None, metavar="K|NAME|all",
                   help="class-conditional checkpoints: samples of class K (index or name), or all: one row per "
                        f"class of -n samples (default {generate_classes.ALL_PER_CLASS})")
    p.add_argument("--device", default="auto", metavar="D", help="auto (cuda if present), cpu, cuda or cuda:K")
    return p.parse_args(argv)


def generate(args: argparse.Namespace) -> str:
    """Does the work; returns the line to print. Problems are UserErrors."""
    from gantrain import checkpoint
    from gantrain.runtime import select_device

    kind, out = output_kind(args.out)
    video = kind in ("gif", "mp4")
    if kind == "mp4":
        media.need_ffmpeg(args.out)
    if args.style_mix is not None and (kind != "grid" or args.n is not None or args.seed is not None):
        raise UserError("--style-mix writes a figure of the seeds in ROWS and COLS: use -o something.png, without -n "
                        "or --seed.")
    n = args.n if args.n is not None else (4 if video else 64)
    if n < 1:
        raise UserError(f"-n {n} is out of range: ask for at least one sample.")
    if video and n < 2:
        raise UserError(f"-n must be at least 2 for a .{kind}: it interpolates between N keyframes.")
    if args.interpolate is not None and not video:
        raise UserError("--interpolate applies to a .gif or .mp4 output only: use -o something.gif.")
    between = 16 if args.interpolate is None else args.interpolate
    if between < 0:
        raise UserError(f"--interpolate {between} is out of range: use 0 or more frames between keyframes.")
    if args.truncation is not None and not math.isfinite(args.truncation):
        raise UserError(f"--truncation {args.truncation} is not a number: use e.g. --truncation 0.7.")
    device = select_device(args.device)

    ckpt = checkpoint.load(args.ckpt, map_location="cpu")   # a CUDA checkpoint loads on a CPU-only machine
    G, used_ema = load_generator(ckpt, device)
    names = ckpt.get("class_names")   # a class-conditional checkpoint (gantrain/generate_classes.py)
    wanted = generate_classes.resolve(args.klass, names, ckpt.get("model", type(G).__name__))
    cols = labels = None
    if wanted is not None and (args.style_mix is not None or (video and len(wanted) > 1)):
        raise UserError(f"--class {args.klass} does not apply to {'--style-mix' if args.style_mix else 'a video'}: "
                        "use --class K with a video, or -o something.png.")
    if names and args.style_mix is None:
        if video:
            G = generate_classes.Conditioned(G, torch.tensor(wanted or [0]))
        else:
            if wanted is not None and len(wanted) > 1 and args.n is None:
                n = generate_classes.ALL_PER_CLASS
            G, n, cols = generate_classes.plan(G, wanted, len(names), n)
            labels = generate_classes.labels_of(G, n).numpy()
    if args.truncation is not None and not getattr(G, "supports_truncation", False):
        raise UserError(f"--truncation applies only to models with a truncation trick (StyleGAN); this "
                        f"checkpoint's model ({ckpt.get('model', type(G).__name__)}) has none: leave it out.")
    check_writable(kind, out, args.out)
    output_limits.remove_stale_temps(kind, out)  # left by a gantrain-generate killed while writing
    output_limits.check(kind, out, n, n * (between + 1), tuple(ckpt["data_shape"]))  # memory and disk, before work
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    curves = len(ckpt["data_shape"]) == 1
    progress = sys.stderr.isatty() or n > 4 * BATCH   # a bar for large N

    if args.style_mix is not None:
        rows, cols = (media.parse_seeds(t, w) for t, w in zip(args.style_mix, ("ROWS", "COLS")))
        media.write_style_mix(media.style_mix(G, rows, cols, args.truncation, device), out, len(cols))
        return f"wrote the style-mixing figure of row seeds {rows} and column seeds {cols} to {out}"
    if video:
        write = write_gif if kind == "gif" else media.write_mp4
        write(interpolation(G, n, between, seed, args.truncation, device, progress), out, curves)
        what = f"a {n * (between + 1)}-frame interpolation through {n} keyframes"
    else:
        batches = samples(G, n, seed, args.truncation, device, progress, cols)
        extra = {"grid": {"nrow": cols}, "npz": {"labels": labels}, "dir": {}}[kind]
        {"grid": write_grid, "npz": write_npz, "dir": write_dir}[kind](batches, out, n, curves, **extra)
        what = f"{n} samples"
        if wanted is not None:
            what += f" of class {names[wanted[0]]}" if len(wanted) == 1 else f", one row of {cols} per class"
    which = "EMA generator" if used_ema else "generator"
    return f"wrote {what} to {out} ({which} at step {ckpt.get('step')}, seed {seed})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        print(generate(args))
    except UserError as e:
        print(f"gantrain-generate: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:   # the output became unwritable while writing (disk full, removed folder, ...)
        print(f"gantrain-generate: error: cannot write -o {args.out}: {e.strerror or e}.", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        interrupts.stopped("gantrain-generate")
    finally:  # no temp file of this process is left behind, whatever stopped it
        output_limits.remove_own_temps(*output_kind(args.out, quiet=True))


if __name__ == "__main__":
    main()
