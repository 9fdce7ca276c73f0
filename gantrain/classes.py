"""Class-conditional training glue (``model.conditional=true``): the conditional networks' config nodes,
the fake classes, the per-class sample grid.

Fake classes are drawn uniformly, not by the data's class frequencies: G must learn every class
equally well (a rare class would otherwise get few G updates), and what users ask for -- ``--class k``,
the grid's rows, ``class_accuracy`` -- weighs every class the same. On balanced data (MNIST, Fashion-MNIST)
the two coincide.
"""

from __future__ import annotations

import numpy as np
import torch

from gantrain.errors import UserError
from gantrain.models.conditional import conditional_node
from gantrain.torch_utils import from_uint8


def is_conditional(cfg_model) -> bool:
    return bool(cfg_model.get("conditional", False))


def network_node(cfg_model, which: str, num_classes: int | None):
    """``model.<which>`` as it is, or its conditional version's node when ``num_classes`` is set."""
    node = cfg_model[which]
    if num_classes is None:
        return node
    try:
        return conditional_node(node, num_classes)
    except ValueError as e:
        raise UserError(f"model.conditional=true: model.{which} {e}; use model=gan, dcgan or stylegan.") from None


def fake_classes(batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Uniform classes for a batch of fakes (the device's generator: part of the saved RNG state)."""
    return torch.randint(num_classes, (batch,), device=device)


def grid_layout(num_classes: int, num_samples: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(latent index, class) of each grid cell and the number of columns: one row per class, the same
    latents in every row (column j uses latent j), so rows compare classes and steps compare rows."""
    cols = max(1, num_samples // num_classes)
    z_index = torch.arange(cols).repeat(num_classes)
    c = torch.arange(num_classes).repeat_interleave(cols)
    return z_index, c, cols


def label_tiles(names: list[str], shape: tuple[int, ...]) -> torch.Tensor:
    """One tile per class name, images of ``shape`` (C, H, W) in [-1, 1]: the grid's row labels."""
    from PIL import Image, ImageDraw

    c, h, w = shape
    tiles = []
    for name in names:
        im = Image.new("L", (max(w, 8), max(h, 8)), 0)
        draw = ImageDraw.Draw(im)
        text = str(name)[: max(1, w // 6)]
        draw.text((1, max(0, h // 2 - 5)), text, fill=255)
        tiles.append(from_uint8(torch.from_numpy(np.array(im.resize((w, h))))).expand(c, h, w))
    return torch.stack(tiles)


def labelled_rows(fake: torch.Tensor, names: list[str], cols: int) -> torch.Tensor:
    """``fake`` (K*cols, C, H, W) in rows of ``cols`` with each row's class-name tile in front."""
    tiles = label_tiles(names, tuple(fake.shape[1:])).to(fake)
    rows = fake.view(len(names), cols, *fake.shape[1:])
    return torch.cat([tiles.unsqueeze(1), rows], dim=1).flatten(0, 1)


def default_metric(names: list[str], num_classes: int | None, explicit: bool) -> list[str]:
    """``class_accuracy`` added to the metrics of a conditional run that computes the classifier's;
    asked for by an unconditional run: a UserError."""
    if num_classes is None:
        if "class_accuracy" in names:
            raise UserError("metric class_accuracy needs a class-conditional model: set model.conditional=true or "
                            "drop it from metrics.names.")
        return []
    wanted = not explicit and "classifier_fd" in names
    return ["class_accuracy"] if wanted and "class_accuracy" not in names else []


def class_accuracy(predicted: torch.Tensor, num_classes: int) -> float:
    """The share of samples generated for class k that the metrics' classifier puts in class k; sample i
    was generated for class ``i % num_classes`` (``Evaluator.generate``)."""
    asked = torch.arange(len(predicted)) % num_classes
    return float((predicted.long() == asked).float().mean())
