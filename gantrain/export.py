"""``gantrain-export``: a checkpoint's generator as a file that runs without gantrain.

    gantrain-export CKPT -o G.onnx|G.pt2 [--uint8] [--truncation PSI] [--noise const|none]

``.onnx``: ONNX through ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter; it handles all three
models), checked with ``onnx.checker`` and run once in onnxruntime against PyTorch before it is kept.
``.pt2``: ``torch.export.save`` of the same program (load it with ``torch.export.load(path).module()``).

The file holds the EMA generator when the checkpoint has one (else G), in eval mode, in float32, on the CPU.
Input ``z``: float32 (batch, z_dim), any batch size; a class-conditional generator (model.conditional=true) also
takes ``class``: int64 (batch,), class indices 0..K-1 (the names are in the metadata's ``classes``). Output ``images``: float32 (batch, C, H, W) in [-1, 1], or
with ``--uint8`` uint8 (batch, H, W, C) ready to save (``curves`` (batch, L) for sine data). StyleGAN's truncation
psi and noise are export-time options, fixed in the graph: ``--truncation`` (default 1, none) and ``--noise const``
(the fixed noise maps gantrain-generate uses, so the file reproduces its images for the same z) or ``none``.
Metadata: ONNX ``metadata_props`` / the ``.pt2``'s extra file ``gantrain.json`` hold the gantrain version, the
checkpoint's config (JSON), its step, the generator used and the input/output layout.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gantrain import files
from gantrain.cli_util import run_cli
from gantrain.errors import UserError
from gantrain.models import sample
from gantrain.torch_utils import to_uint8

FORMATS = {".onnx": "onnx", ".pt2": "pt2"}
EXTRA = "pip install 'gantrain[export]'"
PT2_META = "gantrain.json"      # the .pt2 extra file with the metadata


class Exported(nn.Module):
    """z -> images exactly as gantrain-generate samples them, with the options fixed in the graph."""

    def __init__(self, G: nn.Module, psi: float | None, noise: str, uint8: bool):
        super().__init__()
        self.G, self.psi, self.noise, self.uint8 = G, psi, noise, uint8

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise == "const":
            x = sample(self.G, z, self.psi, c=c)
        else:
            x = self.G(z, *([] if c is None else [c]), psi=1.0 if self.psi is None else self.psi,
                       noise_mode=self.noise)
        if self.uint8:   # in the graph
            x = to_uint8(x).permute(0, 2, 3, 1)
        return x


def version() -> str:
    try:
        return importlib.metadata.version("gantrain")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def metadata(ckpt: dict[str, Any], used_ema: bool, G: nn.Module, args: argparse.Namespace,
             exporter: str) -> dict[str, str]:
    """What the file's metadata says: strings only (ONNX metadata_props are string pairs)."""
    classes = list(ckpt.get("class_names") or [])
    shape = [int(s) for s in ckpt["data_shape"]]
    if len(shape) == 1:
        output = f"curves float32 (batch, {shape[0]})"
    elif args.uint8:
        output = f"images uint8 (batch, {shape[1]}, {shape[2]}, {shape[0]}) NHWC in [0, 255]"
    else:
        output = f"images float32 (batch, {shape[0]}, {shape[1]}, {shape[2]}) NCHW in [-1, 1]"
    return {
        "gantrain_version": version(),
        "gantrain_config": json.dumps(ckpt["config"], sort_keys=True),
        "step": str(ckpt.get("step")),
        "generator": "G_ema" if used_ema else "G",
        "input": f"z float32 (batch, {G.z_dim}) ~ N(0, I)" + (", class int64 (batch,)" if classes else ""),
        "classes": json.dumps(classes),
        "output": output,
        "truncation_psi": "1.0" if args.truncation is None else str(args.truncation),
        "noise_mode": args.noise if getattr(G, "supports_truncation", False) else "n/a",
        "exporter": exporter,
    }


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs the optional packages {', '.join(missing)}, which are not installed: "
                        f"{EXTRA}.")


