"""``gantrain-generate --class`` for class-conditional checkpoints (``model.conditional=true``).

* ``--class K`` (an index) or ``--class NAME`` (a class name of the data, e.g. a folder's subfolder):
  every sample of that class;
* ``--class all``: a grid with one row per class, the same ``-n`` latents in every row (``-n`` counts
  samples per class here, default 8);
* no ``--class``: the classes 0, 1, ..., K-1 in turn (a balanced set).

A conditional checkpoint's ``.npz`` also holds ``labels`` (int64, one per sample). ``--class`` on an
unconditional checkpoint, or a class the checkpoint does not have, is refused in one sentence listing
the classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import torch
from torch import nn

from gantrain.errors import UserError

ALL_PER_CLASS = 8   # -n default for --class all


def listing(names: list[str]) -> str:
    return ", ".join(f"{k} ({n})" if str(n) != str(k) else str(k) for k, n in enumerate(names))


def resolve(spec: str | None, names: list[str] | None, model: str) -> list[int] | None:
    """The classes ``--class spec`` asks for: [k], every class (``all``), or None (no --class)."""
    if spec is None:
        return None
    if not names:
        raise UserError(f"--class {spec} needs a class-conditional checkpoint (trained with model.conditional=true); "
                        f"this one ({model}) is unconditional: leave --class out.")
    if spec == "all":
        return list(range(len(names)))
    if spec in names:
        return [names.index(spec)]
    if spec.lstrip("-").isdigit() and 0 <= int(spec) < len(names):
        return [int(spec)]
    raise UserError(f"--class {spec} is not a class of this checkpoint: its classes are {listing(names)} "
                    "(or all).")


class Conditioned(nn.Module):
    """``G`` with its classes given in advance: successive calls take the next ``len(z)`` of ``labels``
    (cycled), so the generic sampling code (``gantrain.models.sample``) needs no classes."""

    def __init__(self, G: nn.Module, labels: torch.Tensor):
        super().__init__()
        self.G, self.labels, self.offset = G, labels.long().cpu(), 0
        self.z_dim, self.shape = G.z_dim, getattr(G, "shape", None)
        self.supports_truncation = getattr(G, "supports_truncation", False)
        self._noise = "noise_mode" in inspect.signature(G.forward).parameters

    def next_labels(self, n: int) -> torch.Tensor:
        c = self.labels[(self.offset + torch.arange(n)) % len(self.labels)]
        self.offset += n
        return c

    def forward(self, z: torch.Tensor, psi: float | None = None, noise_mode: str | None = None) -> torch.Tensor:
        kw = {} if psi is None else {"psi": psi}
        if noise_mode is not None and self._noise:
            kw["noise_mode"] = noise_mode
        return self.G(z, self.next_labels(len(z)).to(z.device), **kw)


def plan(G: nn.Module, classes: list[int] | None, num_classes: int, n: int) -> tuple[Conditioned, int, int | None]:
    """(the conditioned G, samples in all, grid columns or None) for ``--class``."""
    if classes is None:
        return Conditioned(G, torch.arange(num_classes)), n, None
    if len(classes) == 1:
        return Conditioned(G, torch.tensor(classes)), n, None
    return Conditioned(G, torch.arange(num_classes).repeat_interleave(n)), n * num_classes, n


def labels_of(cG: Conditioned, total: int) -> torch.Tensor:
    """The class of each of the ``total`` samples, in order (what the .npz stores)."""
    return cG.labels[torch.arange(total) % len(cG.labels)]


def latents(draw: Callable[[int], Iterator[torch.Tensor]], n: int, cols: int | None) -> Iterator[torch.Tensor]:
    """``draw(n)``'s latents, or with ``cols`` (``--class all``) the same ``cols`` latents for every row."""
    if cols is None:
        yield from draw(n)
        return
    row = torch.cat(list(draw(cols)))
    for _ in range(n // cols):
        yield from row.split(256)
