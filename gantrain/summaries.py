"""TensorBoard output of a run: scalars, sample grids, curve plots and the HParams entry.

One writer, in the run directory itself, so that ``tensorboard --logdir multirun/<date>/<time>``
shows each sweep job as one run. Only rank 0 writes; other ranks get a writer that does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
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


# the settings people compare across runs, shown in the HParams tab after the ones a sweep varied
COMPARED = ("model.name", "data.name", "loss.name", "optim.generator.lr", "optim.discriminator.lr", "data.batch_size",
            "trainer.accumulate", "trainer.devices", "trainer.precision", "augment.name", "seed")


def task_overrides(out_dir: str | Path) -> list[str]:
    """The job's command-line overrides (Hydra's ``overrides.task``; a sweep job's own values), or those Hydra
    recorded in ``out_dir/.hydra/overrides.yaml`` where this process is not the Hydra job (a spawned rank)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except ValueError:  # HydraConfig was not set
        path = Path(out_dir) / ".hydra" / "overrides.yaml"
        if path.is_file():
            from omegaconf import OmegaConf

            return [str(o) for o in OmegaConf.load(path)]
        return []


def hparams_view(flat: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The HParams columns: the keys the overrides set (a group such as ``model=dcgan`` shows ``model.name``
    or the option's name), then :data:`COMPARED`; the rest of the config stays in ``.hydra/``."""
    out: dict[str, Any] = {}
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if not key or key.split(".")[0] in ("hydra", "resume"):  # not settings of the model or its training
            continue
        out[key] = flat.get(key, flat.get(f"{key}.name", value if sep else "null"))
    for key in COMPARED:
        if key in flat:
            out.setdefault(key, flat[key])
    return out


def curves_figure(fake, real: torch.Tensor | None = None, x: torch.Tensor | None = None, n: int = 16, *,
                  title: str = "generated (red) over real (grey)", dpi: int = 80):
    """Generated curves (red) over real ones (grey), as a matplotlib figure (not registered with pyplot: no
    global backend switch, and nothing left open when summaries are off). The one curve plot: TensorBoard's
    and the quality tool's (the first ``n`` of a tensor ``fake``), gantrain-generate's .png (``fake`` an
    iterator of batches, ``n`` curves in all, no ``real``; thinner, fainter lines beyond 64 curves)."""
    from matplotlib.figure import Figure

    grid = None if x is None else x.cpu()
    if isinstance(fake, torch.Tensor):
        fake, grid = [fake[:n]], torch.linspace(-1, 1, fake.shape[1]) if grid is None else grid
    fig = Figure(figsize=(6, 4), dpi=dpi)
    ax = fig.add_subplot()
    for y in ([] if real is None else real[:n].float().cpu()):
        ax.plot(grid, y, color="0.7", lw=1)
    lw, alpha = (1.0, 0.8) if n <= 64 else (0.5, max(0.05, min(0.8, 40 / n)))
    for b in fake:
        y = b.float().cpu().numpy()
        ax.plot(np.linspace(-1, 1, y.shape[1]) if grid is None else grid, y.T, color="tab:red", lw=lw, alpha=alpha)
    ax.set_title(title)
    ax.set_ylim(-1.5, 1.5)
    fig.tight_layout()
    return fig


def image_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """A (C, H, W) grid in [0, 1] from tanh-range images."""
    nrow = nrow or max(1, int(images.shape[0] ** 0.5))
    return make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))


def _quiet_writer_threads() -> None:
    """TensorBoard's writer thread re-raises a failed write (disk full, run directory deleted) and Python prints
    it as "Exception in thread ..."; the same error reaches the training thread at its next write, where
    :class:`Summaries` gives its one warning. Such a thread's exception is therefore not printed (others are)."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "gantrain_quiet", False):
        return

    def hook(args):
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook.gantrain_quiet = True
    threading.excepthook = hook


def _after_earlier_event_files(log_dir: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after the folder's existing ones.

    TensorBoard reads a folder's event files in name order, and the name starts with the second it was
    created in, then the pid and a per-process counter (``...1733211111.host.42.10`` sorts before
    ``....9``). A resume that starts in the same second as the run it continues would be read first, its
    steps then look older than the earlier run's, and TensorBoard purges them as out of order."""
    import time

    stamps = []
    for f in log_dir.glob("events.out.tfevents.*"):
        with suppress(ValueError, IndexError):
            stamps.append(int(f.name.split(".")[3]))
    deadline = time.time() + 1.5  # a file stamped further ahead (another clock) is not waited for
    while stamps and int(time.time()) <= max(stamps) and time.time() < deadline:
        time.sleep(0.05)


class Summaries:
    """Writes never stop the run: when the event file cannot be written (disk full, ...), one warning says
    so, summaries are off for the rest of the run, and training and checkpoints go on.

    The event file is created at the first event, so a run with nothing to log (``resume=auto`` of a finished
    run) adds no empty event file; the HParams entry waits for that first event."""

    def __init__(self, log_dir: Path | None, purge_step: int | None = None):
        self.writer = None
        self.log_dir, self.purge_step = log_dir, purge_step
        self._closed = log_dir is None
        self._pending: list = []  # HParams summaries for the event file, once it exists

    def _open(self):
        """The writer, created at the first event; None once summaries are off."""
        if self.writer is None and not self._closed:
            from torch.utils.tensorboard import SummaryWriter

            self._closed = True  # also when creating it fails: one warning, then off
            with self._guard():
                _quiet_writer_threads()
                _after_earlier_event_files(self.log_dir)
                self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step, flush_secs=30)
                fw = self.writer._get_file_writer()
                for summary in self._pending:
                    fw.add_summary(summary)
            self._pending = []
        return self.writer

    def start(self) -> None:
        """Create the event file now (training begins): a run that fails before its first log keeps one."""
        self._open()

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
                if writer is not None:
                    writer.close()

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self._open():
            with self._guard():
                for tag, v in values.items():
                    self.writer.add_scalar(tag, v, step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int | None = None) -> None:
        if self._open():
            with self._guard():
                self.writer.add_image(tag, image_grid(images, nrow), step)

    def figure(self, tag: str, fig, step: int) -> None:
        if self._open():
            with self._guard():
                self.writer.add_figure(tag, fig, step, close=True)

    def hparams(self, hparams: Mapping[str, Any], metric_tags: list[str]) -> None:
        """Write the HParams entry into this run's own event file (not a sub-folder, pytorch #32651).

        The dashboard shows, for each metric tag, the latest scalar logged under that tag in this run.
        """
        if self._closed and self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        summaries = hparams_summary(dict(hparams), {tag: 0.0 for tag in metric_tags})
        if self.writer is None:
            self._pending = list(summaries)
            return
        with self._guard():
            fw = self.writer._get_file_writer()
            for s in summaries:
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
        self._closed = True
