"""Where does the training loop wait for the device?  Step by step, in a short real run.

    python -m gantrain.tools.syncs [--trace FILE.json] [gantrain overrides ...]
    e.g.  python -m gantrain.tools.syncs --trace /tmp/dcgan.json model=dcgan data=mnist trainer.device=cuda

The loop promises that its training step (D step(s), G step, generator EMA, loss accumulators) never makes
the host wait for the device, and that values are read back only in the periodic part of a step (logs,
sample grids, checkpoints, metrics). This runs ``train()`` for three log intervals (unless
``trainer.max_steps`` is given) and records every read of a tensor's value by the host, with the line
that asked for it:

- ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")`` of a device tensor, ``bool(t)`` (``if t:``),
  ``float(t)``/``int(t)``, printing a tensor, ``nonzero``/``masked_select``/``unique`` (their size depends
  on the values), ``torch.equal``: a ``torch.overrides.TorchFunctionMode`` sees each call with its tensor;
- on CUDA also everything ``torch.cuda.set_sync_debug_mode("warn")`` reports (synchronising CUDA calls
  made inside C++ operators too);
- with ``--trace``, ``torch.profiler`` records the run with each step's two phases as named ranges
  (``gantrain/step N``, ``gantrain/periodic N``) and writes a Chrome trace; on CUDA the blocking runtime
  calls (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ...) are counted per phase from it.

On a GPU a read waits for the device when its tensor lives there. On a CPU nothing waits, so the check is
what *would* wait on a GPU: every read except those of torch's host-side counters (the optimiser's step
counts, CPU tensors also when the model is on a GPU unless the optimiser is fused). Host-to-device copies
from pageable memory also wait on a GPU; only ``set_sync_debug_mode`` sees them, so on a CPU they are not
checked. Exit status 1 when the training step waits for the device, 0 otherwise. It runs one process
(``trainer.devices`` is not used: the ranks of a multi-process run do what this one does, plus DDP's
gradient all-reduce, which NCCL runs on the GPU's own stream).
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

_T = torch.Tensor
READS = {_T.item, _T.tolist, _T.numpy, _T.cpu, _T.__bool__, _T.__float__, _T.__int__, _T.__index__,
         _T.__complex__, _T.__format__, _T.__repr__, _T.__array__, _T.nonzero, _T.masked_select, _T.unique,
         torch.nonzero, torch.masked_select, torch.unique, torch.equal}
MOVES = {_T.to, _T.copy_}  # reads when they bring a tensor to the host
HOST_COUNTERS = ("torch/optim/",)  # the optimisers' step counts: CPU tensors on any device (unless fused)
_INTERNAL = ("torch/overrides.py", "torch/utils/_python_dispatch.py", "torch/_dynamo/", "torch/_compile.py",
             "torch/_tensor.py", "gantrain/tools/syncs.py")


@dataclass(frozen=True)
class Read:
    step: int
    phase: str    # "setup", "step" (the training step) or "periodic" (logs, grids, checkpoints, metrics)
    what: str     # e.g. "item", "tolist", "cuda sync"
    device: str   # where the tensor lived
    where: str    # the line that asked for it (innermost frame outside torch's dispatch machinery)

    def waits(self, run_device: torch.device) -> bool:
        """Whether this read waits (on a GPU) or would wait (on a CPU run) for the device."""
        if self.device != "cpu":
            return True
        return run_device.type == "cpu" and not self.where.startswith(HOST_COUNTERS)


_PROJECT = Path(__file__).resolve().parents[2]  # the folder holding the gantrain package (a checkout's root)
_LIBRARIES = Path(torch.__file__).resolve().parent.parent  # the folder holding torch (site-packages)


@functools.cache
def _short(filename: str) -> str:
    """A location named from the project's root (``gantrain/training/loop.py``, ``tests/...``) or from the libraries'
    folder (``torch/optim/adam.py``), whatever the folders above them are called; other files in full."""
    if not Path(filename).is_absolute():  # "<string>", "<frozen ...>"
        return filename
    path = Path(filename).resolve()
    # the innermost root first: a virtualenv inside the checkout (.venv/lib/.../site-packages) is the libraries'
    for root in sorted((_PROJECT, _LIBRARIES), key=lambda r: len(r.parts), reverse=True):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.as_posix()


def _origin() -> str:
    """``file:line (function)`` of the innermost frame outside torch's dispatch machinery."""
    f = next((f for f in reversed(traceback.extract_stack()[:-2]) if not _short(f.filename).startswith(_INTERNAL)),
             None)
    return f"{_short(f.filename)}:{f.lineno} ({f.name})" if f else "-"


