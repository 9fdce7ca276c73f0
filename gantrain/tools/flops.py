"""How close a model runs to the machine's limit: model FLOPs per image and the device's measured GEMM peak.

* :func:`step_flops_per_image`: the FLOPs of one training step (D step + G step, forward and backward, as
  ``torch.utils.flop_counter`` counts matrix products and convolutions) per real image shown
  to D; a lazy R1 term is counted at its share (one step in ``loss.r1_interval``). Elementwise work
  (activations, normalisation, the optimisers, the EMA) is not counted: model FLOPs, as in MFU figures.
* :func:`gemm_peak`: FLOP/s of a large square matrix product in the dtype a precision computes in (fp32:
  TF32 where the backends allow it, bf16, fp16), timed on the device: the ceiling those FLOPs are compared to.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

DTYPES = {"32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}


class _Counter(TorchDispatchMode):
    """FlopCounterMode's count (its ``flop_registry``) without its per-module tracker, whose hooks fail on a
    parameter passed into a module under ``no_grad`` (StyleGAN's constant input in the D step's G forward)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def count_flops(fn) -> int:
    with _Counter() as counter:
        fn()
    return counter.total


def step_flops_per_image(nets, real: torch.Tensor, r1_interval: int = 0) -> float:
    """FLOPs per image of ``nets.step(real)`` (a :class:`gantrain.tools.bench.Networks`), R1 at its share."""
    nets.d_index = 1  # a step without the lazy R1 term (due at d_index % r1_interval == 0)
    plain = count_flops(lambda: nets.step(real))
    total = plain
    if r1_interval:
        nets.d_index = 0
        total = plain + (count_flops(lambda: nets.step(real)) - plain) / r1_interval
    return total / real.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, precision: str, n: int | None = None, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n @ n x n product in ``precision``'s dtype on ``device`` (best of several timings)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = DTYPES[str(precision)]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(2):
        a @ b
    _sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        _sync(device)
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - t0))
        if time.perf_counter() > t_end:
            return best
