"""Samples of a generator for gantrain-generate: latents from a seed (the same on every device and for any
batch size), batches of samples, and latent interpolations (spherical in z; linear in w for StyleGAN).

Everything comes back in batches of at most ``BATCH`` as float32 on the CPU, so memory stays bounded for any N.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from gantrain import generate_classes
from gantrain.models import sample as _forward  # fixed noise: a seed fixes the output

BATCH = 256                         # latents per forward pass: memory stays bounded for any N


def seeded_latents(n: int, z_dim: int, seed: int) -> Iterator[torch.Tensor]:
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
        for z in generate_classes.latents(lambda k: seeded_latents(k, G.z_dim, seed), n, cols):
            out = _forward(G, z.to(device), psi).float().cpu()
            bar.update(len(z))
            yield out


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

    z = next(seeded_latents(keyframes, G.z_dim, seed)) if keyframes <= BATCH else torch.cat(
        list(seeded_latents(keyframes, G.z_dim, seed)))
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