class HostReads(TorchFunctionMode):
    """Records every host read of a tensor's value, labelled with the step and phase set by ``mark``."""

    def __init__(self):
        super().__init__()
        self.reads: list[Read] = []
        self.step, self.phase = 0, "setup"
        self.profiler_syncs: Counter | None = None  # blocking CUDA runtime calls by phase (with a CUDA trace)
        self._cuda_warnings: list[warnings.WarningMessage] = []

    def mark(self, step: int, phase: str) -> None:
        self._drain_cuda_warnings()
        self.step, self.phase = step, phase

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in READS or (func in MOVES and _to_host(func, args, kwargs)):
            t = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if t is not None:
                name = getattr(func, "__name__", str(func)).strip("_")
                self.reads.append(Read(self.step, self.phase, name, t.device.type, _origin()))
        return func(*args, **kwargs)

    # ---- CUDA: torch's own detector of synchronising calls (also those inside C++ operators)
    def __enter__(self):
        if torch.cuda.is_available():
            self._catcher = warnings.catch_warnings(record=True)
            self._cuda_warnings = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
            self._drain_cuda_warnings()
            self._catcher.__exit__(*exc)
        return out

    def _drain_cuda_warnings(self) -> None:
        for w in self._cuda_warnings:
            if "synchronizing" in str(w.message):
                where = f"{_short(w.filename)}:{w.lineno}"
                self.reads.append(Read(self.step, self.phase, "cuda sync", "cuda", where))
        self._cuda_warnings.clear()


def _to_host(func, args, kwargs) -> bool:
    """``device_tensor.to("cpu")`` and ``cpu_tensor.copy_(device_tensor)``: copies that bring values to the host
    (``.to(device)`` on a CPU run is not one: the same call copies to the GPU on a GPU run)."""
    if func is _T.copy_:
        return len(args) > 1 and args[0].device.type == "cpu" and args[1].device.type != "cpu"
    target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
    return args[0].device.type != "cpu" and target is not None and torch.device(target).type == "cpu"


class Phases:
    """Profiler ranges ``gantrain/step N`` and ``gantrain/periodic N`` (``record_function``), one at a time."""

    def __init__(self):
        self._open = None

    def mark(self, step: int, phase: str) -> None:
        self.close()
        self._open = torch.profiler.record_function(f"gantrain/{phase} {step}")
        self._open.__enter__()

    def close(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None


# CUDA runtime calls that block the host until the device is done (cudaMemcpyAsync alone does not)
CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaMemcpy2D")


def profiler_syncs(prof: torch.profiler.profile) -> Counter:
    """The profiler's blocking CUDA runtime calls, counted by the phase ("step", "periodic", "setup") they fell in."""
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end, e.name.split()[0].split("/")[1])
              for e in events if e.name.startswith("gantrain/")]
    counts: Counter = Counter()
    for e in events:
        if e.name in CUDA_SYNCS:
            t = e.time_range.start
            counts[next((kind for a, b, kind in ranges if a <= t <= b), "setup")] += 1
    return counts


