"""Small-data benchmark: augmentation (augment=none|ada|diffaug) and fine-tuning (init_from=) on few digits.

    python -m gantrain.quality.smalldata augment  [--seeds 0,1,2] [--steps 2000] [--json F] [--write]
    python -m gantrain.quality.smalldata finetune [--seeds 0,1,2] [--json F] [--write]
    python -m gantrain.quality.smalldata collect F... [--write]

Data: rendered digits of gantrain/quality/data.py written as MNIST IDX (``digits-500``: 500 training images;
``digits-100``: 100, another draw of the same family; ``digits-20000`` the large set), scored with the quality
benchmark's scorer (gantrain's classifier_fd against the held-out digits; lower is better).

- augment: DCGAN, the same steps, batch and seeds for every variant; the table gives classifier_fd and the
  final D/rt (E[sign D(real)] over the last quarter of the logs) and Aug/p.
- finetune: a DCGAN trained on digits-20000 (``--pre-steps``) is fine-tuned on digits-100 with
  ``init_from=`` (+ ``model.freeze_d``) and compared with training on digits-100 from scratch; both are
  scored at the checkpoints of ``--at``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from gantrain.quality import data as qdata
from gantrain.quality.__main__ import fmt, write_section

SMALL_SEEDS = {"digits-500": 4, "digits-100": 5}  # any other digits-N (--images N) is drawn with seed 4
DCGAN = ["model=dcgan", "model.generator.base_channels=16", "model.discriminator.base_channels=16"]  # CPU-sized
VARIANTS = {
    "none": ["augment=none"],
    "ada": ["augment=ada", "augment.ada_kimg=25"],   # p can go 0 -> 1 in 25k images (the paper: 500k)
    "diffaug": ["augment=diffaug"],
    # translation stops this small DCGAN from learning at all (docs/QUALITY.md, "Small data sets"): without it
    "diffaug-cutout": ["augment=diffaug", "augment.policy=[cutout]"],
    "ada-nogeom": ["augment=ada", "augment.ada_kimg=25", "augment.ops=[brightness,contrast,cutout]"],
}


def small_digits(root: Path, name: str) -> Path:
    n = int(name.split("-")[1])

    def write(tmp: Path) -> None:
        images, labels = qdata.render_digits(n + 100, SMALL_SEEDS.get(name, 4))
        raw = tmp / "MNIST" / "raw"
        qdata.write_idx(raw, "train", images[:n], labels[:n])
        qdata.write_idx(raw, "t10k", images[n:], labels[n:])
    return qdata._build(root / f"v{qdata.VERSION}" / name, write)


def scorer(root: Path, device: str):
    from gantrain.quality.score import Scorer

    held = qdata.digits(root, "digits-heldout", 10000, n_test=2000)
    return Scorer(["data=mnist", f"data.root={held}", "metrics.num_samples=2048", "metrics.classifier_steps=1000",
                   f"metrics.cache_dir={root / 'metrics'}", f"trainer.device={device}"], torch.device(device))


def scalars(run_dir: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def train_run(overrides: list[str], out: Path) -> float:
    from gantrain.cli import compose
    from gantrain.training.loop import train

    cfg = compose([*DCGAN, "data.batch_size=64", "trainer.device=cpu", "metrics.enabled=false",
                   "log.progress_bar=false", "log.sample_every_n_steps=1000000", *overrides])
    t0 = time.perf_counter()
    train(cfg, out)
    return time.perf_counter() - t0


def score_ckpt(sc, path: Path) -> float:
    from gantrain.checkpoint import load
    from gantrain.models.loading import load_generator

    G, _ = load_generator(load(path), torch.device("cpu"))
    return sc.score(G)["classifier_fd"]


def tail_mean(values: list[float]) -> float | None:
    tail = values[-max(1, len(values) // 4):]
    return sum(tail) / len(tail) if tail else None


def run_augment(args, root: Path, record) -> None:
    sc = scorer(root, "cpu")
    data = ["data=mnist", f"data.root={small_digits(root, f'digits-{args.images}')}"]
    for seed in args.seeds:
        for name in args.variants:
            out = Path(tempfile.mkdtemp(prefix="gantrain-small-"))
            try:
                secs = train_run([*data, f"seed={seed}", f"trainer.max_steps={args.steps}",
                                  "ckpt.every_n_steps=1000000", *VARIANTS[name]], out)
                record({"bench": "augment", "variant": name, "seed": seed, "steps": args.steps, "images": args.images,
                        "classifier_fd": score_ckpt(sc, out / "checkpoints" / "last.pt"),
                        "rt": tail_mean(scalars(out, "D/rt")), "p": tail_mean(scalars(out, "Aug/p")),
                        "rt_curve": scalars(out, "D/rt")[::4], "p_curve": scalars(out, "Aug/p")[::4], "seconds": secs})
            finally:
                shutil.rmtree(out, ignore_errors=True)


def run_finetune(args, root: Path, record) -> None:
    sc = scorer(root, "cpu")
    large = ["data=mnist", f"data.root={qdata.digits(root, 'digits-20000', 20000)}"]
    small = ["data=mnist", f"data.root={small_digits(root, 'digits-100')}"]
    keep = [f"ckpt.every_n_steps={min(args.at)}", "ckpt.keep=1000"]
    pre = root / "pretrained" / f"dcgan16-{args.pre_steps}"
    if not (pre / "checkpoints" / "last.pt").is_file():
        train_run([*large, "seed=100", f"trainer.max_steps={args.pre_steps}", "ckpt.every_n_steps=1000000"], pre)
    record({"bench": "finetune", "variant": "pretrained (digits-20000)", "seed": 100, "step": args.pre_steps,
            "classifier_fd": score_ckpt(sc, pre / "checkpoints" / "last.pt")})
    runs = {"scratch": [], "init_from": [f"init_from={pre / 'checkpoints' / 'last.pt'}"],
            "init_from + freeze_d=1": [f"init_from={pre / 'checkpoints' / 'last.pt'}", "model.freeze_d=1"]}
    for seed in args.seeds:
        for name, extra in runs.items():
            if args.runs and name not in args.runs:
                continue
            steps = max(args.at) if name == "scratch" else min(args.at[-1], args.ft_steps)
            out = Path(tempfile.mkdtemp(prefix="gantrain-ft-"))
            try:
                train_run([*small, f"seed={seed}", f"trainer.max_steps={steps}", *keep, *extra], out)
                for step in [s for s in args.at if s <= steps]:
                    record({"bench": "finetune", "variant": name, "seed": seed, "step": step,
                            "classifier_fd": score_ckpt(sc, out / "checkpoints" / f"step_{step:07d}.pt")})
            finally:
                shutil.rmtree(out, ignore_errors=True)


def render(results: list[dict], command: str) -> str:
    # one row per (run, seed, step, set, length): a run split over processes scores the shared pretrained model
    # more than once
    results = list({(r["bench"], r["variant"], r["seed"], r.get("step"), r.get("images", 500), r.get("steps")): r
                    for r in results}.values())
    lines = [f"Command: `{command}`; {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, CPU, 1 thread. "
             "DCGAN with base_channels=16, batch 64; classifier_fd against held-out digits (↓ lower is better); "
             "mean ± standard deviation over seeds.", ""]
    aug = [r for r in results if r["bench"] == "augment"]
    for images, steps in dict.fromkeys((r.get("images", 500), r["steps"]) for r in aug):
        sel_all = [r for r in aug if (r.get("images", 500), r["steps"]) == (images, steps)]
        lines += [f"**Augmentation** on digits-{images} ({images} images), {steps} steps", "",
                  "| augment | seeds | ↓ classifier_fd | vs none | D/rt (last quarter) | Aug/p (last quarter) |",
                  "|---|---|---|---|---|---|"]
        base = [r["classifier_fd"] for r in sel_all if r["variant"] == "none"]
        for name in dict.fromkeys(r["variant"] for r in sel_all):
            sel = [r for r in sel_all if r["variant"] == name]
            fd = [r["classifier_fd"] for r in sel]
            rel = f"{(sum(fd) / len(fd)) / (sum(base) / len(base)) * 100 - 100:+.0f} %" if base else "-"
            p = [r["p"] for r in sel if r["p"] is not None]
            lines.append(f"| {name} {' '.join(VARIANTS.get(name, [])[1:])} | {','.join(str(r['seed']) for r in sel)} "
                         f"| {fmt(fd)} | {rel} | {fmt([r['rt'] for r in sel])} | {fmt(p)} |")
        lines.append("")
    ft = [r for r in results if r["bench"] == "finetune"]
    if ft:
        steps = sorted({r["step"] for r in ft if not r["variant"].startswith("pretrained")})
        lines += ["**Fine-tuning** on digits-100 (100 images, another draw of the family) from a DCGAN trained on "
                  "digits-20000; classifier_fd at each step", "",
                  "| run | " + " | ".join(f"step {s}" for s in steps) + " |", "|---" * (len(steps) + 1) + "|"]
        for name in dict.fromkeys(r["variant"] for r in ft):
            sel = [r for r in ft if r["variant"] == name]
            if name.startswith("pretrained"):
                lines.append(f"| {name}, {sel[0]['step']} steps | {fmt([r['classifier_fd'] for r in sel])} |"
                             + " |" * (len(steps) - 1))
                continue
            cells = [fmt([r["classifier_fd"] for r in sel if r["step"] == s]) for s in steps]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m gantrain.quality.smalldata", description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=["augment", "finetune", "collect"])
    p.add_argument("files", nargs="*", help="collect: JSON-lines files to render")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--images", type=int, default=500, help="augment: training images (digits-N)")
    p.add_argument("--pre-steps", type=int, default=1500)
    p.add_argument("--ft-steps", type=int, default=300)
    p.add_argument("--at", default="100,300,600,1000,1500", help="finetune: steps scored")
    p.add_argument("--runs", default="", help="finetune: only these runs (scratch, init_from, ...), comma-separated")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="append each result as a JSON line to this file")
    p.add_argument("--write", action="store_true", help="write the table into docs/QUALITY.md")
    p.add_argument("--doc", default=str(Path(__file__).resolve().parents[2] / "docs" / "QUALITY.md"))
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    args.runs = [r for r in args.runs.split(",") if r]
    args.at = sorted(int(s) for s in args.at.split(","))
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    results: list[dict] = []

    def record(r: dict) -> None:
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("_curve")}), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")

    root = qdata.data_root(args.data_root)
    if args.bench == "collect":
        for f in args.files:
            results += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
    elif args.bench == "augment":
        run_augment(args, root, record)
    else:
        run_finetune(args, root, record)
    table = render(results, " ".join(["python -m gantrain.quality.smalldata", *argv]))
    print(table)
    if args.write:
        write_section(Path(args.doc), table, "small-data")


if __name__ == "__main__":
    main()
