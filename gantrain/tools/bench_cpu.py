"""CPU seconds per training step under settings side by side, on a machine other jobs share.

    python -m gantrain.tools.bench_cpu [--cases dcgan-mnist,stylegan-32] [--batch 64] [--steps 3]
        [--repeats 3] [--variant NAME:OVERRIDE,OVERRIDE ...]

The wall-clock benchmark (gantrain/tools/bench.py) needs an idle machine: under load its timings move by
2x from one minute to the next. This one times the loop's own D + G step (``gantrain.tools.bench.Networks``)
in **process CPU seconds** on one thread, which other processes barely change, and interleaves the
variants (A, B, A, B, ...) so a drift in the machine's speed hits them alike; per variant it reports the
minimum over ``--repeats`` of the mean over ``--steps`` steps (after one warm-up step) and the ratio to the
first variant. A variant is a name and comma-separated config overrides (default: ``contiguous`` and
``channels_last``, i.e. ``trainer.channels_last=false`` / ``true``).
"""

from __future__ import annotations

import argparse
import time

import torch

DEFAULT_VARIANTS = ["contiguous:trainer.channels_last=false", "channels_last:trainer.channels_last=true"]


def build(case: str, overrides: list[str], batch: int):
    """The case's networks and a random batch of its image shape, on the CPU."""
    from gantrain.cli import compose
    from gantrain.tools.bench import CASES, Networks, image_shape

    model, data = CASES[case]
    cfg = compose([*model, *data, f"data.batch_size={batch}", "metrics.enabled=false", "trainer.device=cpu",
                   *overrides])
    shape = image_shape(cfg)
    torch.manual_seed(0)
    return Networks(cfg, shape, torch.device("cpu")), torch.rand(batch, *shape) * 2 - 1


def cpu_seconds_per_step(nets, real: torch.Tensor, steps: int) -> float:
    nets.step(real)  # warm-up: allocator, lazily built kernels
    t0 = time.process_time()
    for _ in range(steps):
        nets.step(real)
    return (time.process_time() - t0) / steps


def main(argv: list[str] | None = None) -> None:
    from gantrain.runtime import configure_backends
    from gantrain.tools.bench import CASES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="dcgan-mnist,dcgan-celeba64,stylegan-32",
                   help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", action="append", default=None, help="NAME:OVERRIDE,OVERRIDE (repeatable)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # process CPU time of one thread: what the shared machine cannot distort
    configure_backends(torch.device("cpu"), deterministic=False)
    variants = [v.split(":", 1) for v in (args.variant or DEFAULT_VARIANTS)]
    print(f"| case | batch | {' | '.join(f'{n} CPU s/step' for n, _ in variants)} | "
          f"{' | '.join(f'{n} / {variants[0][0]}' for n, _ in variants[1:])} |")
    print("|---|---|" + "---|" * (2 * len(variants) - 1))
    for case in args.cases.split(","):
        built = [build(case, [o for o in ov.split(",") if o], args.batch) for _, ov in variants]
        best = [float("inf")] * len(variants)
        for _ in range(args.repeats):
            for i, (nets, real) in enumerate(built):
                best[i] = min(best[i], cpu_seconds_per_step(nets, real, args.steps))
        print(f"| {case} | {args.batch} | {' | '.join(f'{b:.3f}' for b in best)} | "
              f"{' | '.join(f'{best[0] / b:.2f}x faster' if b < best[0] else f'{b / best[0]:.2f}x slower' for b in best[1:])} |",
              flush=True)


if __name__ == "__main__":
    main()
