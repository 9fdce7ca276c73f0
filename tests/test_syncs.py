"""The training step never reads values back from the device; reads happen only at log/grid/checkpoint steps.

``python -m gantrain.tools.syncs`` records every host read of a tensor's value during a real run (see its
docstring); on a CPU the check is what would wait on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import gantrain.training.loop
from gantrain.tools import syncs

from .utils import FAST, tiny

EVERY, STEPS = 4, 12
CASES = {
    "gan-sine": [*tiny("gan"), "data=sine"],
    "dcgan-mnist": [*tiny("dcgan"), "data=mnist"],
    # StyleGAN with lazy R1 due inside the run, bf16 autocast and channels-last
    "stylegan-mnist-r1-bf16": [*tiny("stylegan"), "data=mnist", "loss.r1_interval=3", "trainer.precision=bf16",
                               "trainer.channels_last=true"],
    # ADA adjusting p (and all-reducing nothing: one process) with R1 through the augmentation; DiffAugment
    "dcgan-mnist-ada-r1": [*tiny("dcgan"), "data=mnist", "augment=ada", "augment.interval=2", "loss.r1_gamma=0.1",
                           "loss.r1_interval=3"],
    "dcgan-mnist-diffaug": [*tiny("dcgan"), "data=mnist", "augment=diffaug"],
}


def record(tmp_path, overrides):
    return syncs.record([*FAST, "data.batch_size=8", f"trainer.max_steps={STEPS}", f"log.every_n_steps={EVERY}",
                         "log.sample_every_n_steps=6", "ckpt.every_n_steps=6", *overrides], tmp_path / "run")


@pytest.mark.parametrize("case", CASES)
def test_training_step_never_waits_for_the_device(tmp_path, mnist_root, case):
    recorder, device, _ = record(tmp_path, [*CASES[case], f"data.root={mnist_root}"])
    in_step = [r for r in recorder.reads if r.phase == "step"]
    assert [r for r in in_step if r.waits(device)] == []
    # the recorder saw the step's work: the optimisers' host-side step counters are read in every step
    assert {r.step for r in in_step} == set(range(1, STEPS + 1))
    assert all(r.where.startswith("torch/optim/") for r in in_step)
    # ... and the loop's reads, in the periodic part of the log steps only: one read of the accumulators
    logs = [r for r in recorder.reads if r.phase == "periodic" and r.where.startswith("gantrain/training/periodic.py")
            and r.where.endswith("(log_scalars)")]  # the loop's scalars
    assert [r.step for r in logs] == [4, 8, 12]
    text, waited = syncs.report(recorder, device, STEPS)
    assert not waited and "reads that wait for the device: 0" in text


def test_a_read_in_the_training_step_is_caught(tmp_path, monkeypatch, capsys):
    """The check can fail: a .item() and an `if tensor:` slipped into the G step are found, with their line."""
    real_g_step = gantrain.training.loop.g_step

    def g_step_that_reads(*args, **kwargs):
        loss = real_g_step(*args, **kwargs)
        if loss > 100:  # bool(tensor): waits for the device
            pass
        return loss + 0 * loss.item()

    monkeypatch.setattr(gantrain.training.loop, "g_step", g_step_that_reads)
    recorder, device, _ = record(tmp_path, CASES["gan-sine"])
    waits = [r for r in recorder.reads if r.phase == "step" and r.waits(device)]
    assert sorted({r.what for r in waits}) == ["bool", "item"]
    assert len(waits) == 2 * STEPS and all(r.where.startswith("tests/test_syncs.py") for r in waits)
    text, waited = syncs.report(recorder, device, STEPS)
    assert waited and f"reads that wait for the device: {2 * STEPS}" in text

    code = syncs.main([*FAST, *CASES["gan-sine"], "data.batch_size=8", "trainer.max_steps=4", "log.every_n_steps=2"])
    assert code == 1 and "the training step waited for the device 8 times" in capsys.readouterr().out


def test_moves_to_the_host_are_reads_and_moves_to_the_device_are_not():
    recorder = syncs.HostReads()
    x = torch.ones(3)
    with recorder:
        x.to("cpu"), x.to(torch.float64)            # no move to the host: not reads
        x.cpu(), x.tolist(), float(x.sum()), f"{x[0]:.2f}"
    assert [r.what for r in recorder.reads] == ["cpu", "tolist", "float", "format"]
    assert all(r.where.startswith("tests/test_syncs.py") and r.waits(torch.device("cpu")) for r in recorder.reads)


def test_bad_overrides_are_one_sentence(capsys):
    assert syncs.main(["loss.r1_every=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss.r1_every is not a setting gantrain knows" in err


def test_trace_has_each_steps_phases_as_profiler_ranges(tmp_path, capsys):
    import json

    trace = tmp_path / "trace.json"
    code = syncs.main(["--trace", str(trace), *FAST, *CASES["gan-sine"], "data.batch_size=8",
                       "trainer.max_steps=4", "log.every_n_steps=2"])
    assert code == 0 and f"profiler trace (chrome://tracing, Perfetto): {trace}" in capsys.readouterr().out
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert {f"gantrain/step {s}" for s in range(1, 5)} <= names
    assert {"gantrain/periodic 2", "gantrain/periodic 4"} <= names
    assert "aten::addmm" in names  # the networks' work is in the trace


def test_blocking_cuda_calls_are_counted_in_the_phase_they_fall_in():
    """The CUDA half of --trace, on events shaped like the profiler's (no GPU here to make real ones)."""
    from types import SimpleNamespace as E

    def ev(name, start, end):
        return E(name=name, time_range=E(start=start, end=end))

    events = [ev("gantrain/step 1", 0, 10), ev("cudaLaunchKernel", 1, 2), ev("gantrain/periodic 1", 10, 20),
              ev("cudaStreamSynchronize", 12, 13), ev("cudaMemcpy", 14, 15), ev("gantrain/step 2", 20, 30),
              ev("cudaDeviceSynchronize", 25, 26), ev("cudaMemcpyAsync", 27, 28), ev("cudaEventSynchronize", 31, 32)]
    counts = syncs.profiler_syncs(E(events=lambda: events))
    assert counts == {"periodic": 2, "step": 1, "setup": 1}
    recorder = syncs.HostReads()
    recorder.profiler_syncs = counts
    text, waited = syncs.report(recorder, torch.device("cuda"), 2)
    assert waited and "1 in training steps, 2 in periodic parts, 1 in setup" in text


