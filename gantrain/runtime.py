"""How this process computes: its device, its precision, torch's backend switches and the seeds.

Used by training, generation, evaluation and the developer tools alike; it imports only :mod:`gantrain.errors`.

``trainer.precision=auto`` (:func:`resolve_precision`): bf16 autocast where the device computes bf16 natively,
fp32 elsewhere. Native bf16: a CUDA GPU of compute capability 8.0 or newer (Ampere, Hopper, ...); a CPU whose
flags (``/proc/cpuinfo``) show AMX-BF16 or AVX512-BF16 (Sapphire Rapids and newer Xeons, Zen 4 and newer), on
which a bf16 matrix product runs several times faster than fp32 (issue 18 measured 6.4x on AMX). Elsewhere bf16
is emulated and slower, so auto means fp32. The choice is logged once and written into the run's config, so the
checkpoint, the HParams entry and a resume see the precision the run trained in.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gantrain.errors import UserError

log = logging.getLogger(__name__)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


# ------------------------------------------------------------------------------------------- device
def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def select_device(name: str) -> torch.device:
    """``trainer.device`` (auto, cpu, cuda, cuda:K) as a device; under torchrun ``cuda`` is this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"trainer.device={name} was asked for but no CUDA GPU is available: "
                            "use trainer.device=auto or trainer.device=cpu.")
        dev = torch.device(name)
        if dev.index is None:  # this process's GPU (its local rank under torchrun), never an unset index
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if _world_size() > 1:
            raise UserError(f"trainer.device={name} would put all {_world_size()} processes on one GPU: "
                            "use trainer.device=cuda (each process takes its own) or CUDA_VISIBLE_DEVICES.")
        if dev.index >= torch.cuda.device_count():
            raise UserError(f"trainer.device={name} does not exist: this machine has "
                            f"{torch.cuda.device_count()} GPU(s) (cuda:0 ...).")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"trainer.device={name} is unknown: use auto, cpu, cuda or cuda:K.")


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic algorithms if asked; on CUDA the process's GPU, cuDNN autotuning and TF32 matmuls."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


# ---------------------------------------------------------------------------------------- precision
def cpu_bf16_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The native-bf16 flags this CPU reports ([] when none, or no /proc/cpuinfo)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [f for f in CPU_BF16_FLAGS if f in flags]


def native_bf16(device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively, why)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return major >= 8, f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    flags = cpu_bf16_flags(cpuinfo)
    return bool(flags), f"CPU flags {', '.join(flags)}" if flags else "no AMX-BF16 / AVX512-BF16 CPU flags"


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``precision`` itself, or for ``auto`` the precision chosen for ``device`` (logged)."""
    if str(precision) != "auto":
        return str(precision)
    native, why = native_bf16(device, cpuinfo)
    chosen = "bf16" if native else "32"
    log.info("trainer.precision=auto: %s on %s (%s)", chosen, device, why)
    return chosen


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.precision`` (32, bf16, 16) on ``device``; None: no autocast."""
    precision = str(precision)
    if precision == "32":
        return None
    if precision == "16":
        if device.type != "cuda":
            raise UserError("trainer.precision=16 needs a CUDA GPU: use trainer.precision=bf16 or 32 on the CPU.")
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16 is not supported by this GPU: use trainer.precision=16 or 32.")
    return torch.bfloat16


# -------------------------------------------------------------------------------------------- seeds
def torch_seed(seed: int) -> int:
    """Any integer as a torch seed: modulo 2**64, which is what torch itself does with the seeds it accepts
    (-1 is 2**64 - 1), so seed=2**70 is reduced deterministically instead of overflowing."""
    return int(seed) % 2**64


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(torch_seed(seed))
