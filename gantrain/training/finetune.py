"""Fine-tuning: ``init_from=CKPT`` and FreezeD (``model.freeze_d=K``, Mo et al. 2020).

``init_from`` loads G, D and the EMA weights of a checkpoint of the same model and data shape (any data
set); the step counter, optimisers and random streams are this run's own, so it is a new run that starts
from trained weights, not a resume. A run resumed (``resume=``) from a fine-tune's checkpoint continues it:
the loop loads ``init_from`` only when it does not resume.

``freeze_d=K`` stops D's first K blocks (from the input) from training: their weights get no gradients,
no optimiser steps and are left out of DDP's gradient all-reduce. Blocks: for gan and dcgan each layer with
weights and its normalisation/activation (``D.net``); for stylegan ``fromrgb`` with the first residual
block, then each residual block. D's last block (the output) always trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from gantrain import checkpoint
from gantrain.errors import UserError
from gantrain.summaries import flatten

# model settings a fine-tune may change: they do not change the networks' weights' shapes or meaning
MAY_DIFFER = ("model.freeze_d", "model.ema_kimg", "model.style_mixing_prob")


def check_compatible(saved: dict[str, Any], cfg: DictConfig, shape: tuple[int, ...], path: Path) -> None:
    """One sentence naming the first difference between the checkpoint's model/data shape and this run's."""
    if saved.get("model") != cfg.model.name:
        raise UserError(f"init_from={path} holds a model={saved.get('model')} checkpoint but this run trains "
                        f"model={cfg.model.name}: fine-tune with model={saved.get('model')} or another checkpoint.")
    if tuple(saved["data_shape"]) != tuple(shape):
        raise UserError(f"init_from={path} was trained on images of shape {tuple(saved['data_shape'])} but this "
                        f"run's data has shape {tuple(shape)}: use data of that shape (data.resolution, "
                        "data.channels).")
    old = flatten({"model": saved["config"]["model"]})
    old.setdefault("model.conditional", False)  # checkpoints from before model.conditional existed
    new = flatten({"model": OmegaConf.to_container(cfg.model, resolve=True)})
    for key in sorted(set(old) | set(new), key=lambda k: (k.count("."), k)):  # model.z_dim before its copies
        if old.get(key) != new.get(key) and key not in MAY_DIFFER:
            raise UserError(f"init_from={path} has {key}={old.get(key)} but this run has {key}={new.get(key)}: "
                            f"set {key}={old.get(key)} to fine-tune that checkpoint.")


def init_from(path: str | Path, cfg: DictConfig, shape: tuple[int, ...], G: nn.Module, D: nn.Module,
              ema) -> None:
    """Copy G, D and the EMA weights of checkpoint ``path`` into this run's networks (in place)."""
    path = Path(path).expanduser()
    saved = checkpoint.load(path, map_location="cpu")
    check_compatible(saved, cfg, shape, path)
    G.load_state_dict(saved["G"])
    D.load_state_dict(saved["D"])
    if ema is not None:
        if saved.get("G_ema") is not None:
            ema.model.load_state_dict(saved["G_ema"])
        else:  # the checkpoint had no EMA: start it at the loaded G
            ema.model.module.load_state_dict(G.state_dict())


def d_blocks(D: nn.Module) -> list[list[nn.Module]]:
    """D's blocks from the input to the output, each a list of modules."""
    if hasattr(D, "fromrgb") and hasattr(D, "blocks"):  # stylegan
        rest = [m for name, m in D.named_children() if name not in ("fromrgb", "blocks")]
        return [[D.fromrgb, D.blocks[0]], *[[b] for b in list(D.blocks)[1:]], rest]
    blocks: list[list[nn.Module]] = [[]]
    for layer in D.net:  # gan, dcgan: a block starts at each layer with weights (Flatten joins the first)
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in blocks[-1]):
            blocks.append([])
        blocks[-1].append(layer)
    return blocks


def freeze_d(D: nn.Module, k: int, model: str) -> None:
    """Freeze D's first ``k`` blocks (requires_grad off: call before the DDP wrapper is built)."""
    if k == 0:
        return
    blocks = d_blocks(D)
    if not 0 < k < len(blocks):
        raise UserError(f"model.freeze_d={k} is out of range: model={model}'s discriminator has {len(blocks)} "
                        f"blocks here and its last must train; use 0 to {len(blocks) - 1}.")
    for block in blocks[:k]:
        for m in block:
            m.requires_grad_(False)
