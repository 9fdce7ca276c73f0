"""``gantrain-project``: find the latent w of an image (StyleGAN only), as Karras et al. 2020's projector.

    gantrain-project CKPT IMAGE -o DIR [--w-plus] [--steps N] [--feature-weight F] [--resize] [--seed S]

From the average w (of 10,000 mapped latents), Adam optimises one w (``--w-plus``: one per style layer) and
the per-layer noise maps for N steps (default 1000): the learning rate ramps up over the first 5 % and down with
a cosine over the last 25 %, w gets Gaussian noise (5 % of the spread of w, fading out over the first 75 %), and
the noise maps are kept unit-variance and decorrelated by the paper's multi-scale autocorrelation penalty (1e5).

The distance is pixel MSE plus ``--feature-weight`` (default 1) times an LPIPS-like feature distance computed
with the checkpoint's own discriminator: its activations after fromRGB and after each residual block,
unit-normalised over the channels at every pixel, squared differences averaged over the pixels, summed over
the layers. LPIPS needs VGG weights that cannot be downloaded everywhere; the discriminator is in every
checkpoint, was trained on these very images and needs no download. The pixel term alone fixes colours;
the features weigh edges and texture that MSE blurs.

DIR gets ``target.png`` (the image as projected), ``proj.png`` (the projection), ``w.npz`` (``w``: float32
(1, num_ws, w_dim), ``w_plus``, ``psnr`` and the optimised noise maps ``noise/<layer>``: G.synthesis(w,
noise_mode="const") with those maps in the layers' ``noise_const`` gives proj.png) and ``progress.gif``
(target | projection while it converges). The image must have the generator's size and channels; ``--resize``
centre-crops it to a square and resizes it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gantrain.cli_util import run_cli
from gantrain.errors import UserError
from gantrain.torch_utils import from_uint8

W_AVG_SAMPLES = 10_000
LR, LR_RAMPUP, LR_RAMPDOWN = 0.1, 0.05, 0.25
W_NOISE, W_NOISE_RAMP = 0.05, 0.75
NOISE_REG = 1e5
GIF_FRAMES = 50


# -------------------------------------------------------------------------------------- the target
def load_target(path: str, channels: int, resolution: int, resize: bool) -> torch.Tensor:
    """IMAGE as (1, C, H, W) in [-1, 1]; a wrong size (without --resize) or wrong channels is a UserError."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(Path(path).expanduser())
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"cannot read {path} as an image ({e}): give a PNG or JPEG file.") from None
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    has = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "RGB": 3, "YCbCr": 3, "CMYK": 3}.get(img.mode)
    if has != channels:
        what = {1: "greyscale (1 channel)", 3: "RGB (3 channels)"}
        raise UserError(f"{path} is a {what.get(has, f'{img.mode} image with {len(img.getbands())} channels')} "
                        f"image but the generator makes {what[channels]} images: convert it first (e.g. PIL's "
                        f"Image.convert('{'L' if channels == 1 else 'RGB'}')).")
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (resolution, resolution):
        if not resize:
            raise UserError(f"{path} is {img.width}x{img.height} but the generator makes {resolution}x{resolution} "
                            f"images: give a {resolution}x{resolution} image, or pass --resize to centre-crop and "
                            "resize it.")
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.LANCZOS)
    x = torch.from_numpy(np.array(img).reshape(resolution, resolution, channels))
    return from_uint8(x.permute(2, 0, 1)[None]).contiguous()


# ---------------------------------------------------------------------------------- the distance
def d_features(D: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The StyleGAN discriminator's activations after fromRGB and each residual block, channel-normalised."""
    feats = [D.fromrgb(x)]
    for block in D.blocks:
        feats.append(block(feats[-1]))
    return [f / (f.square().sum(dim=1, keepdim=True) + 1e-10).sqrt() for f in feats]


def feature_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x - y).square().sum(dim=1).mean() for x, y in zip(a, b))


def noise_regularisation(maps: list[torch.Tensor]) -> torch.Tensor:
    """The projector's penalty: squared autocorrelation at one-pixel shifts, at every scale down to 8x8."""
    reg = 0.0
    for noise in maps:
        while True:
            reg = reg + (noise * torch.roll(noise, 1, dims=3)).mean() ** 2 \
                + (noise * torch.roll(noise, 1, dims=2)).mean() ** 2
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, 2)
    return reg