def _tmp(path: Path) -> Path:
    """A temp name beside ``path`` with the same suffix (torch.export.save insists on .pt2)."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def load_checkpoint(path: str) -> dict[str, Any]:
    """checkpoint.load, with one sentence for an exported file given in place of a checkpoint."""
    from gantrain import checkpoint

    if Path(path).suffix.lower() in FORMATS:
        raise UserError(f"{path} is an exported generator, not a gantrain checkpoint: give the training "
                        "checkpoint it came from, e.g. outputs/<date>/<time>/checkpoints/last.pt.")
    return checkpoint.load(path, map_location="cpu")


def _dynamic(inputs: tuple[torch.Tensor, ...]) -> dict[str, dict[int, Any]]:
    """One dynamic batch dimension shared by z (and the classes)."""
    batch = torch.export.Dim("batch", min=1)
    return {k: {0: batch} for k in ("z", "c")[:len(inputs)]}


def export_onnx(model: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path, meta: dict[str, str],
                name: str) -> dict[str, Any]:
    """Write ``out``; check it with onnx.checker; run it in onnxruntime on ``inputs`` against PyTorch."""
    _need("onnx", "onnxscript", "onnxruntime")
    import onnx
    import onnxruntime as ort

    names = ["z", "class"][:len(inputs)]
    program = torch.onnx.export(model, inputs, dynamo=True, input_names=names, output_names=[name],
                                dynamic_shapes=_dynamic(inputs), verbose=False)
    program.model.metadata_props.update(meta)
    with files.replacing(out, _tmp(out)) as tmp:
        program.save(tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in zip(names, inputs)})[0])
    opset = next(o.version for o in onnx.load(str(out), load_external_data=False).opset_import if o.domain == "")
    return {"format": f"ONNX opset {opset}", "diff": _diff(model(*inputs), got)}


def export_pt2(model: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path, meta: dict[str, str]) -> dict[str, Any]:
    """Write ``out`` with torch.export.save (metadata in the extra file gantrain.json); reload it and compare."""
    program = torch.export.export(model, inputs, dynamic_shapes=_dynamic(inputs))
    with files.replacing(out, _tmp(out)) as tmp:
        torch.export.save(program, tmp, extra_files={PT2_META: json.dumps(meta)})
        got = torch.export.load(tmp).module()(*inputs)
    return {"format": "torch.export program", "diff": _diff(model(*inputs), got)}


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gantrain-export", description=__doc__.split("\n\n")[0].strip(),
                                epilog=f"ONNX needs the optional packages onnx, onnxscript and onnxruntime: {EXTRA}.")
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint, e.g. outputs/<date>/<time>/checkpoints/last.pt")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="G.onnx (ONNX) or G.pt2 (torch.export)")
    p.add_argument("--uint8", action="store_true", help="output uint8 (batch, H, W, C) instead of float32 NCHW")
    p.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="StyleGAN only: truncation psi fixed in the file (default 1, none)")
    p.add_argument("--noise", choices=("const", "none"), default="const",
                   help="StyleGAN only: the fixed noise maps (const, as gantrain-generate) or no noise (none)")
    return p.parse_args(argv)


def export(args: argparse.Namespace) -> str:
    from gantrain.models.loading import load_generator
    from gantrain.writers import check_output

    out = Path(args.out).expanduser()
    kind = FORMATS.get(out.suffix.lower())
    if kind is None:
        raise UserError(f"-o {args.out}: the extension {out.suffix or '(none)'} is not one gantrain-export writes; "
                        "use .onnx (ONNX, e.g. for onnxruntime) or .pt2 (torch.export).")
    if kind == "onnx":
        _need("onnx", "onnxscript", "onnxruntime")
    if args.truncation is not None and not math.isfinite(args.truncation):
        raise UserError(f"--truncation {args.truncation} is not a number: use e.g. --truncation 0.7.")
    ckpt = load_checkpoint(args.ckpt)
    G, used_ema = load_generator(ckpt, torch.device("cpu"))
    style = getattr(G, "supports_truncation", False)
    if not style and (args.truncation is not None or args.noise != "const"):
        raise UserError(f"--truncation and --noise apply only to StyleGAN; this checkpoint's model "
                        f"({type(G).__module__.rsplit('.', 1)[-1]}) has neither: leave them out.")
    curves = len(ckpt["data_shape"]) == 1
    if curves and args.uint8:
        raise UserError("--uint8 makes images, but this checkpoint generates 1-D curves (sine data): leave it out.")
    check_output(kind, out, args.out)

    model = Exported(G, args.truncation, args.noise, args.uint8).eval()
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0))
    classes = list(ckpt.get("class_names") or [])
    inputs = (z, torch.arange(3) % len(classes)) if classes else (z,)  # G(z, c) for a conditional G
    name = "curves" if curves else "images"
    with torch.no_grad():
        if kind == "onnx":
            info = export_onnx(model, inputs, out,
                               metadata(ckpt, used_ema, G, args, "torch.onnx.export(dynamo=True)"), name)
        else:
            info = export_pt2(model, inputs, out, metadata(ckpt, used_ema, G, args, "torch.export.export"))
    which = "EMA generator" if used_ema else "generator"
    return (f"wrote {out} ({info['format']}, {out.stat().st_size / 2**20:.2f} MiB, {which} at step "
            f"{ckpt.get('step')}): input z float32 (batch, {G.z_dim})"
            f"{f' and class int64 (batch,) of {len(classes)} classes' if classes else ''}, output {name}; reloaded, it matches "
            f"PyTorch to {info['diff']:.1e}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_cli("gantrain-export", lambda: print(export(args)), out=args.out)


if __name__ == "__main__":
    main()
