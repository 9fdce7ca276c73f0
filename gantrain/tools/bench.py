"""Benchmark: the gantrain loop against its ceiling and against a hand-written PyTorch loop.

    python -m gantrain.tools.bench [--device auto] [--cases gan-mnist,dcgan-mnist,...] [--seconds 20] [--write]

For each case, on the current device and in one run:
- loop: the whole ``gantrain`` training loop (``train()``: progress bar, logging, grids and checkpoints
  at their default intervals), images/s in steady state from the run's own Perf/images_per_sec;
- ceiling: the same networks, losses, optimisers and generator EMA fed from a tensor already on the device,
  no logging;
- baseline: the same networks trained by the loop a user would write by hand: a torchvision dataset and
  a ``DataLoader`` (ToTensor/Normalize per sample, the usual workers), fp32, eager (whatever ``--precision``
  and ``--extra`` say for the loop).
Images/s counts real images shown to D. Data is written in the real formats (IDX files, a JPEG folder)
into a temporary directory, unless ``--data-root`` points at real data. ``--write`` puts the table into
docs/BENCHMARKS.md between the ``bench`` markers.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from gantrain.cli import compose

CASES = {  # name: (model overrides, data overrides)
    "gan-mnist": (["model=gan"], ["data=mnist"]),
    "dcgan-mnist": (["model=dcgan"], ["data=mnist"]),
    "dcgan-celeba64": (["model=dcgan"], ["data=celeba", "data.resolution=64"]),
    "stylegan-32": (["model=stylegan"], ["data=mnist"]),
    "stylegan-64": (["model=stylegan"], ["data=celeba", "data.resolution=64"]),
}


def write_data(root: Path, n_mnist: int, n_jpeg: int) -> None:
    """Random data in the real formats: MNIST IDX files and a CelebA-style JPEG folder (178x218)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_mnist), ("t10k", 16)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    faces = root / "celeba" / "img_align_celeba"
    faces.mkdir(parents=True, exist_ok=True)
    for i in range(n_jpeg):
        img = rng.integers(0, 256, (218 // 8, 178 // 8, 3), dtype=np.uint8)
        Image.fromarray(img).resize((178, 218)).save(faces / f"{i + 1:06d}.jpg", quality=90)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step_fn, device: torch.device, seconds: float, min_steps: int = 5) -> tuple[int, float]:
    """Run ``step_fn`` for about ``seconds`` after a warm-up; returns (steps, elapsed)."""
    for _ in range(3):
        step_fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds:
        step_fn()
        n += 1
    sync(device)
    return n, time.perf_counter() - t0


class Networks:
    """G, D, loss, optimisers and EMA built from the config as train() builds them, stepped by the same
    ``gantrain.training.steps.d_step``/``g_step`` as the training loop."""

    def __init__(self, cfg, shape, device):
        from gantrain.distributed.ddp import training_views
        from gantrain.training.build import build_step_context
        from gantrain.training.steps import EMA

        G = instantiate(cfg.model.generator, shape=shape).to(device)
        D = instantiate(cfg.model.discriminator, shape=shape).to(device)
        self.channels_last = bool(cfg.trainer.channels_last) and len(shape) == 3  # as train() does
        if self.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        self.t = build_step_context(cfg, G, D, training_views(G, D, device, cfg.trainer.compile), device)
        self.G, self.device, self.z_dim, self.d_index = G, device, G.z_dim, 0
        self.ema = EMA(G, cfg.model.ema_kimg) if cfg.model.get("ema_kimg") else None

    def step(self, real: torch.Tensor) -> None:
        from gantrain.training.steps import d_step, g_step

        n = real.shape[0]
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        d_step(self.t, real, torch.randn(n, self.z_dim, device=self.device), self.d_index)
        g_step(self.t, torch.randn(n, self.z_dim, device=self.device), self.d_index)  # lazy regularisers as train()
        self.d_index += 1
        if self.ema is not None:
            self.ema.update(self.G, images_seen=self.d_index * n, batch=n)


def measure_loop(overrides: list[str], out: Path, steps: int) -> float:
    """images/s of the whole train() loop in steady state: the run's own ``Perf/images_per_sec`` over every
    log interval but the first (warm-up), as total images / total time. Grids and checkpoints that fall in
    an interval are in its time; setup (data, models) is not."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gantrain.training.loop import train

    cfg = compose([*overrides, f"trainer.max_steps={steps}", "log.progress_bar=true"])
    shutil.rmtree(out, ignore_errors=True)
    train(cfg, out)
    events = EventAccumulator(str(out), size_guidance={"scalars": 0}).Reload().Scalars("Perf/images_per_sec")
    pairs = list(zip(events, events[1:]))
    if not pairs:
        raise SystemExit(f"the loop logged fewer than 2 intervals in {steps} steps: raise --loop-steps")
    images = [(b.step - a.step) * cfg.data.batch_size * cfg.trainer.d_steps for a, b in pairs]
    return sum(images) / sum(n / b.value for n, (a, b) in zip(images, pairs))


def image_shape(cfg) -> tuple[int, int, int]:
    """The (C, H, W) a case's model sees, from its config alone (for tools that feed random batches)."""
    padded = cfg.model.get("pad_to_power_of_two") and cfg.data.name in ("mnist", "fashion_mnist")
    res = 32 if padded else cfg.data.get("resolution") or 28
    return (cfg.data.get("channels") or 1, res, res)


def ceiling_setup(cfg, device):
    from gantrain.data import build_dataset

    res = 32 if cfg.model.get("pad_to_power_of_two") and cfg.data.name in ("mnist", "fashion_mnist") else None
    data = build_dataset(cfg.data, device=device, resolution=res, progress=False)
    return Networks(cfg, tuple(data.shape), device), data.batch(0, cfg.data.batch_size)


def measure_ceiling(cfg, device, seconds: float) -> float:
    nets, real = ceiling_setup(cfg, device)
    n, dt = timed_steps(lambda: nets.step(real), device, seconds)
    return n * cfg.data.batch_size / dt


def measure_flops(overrides: list[str], device) -> float:
    """Model FLOPs per image of one training step (gantrain/tools/flops.py), counted on the eager networks."""
    from gantrain.tools.flops import step_flops_per_image

    cfg = compose([*overrides, "trainer.compile=false"])
    nets, real = ceiling_setup(cfg, device)
    return step_flops_per_image(nets, real, cfg.loss.r1_interval if cfg.loss.get("r1_gamma") else 0)


def torchvision_loader(cfg, root: Path, device):
    """What a user writes by hand: a torchvision dataset with per-sample transforms and a DataLoader."""
    import torchvision.transforms as T
    from torchvision.datasets import MNIST, ImageFolder

    workers = min(4, os.cpu_count() or 1)
    if cfg.data.name == "mnist":
        size = 32 if cfg.model.get("pad_to_power_of_two") else 28
        tf = T.Compose([T.Pad((size - 28) // 2), T.ToTensor(), T.Normalize([0.5], [0.5])])
        ds = MNIST(str(root), train=True, transform=tf)
    else:
        r = cfg.data.resolution
        tf = T.Compose([T.Resize(r), T.CenterCrop(r), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        ds = ImageFolder(str(root / "celeba"), transform=tf)
    return torch.utils.data.DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=True)


def measure_baseline(overrides: list[str], root: Path, device, seconds: float) -> float:
    cfg = compose([*overrides, "trainer.precision=32", "trainer.compile=false",  # fp32, eager, as by hand
                   "trainer.channels_last=false"])
    loader = torchvision_loader(cfg, root, device)
    x0, _ = next(iter(loader))
    nets = Networks(cfg, tuple(x0.shape[1:]), device)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        nets.step(x.to(device, non_blocking=True))

    n, dt = timed_steps(step, device, seconds)
    return n * cfg.data.batch_size / dt


def measure_folder_epochs(root: Path, device, resolution: int = 64) -> dict[str, float]:
    """CelebA-style folder: first epoch (decode into the cache) and later epochs, vs ImageFolder."""
    from gantrain.data import build_dataset

    cache = root / ".gantrain_cache"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = compose(["data=celeba", f"data.root={root}", f"data.resolution={resolution}", "data.batch_size=64"])
    t0 = time.perf_counter()
    data = build_dataset(cfg.data, device=device, progress=True)
    n = data.num_examples
    first_decode = time.perf_counter() - t0
    bpe = n // 64

    def epoch():
        t = time.perf_counter()
        for s in range(bpe):
            data.batch(s, 64)
        sync(device)
        return time.perf_counter() - t

    first = n / (first_decode + epoch())
    later = bpe * 64 / min(epoch() for _ in range(3))
    loader = torchvision_loader(compose(["model=dcgan", *CASES["dcgan-celeba64"][1], f"data.root={root}",
                                         "data.batch_size=64"]), root, device)
    rates = []
    for _ in range(2):
        t = time.perf_counter()
        count = sum(x.shape[0] for x, _ in loader)
        rates.append(count / (time.perf_counter() - t))
    return {"first": first, "later": later, "imagefolder_first": rates[0], "imagefolder_later": rates[1]}


def _cases(text: str) -> str:
    unknown = [c for c in text.split(",") if c not in CASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown case {unknown[0]}: choose from {', '.join(CASES)}")
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m gantrain.tools.bench", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases (model and data of each):\n" + "\n".join(
            f"  {name:16s} {' '.join(model + data)}" for name, (model, data) in CASES.items()))
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:K (default: auto)")
    p.add_argument("--cases", default=",".join(CASES), type=_cases,
                   help="comma-separated cases to run, of those listed below (default: all)")
    p.add_argument("--seconds", type=float, default=15.0,
                   help="timing window of the ceiling and the baseline, in seconds (default: 15)")
    p.add_argument("--loop-steps", default="", help="steps of the loop's run (default: about --seconds of work)")
    p.add_argument("--precision", default="32", help="trainer.precision of every case: 32, bf16 or 16 (default: 32)")
    p.add_argument("--data-root", default=None,
                   help="real data (MNIST/raw, celeba/img_align_celeba) instead of random data in their formats")
    p.add_argument("--n-jpeg", type=int, default=2048,
                   help="JPEGs in the CelebA-style folder written when there is no --data-root (default: 2048)")
    p.add_argument("--write", action="store_true", help="write the table into docs/BENCHMARKS.md")
    p.add_argument("--extra", default="", help="extra gantrain overrides for every case, comma-separated")
    p.add_argument("--tag", default="", help="name of the docs/BENCHMARKS.md section to (re)write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from gantrain.runtime import configure_backends, select_device
    from gantrain.tools.flops import gemm_peak

    device = select_device(args.device)
    configure_backends(device, deterministic=False)  # as train() sets them, before the first ceiling
    args.peak = gemm_peak(device, args.precision)  # the device's FLOP/s for this precision, timed now
    print(f"peak: {args.peak / 1e9:.0f} GFLOP/s ({args.precision} matrix product)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="gantrain-bench-"))
    root = Path(args.data_root) if args.data_root else tmp / "data"
    if not args.data_root:
        write_data(root, n_mnist=8192, n_jpeg=args.n_jpeg)
    extra = [e for e in args.extra.split(",") if e]
    rows = []
    for name in args.cases.split(","):
        model, data = CASES[name]
        overrides = [*model, *data, f"data.root={root}", f"trainer.device={args.device}",
                     f"trainer.precision={args.precision}", "metrics.enabled=false", *extra]
        cfg = compose(overrides)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)  # this case's peak, not the run's so far
        # the ceiling is timed before and after the loop and averaged, so drift of the machine cancels
        ceiling_before = measure_ceiling(cfg, device, args.seconds / 2)
        # the loop: enough steps for several log intervals (and, on a GPU, the defaults' grids every 500
        # and checkpoints every 1000 steps); on a CPU about the ceiling's timing window
        steps = int(args.loop_steps) if args.loop_steps else max(
            3 * cfg.log.every_n_steps, int(ceiling_before * args.seconds / cfg.data.batch_size))
        loop = measure_loop(overrides, tmp / "run", steps)
        ceiling = (ceiling_before + measure_ceiling(cfg, device, args.seconds / 2)) / 2
        baseline = measure_baseline(overrides, root, device, args.seconds)
        flops = measure_flops(overrides, device)
        peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        rows.append((name, cfg.data.batch_size, loop, ceiling, baseline, peak, flops))
        print(f"{name:16s} loop {loop:8.1f} img/s  ceiling {ceiling:8.1f}  baseline {baseline:8.1f}  "
              f"loop/ceiling {loop / ceiling:.2f}  loop/baseline {loop / baseline:.2f}  peak {peak:.0f} MiB  "
              f"{flops / 1e9:.3f} GFLOP/img  {loop * flops / args.peak:.1%} of peak", flush=True)
    folder = measure_folder_epochs(root, device) if "dcgan-celeba64" in args.cases else None
    table = render(rows, folder, device, args, sys.argv if argv is None else ["python -m gantrain.tools.bench", *argv])
    print(table)
    if args.write:
        write_section(Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md", table, device, args.tag)
    shutil.rmtree(tmp, ignore_errors=True)


def render(rows, folder, device, args, argv) -> str:
    dev = (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
           if device.type == "cuda" else f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})")
    mem = "peak CUDA MiB" if device.type == "cuda" else "peak RSS MiB"
    lines = [f"Device: {dev}; torch {torch.__version__}, Python {platform.python_version()}, "
             f"precision {args.precision}; {time.strftime('%Y-%m-%d')}.",
             f"Command: `{' '.join(['python -m gantrain.tools.bench', *argv[1:]])}`",
             f"Peak: {args.peak / 1e9:.0f} GFLOP/s, a {'8192' if device.type == 'cuda' else '2048'}² matrix product "
             f"in precision {args.precision}, timed at the start; model FLOPs counted by torch.utils.flop_counter "
             "(matrix products and convolutions of a D + G step, forward and backward; gantrain/tools/flops.py).", "",
             f"| case | batch | loop img/s | ceiling img/s | baseline img/s | loop/ceiling | loop/baseline | {mem} "
             "| GFLOP/img | loop GFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, b, loop, ceil, base, peak, flops in rows:
        lines.append(f"| {name} | {b} | {loop:.0f} | {ceil:.0f} | {base:.0f} | {loop / ceil:.2f} | "
                     f"{loop / base:.2f} | {peak:.0f} | {flops / 1e9:.3f} | {loop * flops / 1e9:.0f} | "
                     f"{loop * flops / args.peak:.1%} |")
    if folder:
        lines += ["", "CelebA-style JPEG folder (178x218 JPEGs -> 64x64), data path only, images/s:", "",
                  "| | first epoch | later epochs |", "|---|---|---|",
                  f"| gantrain (decode once into the cache, then memory) | {folder['first']:.0f} | {folder['later']:.0f} |",
                  f"| torchvision ImageFolder + DataLoader | {folder['imagefolder_first']:.0f} | "
                  f"{folder['imagefolder_later']:.0f} |"]
    return "\n".join(lines)


def write_section(path: Path, table: str, device: torch.device, name: str = "") -> None:
    tag = ("cuda" if device.type == "cuda" else "cpu") + (f"-{name}" if name else "")
    start, end = f"<!-- bench:{tag}:start -->", f"<!-- bench:{tag}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## Loop vs ceiling vs hand-written ({tag.upper()})\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