def test_locations_are_named_from_the_project_root_whatever_its_folder_is_called(tmp_path):
    """`git clone URL` makes a folder named gantrain: ~/src/gantrain/gantrain/training/loop.py is gantrain/training/loop.py,
    torch's files are torch/..., and a file outside both keeps its full path (no cutting at "/gantrain/")."""
    import shutil
    import subprocess
    import sys

    clone = tmp_path / "src" / "gantrain"
    shutil.copytree(Path(syncs.__file__).parent.parent, clone / "gantrain", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "tests").mkdir()
    elsewhere = tmp_path / "gantrain" / "notes.py"
    code = ("import sys, torch.optim; from gantrain.tools import syncs; print(syncs.__file__); "
            "print(*(syncs._short(f) for f in sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, str(clone / "gantrain" / "training" / "loop.py"),
                          str(clone / "tests" / "test_x.py"), str(Path(torch.optim.__file__).parent / "adam.py"), str(elsewhere)],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(clone)})
    assert out.returncode == 0, out.stderr[-2000:]
    module, shorts = out.stdout.splitlines()
    assert Path(module).is_relative_to(clone)  # the copy in the folder named gantrain was the one imported
    assert shorts.split() == ["gantrain/training/loop.py", "tests/test_x.py", "torch/optim/adam.py", elsewhere.as_posix()]