# ------------------------------------------------------------------------------------- the search
def project(G: nn.Module, D: nn.Module | None, target: torch.Tensor, steps: int, w_plus: bool,
            feature_weight: float, seed: int, progress: bool = False):
    """Returns (w (1, num_ws, w_dim), the optimised noise maps {name: tensor}, frames [(1, C, H, 2W)])."""
    from tqdm import tqdm

    device = target.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        w_samples = G.mapping(torch.randn(W_AVG_SAMPLES, G.z_dim, generator=gen).to(device))[:, :1]
        w_avg = w_samples.mean(dim=0, keepdim=True)                              # (1, 1, w_dim)
        w_std = float(((w_samples - w_avg).square().sum() / W_AVG_SAMPLES).sqrt())
        target_feats = d_features(D, target) if D is not None and feature_weight > 0 else None
    w_opt = (w_avg.repeat(1, G.num_ws, 1) if w_plus else w_avg).clone().requires_grad_(True)
    maps = {name: buf for name, buf in G.named_buffers() if name.endswith("noise_const")}
    for buf in maps.values():
        buf.copy_(torch.randn(buf.shape, generator=gen).to(device)).requires_grad_(True)
    opt = torch.optim.Adam([w_opt, *maps.values()], betas=(0.9, 0.999), lr=LR)
    frames, every = [], max(1, steps // GIF_FRAMES)
    for step in tqdm(range(steps), disable=not progress, unit="step", desc="projecting"):
        t = step / steps
        ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
        lr = LR * (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, t / LR_RAMPUP)
        for group in opt.param_groups:
            group["lr"] = lr
        w_noise = torch.randn(w_opt.shape, generator=gen).to(device) * (
            w_std * W_NOISE * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2)
        ws = (w_opt + w_noise).expand(1, G.num_ws, -1)
        synth = G.synthesis(ws, noise_mode="const")
        loss = F.mse_loss(synth, target) + NOISE_REG * noise_regularisation(list(maps.values()))
        if target_feats is not None:
            loss = loss + feature_weight * feature_distance(d_features(D, synth), target_feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for buf in maps.values():                              # keep each noise map N(0, 1)
                buf.sub_(buf.mean()).mul_(buf.square().mean().rsqrt())
            if step % every == 0 or step == steps - 1:
                frames.append(torch.cat([target, synth.detach()], dim=3).cpu())
    w = w_opt.detach().expand(1, G.num_ws, -1).clone()
    return w, {k: v.detach().clone() for k, v in maps.items()}, frames


# ------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gantrain-project", description=__doc__.split("\n\n")[0].strip(),
                                epilog="Writes DIR/target.png, DIR/proj.png, DIR/w.npz and DIR/progress.gif.")
    p.add_argument("ckpt", metavar="CKPT", help="a StyleGAN checkpoint, e.g. outputs/<date>/<time>/checkpoints/last.pt")
    p.add_argument("image", metavar="IMAGE", help="the image to project (the generator's size and channels)")
    p.add_argument("-o", "--out", default="projection", metavar="DIR", help="output folder (default projection/)")
    p.add_argument("--w-plus", action="store_true", help="optimise one w per style layer (w+) instead of one w")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (default 1000, as the paper)")
    p.add_argument("--feature-weight", type=float, default=1.0, metavar="F",
                   help="weight of the discriminator-feature distance beside pixel MSE (default 1; 0 = MSE only)")
    p.add_argument("--resize", action="store_true", help="centre-crop and resize IMAGE to the generator's size")
    p.add_argument("--seed", type=int, default=0, help="seed of the w samples and the noise (default 0)")
    p.add_argument("--device", default="auto", metavar="D", help="auto (cuda if present), cpu, cuda or cuda:K")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from gantrain.export import load_checkpoint
    from gantrain.models.loading import build, load_generator
    from gantrain.runtime import select_device
    from gantrain.writers import check_output, to_pil, to_uint8_hwc, write_gif

    if args.steps < 1:
        raise UserError(f"--steps {args.steps} is out of range: use at least 1 step (the paper uses 1000).")
    if not (math.isfinite(args.feature_weight) and args.feature_weight >= 0):
        raise UserError(f"--feature-weight {args.feature_weight} is out of range: use 0 or more (default 1).")
    device = select_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    G, used_ema = load_generator(ckpt, device)
    if not (hasattr(G, "mapping") and hasattr(G, "synthesis") and hasattr(G, "num_ws")):
        raise UserError(f"gantrain-project needs a generator with a mapping network (StyleGAN); this checkpoint's "
                        f"model ({ckpt['config']['model'].get('name', type(G).__name__)}) has no w space to "
                        "project into.")
    target = load_target(args.image, G.img_channels, G.resolution, args.resize).to(device)
    D = None
    if args.feature_weight > 0:
        try:
            D = build(ckpt["config"]["model"]["discriminator"], shape=tuple(ckpt["data_shape"]))
            D.load_state_dict(ckpt["D"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"the checkpoint's discriminator cannot be rebuilt for the feature distance "
                            f"({str(e).splitlines()[0][:80]}): pass --feature-weight 0 to use pixel MSE alone.") from None
        D = D.to(device).eval().requires_grad_(False)
    out = Path(args.out).expanduser()
    check_output("dir", out, args.out)

    w, maps, frames = project(G, D, target, args.steps, args.w_plus, args.feature_weight, args.seed,
                              progress=sys.stderr.isatty())
    with torch.no_grad():
        proj = G.synthesis(w, noise_mode="const")
    psnr = float(peak_signal_noise_ratio(proj.clamp(-1, 1), target, data_range=2.0))
    for name, x in (("target.png", target), ("proj.png", proj)):
        to_pil(to_uint8_hwc(x)[0]).save(out / name)
    np.savez(out / "w.npz", w=w.cpu().numpy(), w_plus=args.w_plus, psnr=psnr,
             **{f"noise/{k}": v.cpu().numpy() for k, v in maps.items()})
    write_gif(iter(frames), out / "progress.gif", curves=False, fps=10)
    which = "EMA generator" if used_ema else "generator"
    return (f"projected {args.image} into {'w+' if args.w_plus else 'w'} in {args.steps} steps: PSNR {psnr:.2f} dB; "
            f"wrote {out}/proj.png, target.png, w.npz, progress.gif ({which} at step {ckpt.get('step')})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_cli("gantrain-project", lambda: print(run(args)), out=args.out)


if __name__ == "__main__":
    main()
