"""Ctrl-C outside the training loop (while importing torch, decoding a folder, in gantrain-generate): exit 130
with one line instead of a ``KeyboardInterrupt`` traceback (the loop itself saves and stops: training/stopping.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

MESSAGE = "interrupted (Ctrl-C); checkpoints written so far are kept"


def stopped(prog: str) -> None:
    """Say so and exit 130 (128 + SIGINT), as shells do for a program stopped by Ctrl-C."""
    print(f"\n{prog}: {MESSAGE}.", file=sys.stderr, flush=True)
    sys.exit(130)


def install(prog: str) -> None:
    """A KeyboardInterrupt that nothing catches (e.g. during the imports before ``main`` runs) ends the process
    with the one line and exit 130; every other exception keeps its traceback."""
    previous = sys.excepthook
    if getattr(previous, "gantrain_prog", None):
        return

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            try:
                print(f"\n{prog}: {MESSAGE}.", file=sys.stderr, flush=True)
            finally:
                os._exit(130)
        previous(kind, value, tb)

    hook.gantrain_prog = prog
    sys.excepthook = hook


def console_script() -> str | None:
    """The name of the gantrain console script this process runs (gantrain, gantrain-generate, ...), else None."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is None:
        return None
    if argv0.name.startswith("gantrain"):
        return argv0.name
    if argv0.name == "__main__.py" and argv0.parent.name == "gantrain":  # python -m gantrain
        return "gantrain"
    return None
