"""TensorBoard output of a run: scalars, sample grids, curve plots and the HParams entry.

One writer, in the run directory itself, so that ``tensorboard --logdir multirun/<date>/<time>``
shows each sweep job as one run. Only rank 0 writes; other ranks get a writer that does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

log = logging.getLogger(__name__)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> values TensorBoard's HParams accepts (numbers, strings, booleans)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        elif v is None:
            out[key] = "null"
        else:
            out[key] = str(v)
    return out


def curves_figure(fake: torch.Tensor, real: torch.Tensor, x: torch.Tensor | None = None, n: int = 16):
    """Generated curves (red) over real ones (grey), as a matplotlib figure (not registered with pyplot: no
    global backend switch, and nothing left open when summaries are off)."""
    from matplotlib.figure import Figure

    fake, real = fake[:n].float().cpu(), real[:n].float().cpu()
    x = torch.linspace(-1, 1, fake.shape[1]) if x is None else x.cpu()
    fig = Figure(figsize=(6, 4), dpi=80)
    ax = fig.add_subplot()
    for y in real:
        ax.plot(x, y, color="0.7", lw=1)
    for y in fake:
        ax.plot(x, y, color="tab:red", lw=1, alpha=0.8)
    ax.set_title("generated (red) over real (grey)")
    ax.set_ylim(-1.5, 1.5)
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A (C, H, W) grid in [0, 1] from tanh-range images."""
    nrow = nrow or max(1, int(images.shape[0] ** 0.5))
    return make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))


class Summaries:
    """Writes never stop the run: when the event file cannot be written (disk full, ...), one warning says
    so, summaries are off for the rest of the run, and training and checkpoints go on."""

    def __init__(self, log_dir: Path | None, purge_step: int | None = None):
        self.writer = None
        self.log_dir = log_dir
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=30)

    @contextmanager
    def _guard(self):
        try:
            yield
        except OSError as e:
            writer, self.writer = self.writer, None
            log.warning("the TensorBoard event file in %s could not be written (%s): TensorBoard summaries are off "
                        "for the rest of this run, training and checkpoints go on and what was written is kept; "
                        "free some disk space and resume to log again.", self.log_dir, e.strerror or e)
            with suppress(Exception):  # the same failure again; the writer is dropped either way
                writer.close()

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer:
            with self._guard():
                for tag, v in values.items():
                    self.writer.add_scalar(tag, v, step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int | None = None) -> None:
        if self.writer:
            with self._guard():
                self.writer.add_image(tag, image_grid(images, nrow), step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self.writer:
            with self._guard():
                self.writer.add_figure(tag, fig, step, close=True)

    def hparams(self, hparams: Mapping[str, Any], metric_tags: list[str]) -> None:
        """Write the HParams entry into this run's own event file (not a sub-folder, pytorch #32651).

        The dashboard shows, for each metric tag, the latest scalar logged under that tag in this run.
        """
        if self.writer:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            exp, ssi, sei = hparams_summary(dict(hparams), {tag: 0.0 for tag in metric_tags})
            with self._guard():
                fw = self.writer._get_file_writer()
                for s in (exp, ssi, sei):
                    fw.add_summary(s)

    def flush(self) -> None:
        if self.writer:
            with self._guard():
                self.writer.flush()

    def close(self) -> None:
        if self.writer:
            with self._guard():
                self.writer.close()
            self.writer = None