def record(overrides: list[str], out_dir: str | Path,
           trace: str | Path | None = None) -> tuple[HostReads, torch.device, object]:
    """Train with ``overrides`` in ``out_dir``, recording host reads; returns (recorder, device, cfg).

    With ``trace``, the run is also profiled (``torch.profiler``, each step's two phases as named ranges) and
    the Chrome trace written there; on CUDA ``recorder.profiler_syncs`` counts the blocking runtime calls."""
    from gantrain.cli import compose
    from gantrain.runtime import select_device
    from gantrain.training.loop import train

    cfg = compose(overrides)
    if not any(o.startswith("trainer.max_steps=") for o in overrides):
        cfg = compose([*overrides, f"trainer.max_steps={3 * cfg.log.every_n_steps}"])
    device = select_device(cfg.trainer.device)
    recorder, phases, prof = HostReads(), Phases(), None
    if trace is not None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=activities)

    def mark(step: int, phase: str) -> None:
        recorder.mark(step, phase)
        if prof is not None:
            phases.mark(step, phase)

    with prof or nullcontext(), recorder:
        try:
            train(cfg, out_dir, on_phase=mark)
        finally:
            phases.close()
    if prof is not None:
        prof.export_chrome_trace(str(trace))
        recorder.profiler_syncs = profiler_syncs(prof) if device.type == "cuda" else None
    return recorder, device, cfg


def report(recorder: HostReads, device: torch.device, steps: int) -> tuple[str, bool]:
    """A plain-text account of the reads; and whether the training step ever waited for the device."""
    in_step = [r for r in recorder.reads if r.phase == "step"]
    waits = [r for r in in_step if r.waits(device)]
    counters = Counter(r.where for r in in_step if not r.waits(device))
    periodic = Counter((r.step, r.what, r.where) for r in recorder.reads if r.phase == "periodic")
    lines = [f"training step (D, G, EMA, accumulators) of {steps} steps on {device}:",
             f"  reads that wait for the device: {len(waits)}"]
    for (what, where), n in Counter((r.what, r.where) for r in waits).most_common():
        lines.append(f"    {n:6d} x {what:10s} {where}")
    if counters:
        lines.append("  reads of torch's host-side counters (CPU tensors on any device; they never wait):")
        lines += [f"    {n:6d} x {where}" for where, n in counters.most_common()]
    steps_read = sorted({s for s, _, _ in periodic})
    lines.append(f"periodic part (logs, grids, checkpoints, metrics): reads at steps {steps_read or 'none'}")
    for (step, what, where), n in sorted(periodic.items()):
        lines.append(f"    step {step:5d}: {n:4d} x {what:10s} {where}")
    blocked = 0
    if recorder.profiler_syncs is not None:
        blocked = recorder.profiler_syncs["step"]
        lines.append(f"profiler, blocking CUDA runtime calls ({', '.join(CUDA_SYNCS)}): {blocked} in training "
                     f"steps, {recorder.profiler_syncs['periodic']} in periodic parts, "
                     f"{recorder.profiler_syncs['setup']} in setup")
    verdict = ("the training step never waited for the device" if not (waits or blocked) else
               f"the training step waited for the device {len(waits) + blocked} times")
    lines.append(verdict + ".")
    return "\n".join(lines), bool(waits or blocked)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gantrain.tools.syncs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", metavar="FILE.json", help="also profile the run and write a Chrome trace there")
    args, overrides = p.parse_known_args(argv)  # the rest are gantrain overrides (key=value)
    trace = args.trace
    from gantrain.cli import explain
    from gantrain.errors import UserError

    defaults = ["metrics.enabled=false", "log.progress_bar=false"]  # the user's overrides come after, and win
    try:
        with tempfile.TemporaryDirectory(prefix="gantrain-syncs-") as tmp:
            recorder, device, cfg = record([*defaults, *overrides], tmp, trace)
    except Exception as e:  # bad overrides: the sentences gantrain itself gives
        message = str(e) if isinstance(e, UserError) else explain(e)
        if message is None:
            raise
        print(f"gantrain.tools.syncs: error: {message}", file=sys.stderr)
        return 2
    text, waited = report(recorder, device, cfg.trainer.max_steps)
    print(text + (f"\nprofiler trace (chrome://tracing, Perfetto): {trace}" if trace else ""))
    return 1 if waited else 0


if __name__ == "__main__":
    sys.exit(main())
