"""``gantrain-eval``: the training-time sample-quality metrics for any checkpoint.

    gantrain-eval CKPT [--metrics fid,kid] [-n N] [--json OUT] [--device D] [--data-root PATH] [--cache-dir DIR]

The checkpoint carries its config: the data set is rebuilt from it (``--data-root`` when the data moved),
the generator too (the EMA one when present), and the metrics default to the run's ``metrics`` settings.
With the same ``-n`` as the run's ``metrics.num_samples`` the values equal the run's last ``Metrics/*``
scalars (the same fixed latents). Prints a table; ``--json OUT`` also writes the values as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from gantrain import checkpoint
from gantrain.cli_util import run_cli
from gantrain.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gantrain-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.replace("``", "").split("\n\n", 1)[0],  # plain text
                                epilog=__doc__.replace("``", "").split("\n\n", 2)[2])
    p.add_argument("checkpoint", help="a checkpoint written by gantrain "
                                      "(e.g. outputs/<date>/<time>_<model>_<data>/checkpoints/last.pt)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metric names (default: the run's metrics.names or the data set's defaults); "
                        "known: sine_residual, sine_amp_ks, sine_phase_ks, sine_ks, classifier_fd, class_coverage, "
                        "fid, kid, rand_fd, rand_kid, precision, recall, density, coverage, is")
    p.add_argument("--prdc", action="store_true",
                   help="also precision, recall, density and coverage (in --prdc-features' space)")
    p.add_argument("--prdc-features", default=None, help="auto, curve, classifier, inception or randcnn "
                   "(default: the run's metrics.prdc_features)")
    p.add_argument("-n", "--num-samples", type=int, default=None, help="generated samples (default: the run's)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:K")
    p.add_argument("--data-root", default=None, help="where the data set is now (default: the run's data.root)")
    p.add_argument("--cache-dir", default=None, help="metrics cache (default: the run's, else ~/.cache/gantrain/metrics)")
    p.add_argument("--protocol", action="store_true",
                   help="also print what the numbers mean: feature extractor, resizing, sample counts")
    p.add_argument("--required", action="store_true", help="fail when a metric (FID/KID) cannot be computed")
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from gantrain.config import DataConfig, MetricsConfig
    from gantrain.data import build_dataset
    from gantrain.metrics import HIGHER_IS_BETTER, build_evaluator
    from gantrain.models.loading import load_generator
    from gantrain.protocol import describe
    from gantrain.runtime import select_device

    if args.num_samples is not None and args.num_samples < 2:
        raise UserError(f"-n {args.num_samples} is too few: the metrics need at least 2 samples.")
    device = select_device(args.device)
    path = Path(args.checkpoint).expanduser()
    ckpt = checkpoint.load(path, map_location="cpu")  # missing, a folder, damaged: one sentence each
    config = ckpt.get("config") or {}
    try:
        cfg_data = OmegaConf.merge(OmegaConf.structured(DataConfig), config["data"])
    except Exception as e:  # noqa: BLE001 - any malformed config is the same user-facing problem
        raise UserError(f"the checkpoint's data config is missing or malformed ({e}).") from None
    if args.data_root:
        cfg_data.root = args.data_root
    saved_metrics = {k: v for k, v in (config.get("metrics") or {}).items() if k in MetricsConfig.__dataclass_fields__}
    mcfg = OmegaConf.merge(OmegaConf.structured(MetricsConfig), saved_metrics)
    mcfg.enabled = True
    if args.metrics:
        mcfg.names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if mcfg.primary not in mcfg.names:
            mcfg.primary = None
    if args.prdc:
        mcfg.prdc = True
    if args.prdc_features:
        mcfg.prdc_features = args.prdc_features
    if args.num_samples:
        mcfg.num_samples = args.num_samples
    if args.cache_dir:
        mcfg.cache_dir = args.cache_dir
    mcfg.required = bool(args.required or mcfg.required)

    G, is_ema = load_generator(ckpt, device)  # checks the config and data_shape it needs
    shape = tuple(int(s) for s in ckpt["data_shape"])
    data = build_dataset(cfg_data, device=device, seed=0, resolution=shape[-1] if len(shape) == 3 else None,
                         progress=True, labels=bool(ckpt.get("class_names")))  # conditional: class_accuracy
    try:
        if tuple(data.shape) != shape:
            raise UserError(f"the data set now has shape {tuple(data.shape)} but the checkpoint was trained on "
                            f"{shape}: point --data-root at the run's data.")
        evaluator = build_evaluator(mcfg, data, cfg_data, device, schedule=False)  # not a training run's line
        scores = evaluator.evaluate(G)
        protocol = describe(evaluator, data, "EMA" if is_ema else "raw (no EMA in the checkpoint)")
    finally:
        data.close()
    return {
        "checkpoint": str(path), "step": int(ckpt.get("step", 0)), "model": ckpt.get("model"),
        "data": ckpt.get("data"), "generator": "ema" if is_ema else "G", "num_samples": evaluator.num_samples,
        "primary": evaluator.primary, "metrics": scores,
        "higher_is_better": sorted(n for n in scores if n in HIGHER_IS_BETTER), "protocol": protocol,
    }


def table(result: dict[str, Any]) -> str:
    rows = [(name, f"{value:.6g}", "higher" if name in result["higher_is_better"] else "lower",
             "*" if name == result["primary"] else "") for name, value in result["metrics"].items()]
    head = ("metric", "value", "better", "primary")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    title = (f"{result['checkpoint']}: step {result['step']}, {result['model']} on {result['data']}, "
             f"{result['generator']} generator, {result['num_samples']} samples")
    return "\n".join([title, line(head), line(tuple("-" * w for w in widths)), *map(line, rows)])


def write_json(result: dict[str, Any], out: str) -> None:
    text = (json.dumps(result, indent=2) + "\n").encode()
    checkpoint.write_atomically(Path(out).expanduser(), lambda f: f.write(text), lambda: len(text))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def work() -> None:
        result = evaluate(args)
        print(table(result))
        if args.protocol:
            print("protocol:\n" + "\n".join(f"  {line}" for line in result["protocol"]))
        if args.json:
            write_json(result, args.json)

    run_cli("gantrain-eval", work)


if __name__ == "__main__":
    main()
