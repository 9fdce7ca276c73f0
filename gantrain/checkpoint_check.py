"""The structure of a checkpoint, checked once when it is loaded (resume, gantrain-generate, gantrain-eval).

``torch.load(weights_only=True)`` guarantees that loading runs no code, not that the file holds what the
training loop wrote: a forged or edited file can pass it with a string step, an empty G or ``rng=[]``.
:func:`validate` names the first field that is not what gantrain writes, in one sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gantrain.errors import UserError


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensors(v: Any, prefix: str = "") -> bool:
    return (isinstance(v, dict) and len(v) > 0
            and all(isinstance(k, str) and k.startswith(prefix) or k == "n_averaged" for k in v)
            and all(isinstance(t, torch.Tensor) for t in v.values()))


def _optimizer(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("state"), dict) and isinstance(v.get("param_groups"), list)
            and len(v["param_groups"]) > 0
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in v["param_groups"]))


def _rng_one(s: Any) -> bool:
    if not isinstance(s, dict) or not {"torch", "cuda", "numpy", "python"} <= set(s):
        return False
    t, np_state, py = s["torch"], s["numpy"], s["python"]
    return (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1
            and isinstance(s["cuda"], (list, tuple)) and all(isinstance(c, torch.Tensor) for c in s["cuda"])
            and isinstance(np_state, (list, tuple)) and len(np_state) == 5 and isinstance(np_state[0], str)
            and isinstance(np_state[1], torch.Tensor) and np_state[1].numel() == 624
            and _int(np_state[2]) and _int(np_state[3]) and isinstance(np_state[4], (int, float))
            and isinstance(py, (list, tuple)) and len(py) == 3 and _int(py[0])
            and isinstance(py[1], (list, tuple)) and all(_int(x) for x in py[1])
            and (py[2] is None or isinstance(py[2], float)))


def _config(v: Any) -> bool:
    return (isinstance(v, dict) and isinstance(v.get("model"), dict) and isinstance(v["model"].get("generator"), dict)
            and isinstance(v.get("data"), dict))


# field -> (check, what it must be); in the order the fields are checked
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step": (lambda v: _int(v) and v >= 0, "a whole number >= 0"),
    "data_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) in (1, 3) and all(_int(s) and s > 0 for s in v),
                   "a list of 1 or 3 positive sizes"),
    "config": (_config, "the run's config (a dict with model.generator and data)"),
    "G": (_tensors, "a non-empty dict of tensors (the generator's weights)"),
    "D": (_tensors, "a non-empty dict of tensors (the discriminator's weights)"),
    "G_ema": (lambda v: v is None or _tensors(v, "module."), "null or the EMA generator's weights (module.*)"),
    "opt_G": (_optimizer, "an optimiser state (state and param_groups)"),
    "opt_D": (_optimizer, "an optimiser state (state and param_groups)"),
    "scaler_G": (lambda v: isinstance(v, dict), "a gradient-scaler state (a dict)"),
    "scaler_D": (lambda v: isinstance(v, dict), "a gradient-scaler state (a dict)"),
    "grid_z": (lambda v: isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 2 and len(v) > 0,
               "a 2-d float tensor of latents"),
    "rng": (lambda v: isinstance(v, list) and len(v) > 0 and all(_rng_one(s) for s in v),
            "a non-empty list of RNG states, one per process"),
    "augment": (lambda v: v is None or (isinstance(v, dict) and {"p", "signs"} <= set(v) and all(
        isinstance(t, torch.Tensor) and t.is_floating_point() for t in v.values())),
        "null or the augmentation's state (tensors p and signs)"),
    "loss": (lambda v: isinstance(v, dict) and all(
        isinstance(s, dict) and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in s.values())
        for s in v.values()), "the loss's state (a dict; path_length: its pl_mean tensor)"),
    "best": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("metric"), str)
                                     and (v.get("value") is None or isinstance(v["value"], float))
                                     and (v.get("step") is None or _int(v["step"]))),
             "null or the best metric so far (metric, value, step)"),
}
OPTIONAL = {"G_ema": None, "augment": None, "loss": None, "best": None}


def validate(ckpt: Any, path: Any, newest: int) -> None:
    """Raise a UserError naming the first field of ``ckpt`` that is missing or not what gantrain writes."""
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "G" not in ckpt:
        raise UserError(f"{path} is not a gantrain checkpoint (no format_version / G entries).")
    version = ckpt["format_version"]
    if not _int(version) or version < 1:
        raise UserError(f"checkpoint {path} has format_version={version!r}, not a format version (a whole number "
                        ">= 1): it was not written by gantrain or was edited; use another checkpoint.")
    if version > newest:
        raise UserError(f"checkpoint {path} has format version {version}, newer than this gantrain understands "
                        f"({newest}): upgrade gantrain.")
    for field, (ok, what) in FIELDS.items():
        if field not in ckpt and field in OPTIONAL:
            continue
        if field not in ckpt:
            raise UserError(f"checkpoint {path} has no {field} entry: it was not written by gantrain's training loop "
                            "or was edited; use another checkpoint.")
        if not ok(ckpt[field]):
            raise UserError(f"checkpoint {path} has a bad {field} ({_describe(ckpt[field])}; it must be {what}): "
                            "the file is damaged or was edited; use another checkpoint.")
    for net in ("G", "D", "G_ema"):
        for key, t in (ckpt.get(net) or {}).items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(f"checkpoint {path} holds NaN/Inf weights ({net}.{key}): it is not a usable "
                                "checkpoint; use an earlier step_XXXXXXX.pt of the same run.")


def _describe(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    if isinstance(v, (dict, list, tuple)) and not v:
        return f"an empty {type(v).__name__}"
    text = repr(v)
    return f"{type(v).__name__} {text[:40] + '...' if len(text) > 40 else text}"
