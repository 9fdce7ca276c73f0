"""gantrain-generate's style-mixing figure and .mp4 walks.

``--style-mix ROWS COLS``: comma-separated seeds (one latent ``torch.randn(1, z_dim)`` per seed, drawn from
``torch.Generator().manual_seed(seed)``). The figure of the StyleGAN paper: the top row shows the column seeds'
images, the left column the row seeds' images, and cell (i, j) takes the coarse styles (the first half,
``num_ws // 2``) from row seed i and the fine styles from column seed j, as the TensorBoard grid does.

``.mp4``: the latent walk of the ``.gif`` output, H.264 through the ffmpeg that imageio-ffmpeg ships, frames
scaled up (nearest neighbour, by a whole factor) until the longer side has at least 256 pixels.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gantrain import files
from gantrain.errors import UserError
from gantrain.writers import curve_image, to_uint8_hwc

MP4_MIN_SIDE = 256


def parse_seeds(text: str, what: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise UserError(f"--style-mix {what} must be comma-separated seeds, e.g. --style-mix 1,2,3 10,11,12; "
                        f"got {text!r}.")
    return seeds


def style_mix(G: nn.Module, rows: list[int], cols: list[int], psi: float | None,
              device: torch.device) -> torch.Tensor:
    """The figure as one batch of (len(rows) + 1) * (len(cols) + 1) images (a black corner), row-major."""
    from gantrain.models.stylegan import style_mixing_images

    if not (hasattr(G, "mapping") and hasattr(G, "num_ws")):
        raise UserError("--style-mix needs a generator with a mapping network (StyleGAN); this checkpoint's "
                        "model has no styles to mix.")
    z = lambda seeds: torch.cat([torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(s % 2**64))
                                 for s in seeds]).to(device)
    psi = 1.0 if psi is None else psi
    zr, zc = z(rows), z(cols)
    with torch.no_grad():
        own_r = style_mixing_images(G, zr, zr[:1], G.num_ws, psi)     # crossover num_ws: row images themselves
        own_c = style_mixing_images(G, zc[:1], zc, 0, psi)            # crossover 0: column images themselves
        mixed = style_mixing_images(G, zr, zc, G.num_ws // 2, psi).float().cpu()
    own_r, own_c = own_r.float().cpu(), own_c.float().cpu()
    corner = torch.full_like(own_c[:1], -1.0)
    body = mixed.reshape(len(rows), len(cols), *mixed.shape[1:])
    tiles = [torch.cat([corner, own_c])] + [torch.cat([own_r[i:i + 1], body[i]]) for i in range(len(rows))]
    return torch.cat(tiles)


def write_style_mix(images: torch.Tensor, out: Path, cols: int) -> None:
    from torchvision.utils import save_image

    with files.replacing(out) as tmp:
        save_image(images, tmp, format="PNG", nrow=cols + 1, normalize=True, value_range=(-1, 1))


def need_ffmpeg(out: str) -> None:
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        raise UserError(f"-o {out}: an .mp4 needs imageio-ffmpeg, which is not installed: pip install "
                        "'gantrain[export]' (or pip install imageio-ffmpeg), or write a .gif instead.")


def write_mp4(frames: Iterator[torch.Tensor], out: Path, curves: bool, fps: float = 25.0) -> None:
    import imageio_ffmpeg

    writer = None
    with files.replacing(out) as tmp:
        try:
            for b in frames:
                arrays = [np.asarray(curve_image(y)) for y in b.numpy()] if curves else list(to_uint8_hwc(b))
                for a in arrays:
                    a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
                    k = -(-MP4_MIN_SIDE // max(a.shape[:2]))              # ceil: the smallest factor reaching 256
                    a = np.ascontiguousarray(a.repeat(k, axis=0).repeat(k, axis=1))
                    if writer is None:
                        writer = imageio_ffmpeg.write_frames(str(tmp), (a.shape[1], a.shape[0]), fps=fps,
                                                             macro_block_size=2, output_params=["-f", "mp4"],
                                                             ffmpeg_log_level="error")
                        writer.send(None)
                    writer.send(a)
        finally:
            if writer is not None:
                writer.close()
