"""``gantrain-generate``: samples from a checkpoint alone (the config travels inside it).

    gantrain-generate CKPT [-n N] [-o OUT] [--seed S] [--truncation PSI] [--interpolate K] [--style-mix ROWS COLS] [--device D]

OUT by extension: ``.png`` a grid (for sine data a plot of the curves), ``.npz`` raw samples
(``images`` uint8 N,H,W,C or, for sine data, ``curves`` float32 N,L), a directory (a path ending in
``/``, an existing folder or a path without extension) one PNG per sample, ``.gif`` a smooth latent
interpolation through N keyframes (spherical in z; linear in w for StyleGAN) with K frames between
keyframes, ``.mp4`` the same as a video (needs imageio-ffmpeg). ``--style-mix ROWS COLS`` (StyleGAN, ``.png``):
the style-mixing figure for the given seeds (gantrain.media). The EMA generator is used when the checkpoint has one.

The config in a checkpoint is data, not code: the generator is built by gantrain.models.loading (only the
project's own model classes). This module is the entry point: the arguments, their checks, and which sampler
(gantrain.sampling) feeds which writer (gantrain.writers, gantrain.media).
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from gantrain import generate_classes, media, output_limits, sampling
from gantrain.cli_util import run_cli
from gantrain.errors import UserError
from gantrain.models.loading import load_generator
from gantrain.writers import check_output, output_kind, write_dir, write_gif, write_grid, write_npz


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


@dataclass
class Plan:
    """What to write: the output's kind and path, the samples (or keyframes) and the frames between them."""

    kind: str
    out: Path
    n: int
    between: int

    @property
    def video(self) -> bool:
        return self.kind in ("gif", "mp4")


def plan(args: argparse.Namespace) -> Plan:
    """The checks of the arguments that need no checkpoint (each refusal one sentence)."""
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
    return Plan(kind, out, n, between)


def condition(G: torch.nn.Module, args: argparse.Namespace, ckpt: dict, p: Plan):
    """A class-conditional checkpoint's G with its classes fixed (gantrain/generate_classes.py): (G, the
    classes asked for or None, grid columns or None, the samples' labels or None); ``p.n`` may grow."""
    names = ckpt.get("class_names")
    wanted = generate_classes.resolve(args.klass, names, ckpt.get("model", type(G).__name__))
    cols = labels = None
    if wanted is not None and (args.style_mix is not None or (p.video and len(wanted) > 1)):
        raise UserError(f"--class {args.klass} does not apply to {'--style-mix' if args.style_mix else 'a video'}: "
                        "use --class K with a video, or -o something.png.")
    if names and args.style_mix is None:
        if p.video:
            G = generate_classes.Conditioned(G, torch.tensor(wanted or [0]))
        else:
            if wanted is not None and len(wanted) > 1 and args.n is None:
                p.n = generate_classes.ALL_PER_CLASS
            G, p.n, cols = generate_classes.plan(G, wanted, len(names), p.n)
            labels = generate_classes.labels_of(G, p.n).numpy()
    return G, wanted, cols, labels


def generate(args: argparse.Namespace) -> str:
    """Does the work; returns the line to print. Problems are UserErrors."""
    from gantrain import checkpoint
    from gantrain.runtime import select_device

    p = plan(args)
    device = select_device(args.device)
    ckpt = checkpoint.load(args.ckpt, map_location="cpu")   # a CUDA checkpoint loads on a CPU-only machine
    G, used_ema = load_generator(ckpt, device)
    G, wanted, cols, labels = condition(G, args, ckpt, p)
    if args.truncation is not None and not getattr(G, "supports_truncation", False):
        raise UserError(f"--truncation applies only to models with a truncation trick (StyleGAN); this "
                        f"checkpoint's model ({ckpt.get('model', type(G).__name__)}) has none: leave it out.")
    shape = tuple(ckpt["data_shape"])
    check_output(p.kind, p.out, args.out)
    output_limits.remove_stale_temps(p.kind, p.out)  # left by a gantrain-generate killed while writing
    output_limits.check(p.kind, p.out, p.n, p.n * (p.between + 1), shape)  # memory and disk, before any work
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    curves = len(shape) == 1
    progress = sys.stderr.isatty() or p.n > 4 * sampling.BATCH   # a bar for large N

    if args.style_mix is not None:
        rows, cols = (media.parse_seeds(t, w) for t, w in zip(args.style_mix, ("ROWS", "COLS")))
        media.write_style_mix(media.style_mix(G, rows, cols, args.truncation, device), p.out, len(cols))
        return f"wrote the style-mixing figure of row seeds {rows} and column seeds {cols} to {p.out}"
    if p.video:
        write = write_gif if p.kind == "gif" else media.write_mp4
        write(sampling.interpolation(G, p.n, p.between, seed, args.truncation, device, progress), p.out, curves)
        what = f"a {p.n * (p.between + 1)}-frame interpolation through {p.n} keyframes"
    else:
        batches = sampling.samples(G, p.n, seed, args.truncation, device, progress, cols)
        extra = {"grid": {"nrow": cols}, "npz": {"labels": labels}, "dir": {}}[p.kind]
        {"grid": write_grid, "npz": write_npz, "dir": write_dir}[p.kind](batches, p.out, p.n, curves, **extra)
        what = f"{p.n} samples"
        if wanted is not None:
            names = ckpt["class_names"]
            what += f" of class {names[wanted[0]]}" if len(wanted) == 1 else f", one row of {cols} per class"
    which = "EMA generator" if used_ema else "generator"
    return f"wrote {what} to {p.out} ({which} at step {ckpt.get('step')}, seed {seed})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_cli("gantrain-generate", lambda: print(generate(args)), out=args.out,  # no temp file of ours is left
            cleanup=lambda: output_limits.remove_own_temps(*output_kind(args.out, quiet=True)))


if __name__ == "__main__":
    main()
