"""The safe build of a checkpoint's generator: the config in a checkpoint is data, not code.

Only ``_target_``s naming the project's own model classes (``gantrain.models.<module>.<Class>``) are
instantiated, with plain values, without interpolation; anything else is a UserError naming it. Used by every
program that reads a checkpoint's networks (gantrain-generate, -eval, -export, -project, the quality runs).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import torch
from torch import nn

from gantrain.errors import UserError

_TARGET = re.compile(r"^gantrain\.models\.([a-z_][a-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")


def resolve_target(target: Any) -> type:
    """The class a checkpoint's ``_target_`` names, only if it is one of the project's model classes."""
    m = _TARGET.match(target) if isinstance(target, str) else None
    if m is None:
        raise UserError(f"the checkpoint's config names _target_={target!r}, which is not one of gantrain's own "
                        "model classes (gantrain.models.<module>.<Class>), so it was not instantiated.")
    try:
        module = importlib.import_module(f"gantrain.models.{m.group(1)}")
    except ImportError:
        module = None
    cls = getattr(module, m.group(2), None) if module is not None else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == module.__name__):
        raise UserError(f"the checkpoint's config names _target_={target!r}, which is not a model class of this "
                        "gantrain (a checkpoint from another version or a crafted one), so it was not instantiated.")
    return cls


def build(node: Any, **extra: Any) -> Any:
    """A minimal, safe ``instantiate``: plain values stay plain (no interpolation), dicts with a
    ``_target_`` become instances of gantrain's own model classes only."""
    if isinstance(node, list):
        return [build(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "_target_" not in node:
        return {k: build(v) for k, v in node.items()}
    cls = resolve_target(node["_target_"])
    if node.get("_partial_"):
        raise UserError(f"the checkpoint's config asks for a partial {node['_target_']}, which gantrain never "
                        "writes, so it was not instantiated.")
    args = [build(v) for v in node.get("_args_", [])]
    kwargs = {k: build(v) for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
    return cls(*args, **kwargs, **extra)


def ema_to_plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AveragedModel`` state_dict ("module.*" + "n_averaged") -> the wrapped module's state_dict."""
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}


def load_generator(ckpt: dict[str, Any], device: torch.device) -> tuple[nn.Module, bool]:
    """The checkpoint's generator in eval mode on ``device`` (the EMA one when present); (G, is_ema)."""
    try:
        node = ckpt["config"]["model"]["generator"]
        shape = tuple(int(s) for s in ckpt["data_shape"])
    except (KeyError, TypeError) as e:
        raise UserError(f"the checkpoint has no model.generator config or data_shape ({e}): it was not written "
                        "by gantrain's training loop.") from None
    if ckpt.get("class_names"):  # a conditional run's G(z, c) (gantrain/models/conditional.py)
        from gantrain.models.conditional import conditional_node

        try:
            node = conditional_node(node, len(ckpt["class_names"]))
        except (ValueError, AttributeError, TypeError) as e:
            raise UserError(f"the checkpoint's conditional generator cannot be rebuilt ({e}): the file is damaged "
                            "or was edited.") from None
    try:
        G = build(node, shape=shape)
    except UserError:
        raise
    except Exception as e:  # a constructor refusing the stored settings
        raise UserError(f"cannot build the generator from the checkpoint's config: {e}.") from e
    use_ema = ckpt.get("G_ema") is not None
    state = ema_to_plain(ckpt["G_ema"]) if use_ema else ckpt["G"]
    try:
        G.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"the checkpoint's generator weights do not fit its config "
                        f"({str(e).splitlines()[0][:100]}): the file is damaged or was edited.") from None
    return G.to(device).eval().requires_grad_(False), use_ema
