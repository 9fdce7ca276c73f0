"""``python -m gantrain.quality.methods``: the losses researchers compare, on the quality benchmark's data.

    python -m gantrain.quality.methods --cases sine,digits1500-gan --seeds 0,1,2 --steps 1000 --write

For each case of gantrain.quality (same data, batch and scorer) and each seed, three methods train through
``gantrain.training.loop.train`` with the same number of G steps:

* ``bce``: the case's default (non-saturating BCE, the model's default D and optimiser);
* ``hinge+SN``: spectral normalisation in D (no BatchNorm, no dropout), hinge loss, TTUR (``optim=ttur``);
* ``wgan_gp``: the Wasserstein loss with the gradient penalty (lambda 10), 5 critic steps per G step
  (``trainer.d_steps=5``: five times the D work), ``optim=wgan_gp``, no BatchNorm/dropout in the critic.

Scored by gantrain.quality.score with ``metrics.prdc=true``: the primary metric (↓) and precision, recall,
density, coverage (↑; Kynkaanniemi et al. 2019, Naeem et al. 2020, k=3) in the scorer's feature space (the raw
curves for sine, the held-out digit classifier's features for digits). ``--write`` puts the table into
docs/QUALITY.md between the ``quality:methods-h16`` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from gantrain.metrics import PRDC_NAMES
from gantrain.quality import data as qdata
from gantrain.quality.__main__ import CASES, data_overrides, fmt, run_gantrain, write_section

TAG = "methods-h16"


def methods(model: str) -> dict[str, list[str]]:
    no_drop = ["model.discriminator.dropout=0"] if model == "gan" else []
    no_bn = ["model.discriminator.batch_norm=false"] if model == "dcgan" else []
    return {
        "bce": [],
        "hinge+SN": ["loss=hinge", "optim=ttur", "model.discriminator.spectral_norm=true", *no_drop],
        "wgan_gp": ["loss=wgan_gp", "optim=wgan_gp", "trainer.d_steps=5", *no_drop, *no_bn],
    }


def render(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`; torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), a 2-core "
             "machine shared with other jobs (train s is wall time under that load). Mean ± standard deviation "
             "over seeds; the EMA generator where the model has one.", ""]
    for name in dict.fromkeys(r["case"] for r in results):
        rows = [r for r in results if r["case"] == name]
        primary = rows[0]["primary"]
        case = CASES[name]
        cols = [primary, *PRDC_NAMES]
        lines += [f"**{name}** (model={case.model}, {rows[0]['steps']} G steps × batch {case.batch})", "",
                  "| method | seeds | ↓ " + primary + " | " + " | ".join(f"↑ {m}" for m in PRDC_NAMES) + " | train s |",
                  "|---" * (len(cols) + 3) + "|"]
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
            cells = [fmt([r["scores"][m] for r in sel]) for m in cols]
            secs = fmt([r["seconds"] for r in sel]).split(" ")[0]
            lines.append(f"| {method} | {','.join(str(r['seed']) for r in sel)} | " + " | ".join(cells) + f" | {secs} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> None:
    from gantrain.quality.score import Scorer

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m gantrain.quality.methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="sine,digits1500-gan")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None, help="G steps of every run (default: the case's)")
    p.add_argument("--methods", default="bce,hinge+SN,wgan_gp")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="append each result as a JSON line to this file")
    p.add_argument("--collect", nargs="*", default=None, help="render from these JSON-lines files only")
    p.add_argument("--write", action="store_true", help=f"write the table into docs/QUALITY.md ({TAG})")
    p.add_argument("--command", default=None, help="the command to state in the table (with --collect)")
    p.add_argument("--doc", default=str(Path(__file__).resolve().parents[2] / "docs" / "QUALITY.md"))
    args = p.parse_args(argv)
    command = args.command or " ".join(["python -m gantrain.quality.methods", *argv])
    results: list[dict] = []
    if args.collect is not None:
        for f in args.collect:
            results += [json.loads(line) for line in Path(f).read_text().splitlines() if line.strip()]
    else:
        root = qdata.data_root(args.data_root)
        for name in args.cases.split(","):
            case = CASES[name]
            steps = args.steps or case.steps
            train_ovr, score_ovr, _ = data_overrides(case, root)
            scorer = Scorer([*score_ovr, "metrics.prdc=true", f"trainer.device={args.device}"],
                            torch.device(args.device), {"train_overrides": train_ovr})
            for seed in [int(s) for s in args.seeds.split(",")]:
                for method, overrides in methods(case.model).items():
                    if method not in args.methods.split(","):
                        continue
                    _, scores, seconds = run_gantrain(case, train_ovr, overrides, seed, steps, args.device, scorer)[0]
                    r = {"case": name, "method": method, "seed": seed, "steps": steps, "primary": scorer.primary,
                         "scores": scores, "seconds": seconds}
                    results.append(r)
                    print(json.dumps(r), flush=True, file=sys.stderr)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(r) + "\n")
    table = render(results, command)
    print(table)
    if args.write:
        write_section(Path(args.doc), table, TAG)


if __name__ == "__main__":
    main()
