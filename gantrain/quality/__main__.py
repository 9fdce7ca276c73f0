"""``python -m gantrain.quality``: gantrain's default training against the textbook loops, same data and budget.

    python -m gantrain.quality                                  # every case, 3 seeds
    python -m gantrain.quality --cases sine --seeds 0,1,2 --write
    python -m gantrain.quality --cases digits1500-dcgan --seeds 0 --steps 500 --no-textbook \\
        --variant "ema=model.ema_kimg=1" --variant "ttur=optim=ttur"     # an ablation screen
    python -m gantrain.quality --collect a.jsonl b.jsonl --write       # tables from saved results

Each case trains gantrain's default configuration through ``gantrain.training.loop.train`` on a config composed by
``gantrain.cli.compose`` (what ``gantrain OVERRIDES`` runs), and the textbook loop of gantrain.quality.textbook
on the same data, steps and batch, for every seed; both are scored by gantrain.quality.score. The tables
(mean ± standard deviation over seeds) go to stdout and, with ``--write``, into docs/QUALITY.md between the
``quality:<tag>`` markers.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gantrain.quality import data as qdata
from gantrain.quality import textbook


@dataclass
class Case:
    model: str                 # gantrain model group, and which textbook loop (gan: MLP GAN, dcgan: DCGAN)
    data: str                  # sine | digits-1500 | digits-20000 | shapes
    steps: int
    batch: int
    metrics: list[str] = field(default_factory=list)


DIGIT_METRICS = ["classifier_fd", "class_coverage", "confidence"]
CASES = {
    "sine": Case("gan", "sine", 2000, 128, ["sine_ks", "sine_amp_ks", "sine_phase_ks", "residual_ratio"]),
    "digits1500-dcgan": Case("dcgan", "digits-1500", 1500, 64, DIGIT_METRICS),
    "digits1500-gan": Case("gan", "digits-1500", 1500, 64, DIGIT_METRICS),
    "digits20000-dcgan": Case("dcgan", "digits-20000", 1500, 64, DIGIT_METRICS),
    "digits20000-gan": Case("gan", "digits-20000", 1500, 64, DIGIT_METRICS),
    "shapes-dcgan": Case("dcgan", "shapes", 600, 64, ["rand_fd", "rand_kid"]),
}
SIZES = {"digits-1500": 1500, "digits-20000": 20000}


def data_overrides(case: Case, root: Path) -> tuple[list[str], list[str], str]:
    """(gantrain's data overrides for training, the scorer's overrides, the textbook's dataset root),
    building the data sets when missing."""
    cache = [f"metrics.cache_dir={root / 'metrics'}"]
    if case.data == "sine":
        return ["data=sine"], ["data=sine", *cache], ""
    if case.data.startswith("digits"):
        train = qdata.digits(root, case.data, SIZES[case.data])
        held = qdata.digits(root, "digits-heldout", 10000, n_test=2000)
        return (["data=mnist", f"data.root={train}"],
                ["data=mnist", f"data.root={held}", "metrics.num_samples=2048", "metrics.classifier_steps=1000",
                 *cache], str(train))
    train = qdata.shapes(root, "shapes", 5000, seed=11)
    held = qdata.shapes(root, "shapes-heldout", 2048, seed=12)
    common = ["data.resolution=32", "data.channels=3", f"data.cache_dir={root / 'decoded'}"]
    return (["data=folder", f"data.root={train}", *common],
            ["data=folder", f"data.root={held}", *common, "metrics.names=[rand_fd,rand_kid]",
             "metrics.num_samples=2048", *cache], str(train))


def plot(G, scorer, path: Path) -> None:
    """The sample figure gantrain logs (curves over real ones, or an image grid), as a PNG."""
    from torchvision.utils import save_image

    from gantrain.summaries import curves_figure, image_grid

    fake = scorer.evaluator.generate(G, 64).cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    if scorer.data.kind == "curve":
        curves_figure(fake, scorer.data.real_samples(16), scorer.data.x).savefig(path)
    else:
        save_image(image_grid(fake, nrow=8), path)


def run_gantrain(case: Case, data_ovr: list[str], variant: list[str], seed: int, steps: int, device: str,
                 scorer, plot_to: Path | None = None) -> list[tuple[str, dict, float]]:
    """Train with gantrain's train(); score the sampled generator (the EMA when there is one) and, when there
    is an EMA, also the raw G. Returns [(suffix, scores, seconds)]."""
    from gantrain.checkpoint import load
    from gantrain.cli import compose
    from gantrain.models import recompute_batchnorm
    from gantrain.models.loading import load_generator
    from gantrain.training.loop import train

    cfg = compose([f"model={case.model}", *data_ovr, f"data.batch_size={case.batch}", f"trainer.max_steps={steps}",
                   f"trainer.device={device}", f"seed={seed}", "metrics.enabled=false", "log.progress_bar=false",
                   "log.sample_every_n_steps=1000000", "ckpt.every_n_steps=1000000", *variant])
    out = Path(tempfile.mkdtemp(prefix="gantrain-quality-"))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        train(cfg, out)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        ckpt = load(out / "checkpoints" / "last.pt")
        G, is_ema = load_generator(ckpt, torch.device(device))
        rows = [("", {**scorer.score(G), "cpu_s": cpu}, seconds)]
        if plot_to is not None:
            plot(G, scorer, plot_to)
        if is_ema:
            raw, _ = load_generator({**ckpt, "G_ema": None}, torch.device(device))
            rows.append((" (raw G)", scorer.score(raw), seconds))
            if recompute_batchnorm(G):  # the EMA with BatchNorm statistics of its own, not copied from G
                rows.append((" (EMA, BN recomputed)", scorer.score(G), seconds))
        return rows
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_textbook(case: Case, root: str, seed: int, steps: int, scorer) -> tuple[dict, float]:
    curves = None
    if case.data == "sine":
        curves = scorer.data.real_samples(scorer.data.total).cpu()  # the training set itself, every curve
    kind = "curve" if case.data == "sine" else ("mnist" if case.data.startswith("digits") else "folder")
    loader = textbook.loader_for(kind, root, case.batch, seed, curves)
    shape = tuple(curves.shape[1:]) if curves is not None else tuple(next(iter(loader))[0].shape[1:])
    loop = textbook.mlp_gan if case.model == "gan" else textbook.dcgan
    t0, c0 = time.perf_counter(), time.process_time()
    G = loop(loader, shape, steps, seed)
    cpu = time.process_time() - c0
    return {**scorer.score(G), "cpu_s": cpu}, time.perf_counter() - t0


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


HIGHER = ("class_coverage", "confidence", "class_accuracy")


def render(results: list[dict], command: str) -> str:
    what = "Assembled from saved results" if " --collect" in command else "Command"
    lines = [f"{what}: `{command}`; {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
             f"CPU, {torch.get_num_threads()} thread(s). Mean ± standard deviation over seeds; ↓ lower is better.", ""]
    for name in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == name]
        case = CASES[name]
        metrics = case.metrics + (["class_accuracy"] if any("class_accuracy" in r["scores"] for r in rows) else [])
        lines += [f"**{name}** (model={case.model}, {rows[0]['steps']} steps × {case.batch})", "",
                  "| loop | seeds | " + " | ".join(("↑ " if m in HIGHER else "↓ ") + m for m in metrics)
                  + " | train s (CPU s) |", "|---" * (len(metrics) + 3) + "|"]
        for loop in dict.fromkeys(r["loop"] for r in rows):
            sel = [r for r in rows if r["loop"] == loop]
            seeds = ",".join(str(r["seed"]) for r in sel) if sel[0]["seed"] is not None else "-"
            cells = [fmt([r["scores"][m] for r in sel if m in r["scores"]]) for m in metrics]
            secs = fmt([r["seconds"] for r in sel if r["seconds"] is not None]).split(" ")[0]
            cpu = [r["scores"]["cpu_s"] for r in sel if "cpu_s" in r["scores"]]
            if secs != "-":
                secs = f"{float(secs):.0f}" + (f" ({statistics.fmean(cpu):.0f})" if cpu else "")
            lines.append(f"| {loop} | {seeds} | " + " | ".join(cells) + f" | {secs} |")
        acc = [r["scores"]["classifier_accuracy"] for r in rows if "classifier_accuracy" in r["scores"]]
        if acc:
            lines += ["", f"Scoring classifier (trained on the held-out digits): test accuracy {acc[0]:.3f}."]
        lines.append("")
    return "\n".join(lines).rstrip()


def write_section(path: Path, table: str, tag: str) -> None:
    start, end = f"<!-- quality:{tag}:start -->", f"<!-- quality:{tag}:end -->"
    text = path.read_text() if path.exists() else "# Quality\n"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {tag}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition(":")
    return f"gantrain {name}", overrides.split()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m gantrain.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="override every case's steps (screening)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help=f"where the generated sets are cached ({qdata.DEFAULT_ROOT})")
    p.add_argument("--variant", action="append", default=[],
                   help='extra gantrain rows, "NAME:OVERRIDE OVERRIDE ..." (an ablation)')
    p.add_argument("--no-default", action="store_true", help="skip the gantrain default row")
    p.add_argument("--no-textbook", action="store_true", help="skip the textbook loop")
    p.add_argument("--no-reference", action="store_true", help="skip the real-data reference row")
    p.add_argument("--plot", default=None, help="write each gantrain run's samples as PNGs into this folder")
    p.add_argument("--json", default=None, help="append each result as a JSON line to this file")
    p.add_argument("--collect", nargs="*", default=None, help="render tables from these JSON-lines files only")
    p.add_argument("--write", action="store_true", help="write the tables into docs/QUALITY.md")
    p.add_argument("--tag", default="gantrain-vs-textbook", help="the docs/QUALITY.md section to (re)write")
    p.add_argument("--doc", default=str(Path(__file__).resolve().parents[2] / "docs" / "QUALITY.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    command = " ".join(["python -m gantrain.quality", *argv])
    results: list[dict] = []
    if args.collect is not None:
        for f in args.collect:
            results += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
    else:
        results = run_cases(args)
    table = render(results, command)
    print(table)
    if args.write:
        write_section(Path(args.doc), table, args.tag)


def run_cases(args) -> list[dict]:
    from gantrain.quality.score import Scorer

    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case {unknown[0]}: choose from {', '.join(CASES)}.")
    root = qdata.data_root(args.data_root)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = ([] if args.no_default else [("gantrain", [])]) + [parse_variant(v) for v in args.variant]
    results: list[dict] = []

    def record(case_name, loop, seed, steps, scores, seconds):
        r = {"case": case_name, "loop": loop, "seed": seed, "steps": steps, "scores": scores, "seconds": seconds}
        results.append(r)
        print(json.dumps(r), flush=True, file=sys.stderr)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")

    for name in args.cases.split(","):
        case = CASES[name]
        steps = args.steps or case.steps
        train_ovr, score_ovr, tb_root = data_overrides(case, root)
        scorer = Scorer([*score_ovr, f"trainer.device={args.device}"], torch.device(args.device),
                        {"train_overrides": train_ovr})
        if not args.no_reference:
            record(name, "real data (reference)", None, steps, scorer.reference(), None)
        for seed in seeds:
            for loop, variant in variants:
                png = Path(args.plot) / f"{name}-{loop.replace(' ', '_')}-s{seed}.png" if args.plot else None
                for suffix, scores, seconds in run_gantrain(case, train_ovr, variant, seed, steps, args.device,
                                                            scorer, png):
                    record(name, loop + suffix, seed, steps, scores, seconds)
            if not args.no_textbook:
                scores, seconds = run_textbook(case, tb_root, seed, steps, scorer)
                record(name, "textbook", seed, steps, scores, seconds)
    return results


if __name__ == "__main__":
    main()
