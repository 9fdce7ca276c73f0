"""Helpers shared by the tests: compose a config like the CLI does, and run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gantrain.cli import compose

ROOT = Path(__file__).resolve().parent.parent
FAST = ["log.progress_bar=false", "trainer.device=cpu", "metrics=off"]


def make_cfg(*overrides: str):
    """The composed job config for ``overrides``, as ``gantrain`` would build it."""
    return compose(list(overrides))


def tiny(model: str) -> list[str]:
    """Overrides that make a model small enough for CPU tests."""
    return {
        "gan": ["model=gan", "model.generator.hidden=[32,32]", "model.discriminator.hidden=[32,32]"],
        "dcgan": ["model=dcgan", "model.generator.base_channels=8", "model.discriminator.base_channels=8"],
        "stylegan": ["model=stylegan", "model.z_dim=32", "model.generator.w_dim=32", "model.mapping_layers=2",
                     "model.channel_base=512", "model.max_channels=32"],
    }[model]


def gantrain(*args: str, cmd: str = "gantrain", timeout: float = 300, env: dict | None = None,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a console script of the venv (``gantrain``, ``gantrain-generate``) in a subprocess."""
    exe = Path(sys.executable).parent / cmd
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd)
