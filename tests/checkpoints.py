"""Tiny trained checkpoints (two steps, gantrain's own format) for the tests of what uses a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gantrain.training.loop import train
from tests.utils import FAST, make_cfg, tiny

RUNS = {   # gan on sine curves (no EMA), dcgan 16x16 RGB (EMA), stylegan 32x32 greyscale (EMA by default)
    "gan": [*tiny("gan"), "data=sine", "data.size=256", "model.ema_kimg=null"],
    "dcgan": [*tiny("dcgan"), "data=folder", "data.resolution=16", "model.ema_kimg=1"],
    "stylegan": ["model=stylegan", "model.z_dim=32", "model.generator.w_dim=32", "model.mapping_layers=2",
                 "model.channel_base=256", "model.max_channels=32", "data=folder", "data.resolution=32",
                 "data.channels=1"],
}


def tiny_checkpoints(root: Path, models=tuple(RUNS), steps: int = 2) -> dict[str, Path]:
    """``{model: root/model/checkpoints/last.pt}``, trained ``steps`` steps on data written under ``root``."""
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    common = [*FAST, "data.batch_size=8", "log.num_samples=8", f"trainer.max_steps={steps}"]
    out = {}
    for name in models:
        data = [] if name == "gan" else [f"data.root={folder}"]
        train(make_cfg(*common, *RUNS[name], *data), root / name)
        out[name] = root / name / "checkpoints" / "last.pt"
    return out
