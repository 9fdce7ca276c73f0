"""Peak memory of one training step with and without ``trainer.accumulate`` (same global batch).

    python -m gantrain.tools.bench_memory [--case stylegan-64] [--accumulate 1,4] [--batch 128] [--device auto]

Each K runs in a fresh process (a process's peak cannot be reset on the CPU) that builds the case's G, D,
loss and optimisers as the benchmark does (gantrain/tools/bench.py ``Networks``, the loop's own ``d_step`` and
``g_step``) and takes ``--steps`` D+G steps on a random batch. Reported per K, as the benchmark reports it:
the peak of the process (CPU: its peak RSS, VmHWM; CUDA: ``max_memory_allocated``); on the CPU also the tensors'
part of it, the analogue of CUDA's ``max_memory_allocated``: that peak minus the memory held before the
networks were built (the Python/torch runtime), i.e. weights, optimiser state, the batch and the step's
activations; and the step's own part: the peak minus the memory held just before the first step (the
runtime, weights, data). On the CPU the child runs with a fixed malloc mmap threshold, so freed
activations go back to the system.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    """This program's peak RSS: VmHWM, which starts afresh at exec. (``ru_maxrss`` keeps the peak of the
    process that forked it, so a child of a large parent, e.g. pytest, would report the parent's size.)"""
    try:
        return _status_mib("VmHWM")
    except OSError:  # no /proc: ru_maxrss
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(case: str, k: int, batch: int, device_name: str, steps: int) -> dict:
    from gantrain.cli import compose
    from gantrain.runtime import configure_backends, select_device
    from gantrain.tools.bench import CASES, Networks, image_shape

    device = select_device(device_name)
    configure_backends(device, deterministic=False)
    model, data = CASES[case]
    cfg = compose([*model, *data, f"data.batch_size={batch}", f"trainer.accumulate={k}", "metrics.enabled=false",
                   f"trainer.device={device_name}"])
    shape = image_shape(cfg)
    runtime = _rss_mib()  # the Python/torch runtime, before any of the case's tensors exist
    torch.manual_seed(0)
    nets = Networks(cfg, shape, device)
    real = torch.rand(batch, *shape, device=device) * 2 - 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = _rss_mib()
    for _ in range(steps):
        nets.step(real)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        tensors = peak  # CUDA counts tensors only
    else:
        peak = _peak_rss_mib()
        tensors = peak - runtime
    return {"case": case, "accumulate": k, "batch": batch, "device": str(device), "peak_mib": peak,
            "tensors_mib": tensors, "before_mib": before, "step_mib": peak - before}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="stylegan-64")
    p.add_argument("--accumulate", default="1,4")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the case's data.batch_size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch is None:
        from gantrain.cli import compose
        from gantrain.tools.bench import CASES

        args.batch = compose([*CASES[args.case][0], *CASES[args.case][1]]).data.batch_size
    if args.child is not None:
        print(json.dumps(child(args.case, args.child, args.batch, args.device, args.steps)))
        return
    rows = []
    for k in (int(x) for x in args.accumulate.split(",")):
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
        cmd = [sys.executable, "-m", "gantrain.tools.bench_memory", "--case", args.case, "--batch", str(args.batch),
               "--device", args.device, "--steps", str(args.steps), "--child", str(k)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['case']} batch {r['batch']} accumulate {k} on {r['device']}: peak {r['peak_mib']:.0f} MiB, "
              f"of which tensors {r['tensors_mib']:.0f} MiB, the step {r['step_mib']:.0f} MiB", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"accumulate {r['accumulate']} / accumulate {base['accumulate']}: peak {r['peak_mib'] / base['peak_mib']:.0%}"
              f", tensors {r['tensors_mib'] / base['tensors_mib']:.0%}, step {r['step_mib'] / base['step_mib']:.0%}")


if __name__ == "__main__":
    main()
