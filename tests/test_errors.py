"""Bad input and faults: one clear sentence, a non-zero exit, nothing lost.

Most cases go through the ``gantrain`` console script in a subprocess (what a user sees: the sentence,
the exit code, no traceback); faults that cannot be staged from outside (disk full, NaN at a chosen step,
an event file that cannot be written) are injected in-process. Data-loader details (truncated IDX
headers, label counts, stale or half-written caches, ...) are unit-tested in tests/test_data.py; checkpoint
internals (atomic writes, kill -9, resume) in tests/test_checkpoint.py.
"""

from __future__ import annotations

import errno
import gc
import itertools
import logging
import math
import os
import re
from pathlib import Path

import pytest
import torch

from gantrain import checkpoint
from gantrain.errors import UserError
from gantrain.losses import GANLoss
from gantrain.summaries import Summaries
from gantrain.training.loop import train
from gantrain.training.steps import update_counting_skips
from tests.utils import FAST, gantrain, make_cfg, tiny

QUICK = [*FAST, "metrics.enabled=false", "data.batch_size=8"]
SINE = ["data=sine", "data.size=256"]


def cli(run_dir: Path, *args: str, **kw):
    return gantrain(*QUICK, f"hydra.run.dir={run_dir}", *args, **kw)


def error_sentence(r) -> str:
    """The one error line of a failed run (exit 2, no traceback), without the log prefix."""
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-2000:]
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out, out[-2000:]
    lines = [ln for ln in out.splitlines() if "[ERROR]" in ln or ln.startswith("gantrain: error:")]
    assert len(lines) == 1, out[-2000:]
    sentence = re.sub(r"^.*?(\[ERROR\] - |gantrain: error: )", "", lines[0])
    assert sentence.endswith((".", "?")) and len(sentence) < 400, sentence
    return sentence


def run(tmp_path: Path, *overrides: str, name: str = "run") -> float:
    return train(make_cfg(*QUICK, *tiny("gan"), *SINE, *overrides), tmp_path / name)


def finite_checkpoint(path: Path) -> dict:
    ckpt = checkpoint.load(path)
    for net in ("G", "D"):
        assert all(torch.isfinite(t).all() for t in ckpt[net].values() if t.is_floating_point()), net
    return ckpt


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("override,expected", [
    ("model=nope", "model=nope is not an option of the model group: choose one of dcgan, gan, stylegan"),
    ("data=imagenet", "choose one of celeba, fashion_mnist, folder, mnist, sine"),
    ("trainer.max_step=3", "trainer.max_step is not a setting gantrain knows: did you mean trainer.max_steps?"),
    ("trainer.nokey=1", "trainer has max_steps, d_steps, device, precision"),
    ("trainer.max_steps=abc", "trainer.max_steps=abc has the wrong type: it must be a whole number"),
    ("trainer.compile=maybe", "it must be true or false"),
    ("loss.label_noise=high", "it must be a number"),
    ("data.amplitude=[1", "cannot read the override 'data.amplitude=[1'"),
])
def test_config_compose_errors_are_one_sentence(tmp_path, override, expected):
    r = cli(tmp_path / "run", override)
    assert expected in error_sentence(r)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_compose_errors_in_a_sweep_and_with_cfg_job(tmp_path):
    r = gantrain("-m", "model=gan,nope", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.max_steps=1")
    assert "choose one of dcgan, gan, stylegan" in error_sentence(r)
    r = gantrain("--cfg", "job", "trainer.max_steps=abc")
    assert "must be a whole number" in error_sentence(r)


@pytest.mark.parametrize("overrides,expected", [
    (["data.batch_size=0"], "data.batch_size=0 is out of range: it must be a positive number"),
    (["optim.generator.lr=-0.1"], "the learning rate must be a positive number"),
    (["trainer.precision=16"], "trainer.precision=16 needs a CUDA GPU"),
    pytest.param(["trainer.device=cuda"], "no CUDA GPU is available: use trainer.device=auto",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    (["model=dcgan", "data=sine"], "model=gan"),
    (["+trainer.max_step=5"], "trainer.max_step is not a setting gantrain knows: did you mean trainer.max_steps?"),
    (["+data.rezolution=32"], "data.rezolution is not a setting gantrain knows: did you mean data.resolution?"),
    (["+foo=1"], "foo is not a setting gantrain knows: the top-level settings are model, data"),
    (["optim.generator.betas=[1.5,0.9]"], "cannot build the generator's optimiser from optim.generator: Invalid beta"),
    (["+optim.discriminator.foo=1"], "cannot build the discriminator's optimiser from optim.discriminator: "),
    (["trainer.sync_batchnorm=true", "loss=bce_r1"], "SyncBatchNorm has no second derivative"),
])
def test_bad_values_and_contradictions_exit_2(tmp_path, overrides, expected):
    r = cli(tmp_path / "run", *overrides, "trainer.max_steps=1")
    assert expected in error_sentence(r)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resolution_the_model_cannot_build(tmp_path, image_folder):
    r = cli(tmp_path / "run", *tiny("dcgan"), "data=folder", f"data.root={image_folder}", "data.resolution=20",
            "trainer.max_steps=1")
    assert "model=dcgan cannot build 20x20 images" in error_sentence(r)


# -------------------------------------------------------------------------------------------- data
def _folder_case(tmp_path: Path, image_folder: Path, case: str) -> Path:
    root = tmp_path / case
    if case == "empty":
        root.mkdir()
    elif case == "no_images":
        root.mkdir()
        (root / "readme.txt").write_text("no images here\n")
    elif case == "file":
        root.write_text("x")
    return root


@pytest.mark.parametrize("case,expected", [
    ("missing", "does not exist; point it at a folder of images"),
    ("file", "is not a folder"),
    ("empty", "no image files found"),
    ("no_images", "no image files found"),
])
def test_folder_data_root_problems(tmp_path, image_folder, case, expected):
    root = _folder_case(tmp_path, image_folder, case)
    r = cli(tmp_path / "run", *tiny("gan"), "data=folder", f"data.root={root}", "data.resolution=8",
            "trainer.max_steps=1")
    sentence = error_sentence(r)
    assert expected in sentence and str(root) in sentence


def test_unreadable_data_root(data_cfg, tmp_path, image_folder, monkeypatch):
    # root ignores permission bits, so the refusal comes from a patched listing
    from gantrain.data import build_dataset

    real = os.scandir

    def scandir(path="."):
        if Path(path) == image_folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot be read \(Permission denied\)"):
        build_dataset(data_cfg("folder", root=str(image_folder), resolution=8), device="cpu")


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_bad_idx_file(tmp_path, mnist_root, damage):
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-100] if damage == "truncated" else b"<html>404</html>" + data[16:])
    r = cli(tmp_path / "run", *tiny("gan"), "data=mnist", f"data.root={mnist_root}", "trainer.max_steps=1")
    sentence = error_sentence(r)
    assert str(path) in sentence and "delete it and download it again" in sentence


def test_folder_with_bad_files_and_mixed_modes_trains_with_one_warning(tmp_path, image_folder):
    # image_folder: 12 RGB JPEGs + a greyscale JPEG + an RGBA PNG + a palette GIF + notes.txt + broken.jpg
    r = cli(tmp_path / "run", *tiny("gan"), "data=folder", f"data.root={image_folder}", "data.resolution=8",
            "trainer.max_steps=2")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    warnings = [ln for ln in out.splitlines() if "skipped" in ln and "[WARNING]" in ln]
    assert len(warnings) == 1 and "skipped 2 of 17 files" in warnings[0] and "1 unreadable" in warnings[0]
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["data_shape"] == [3, 8, 8]


def test_too_few_readable_images_is_refused(tmp_path, image_folder):
    r = cli(tmp_path / "run", *tiny("gan"), "data=folder", f"data.root={image_folder}", "data.resolution=8",
            "data.min_images=100", "trainer.max_steps=1")
    assert "fewer than data.min_images=100" in error_sentence(r)


# ------------------------------------------------------------------------------------- checkpoints
class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("good")
    run(tmp, "trainer.max_steps=2")
    return tmp / "run" / "checkpoints" / "last.pt"


def _bad_checkpoint(kind: str, good: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / f"{kind}.pt"
    extra: list[str] = []
    if kind == "missing":
        pass
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "another_model":
        path.write_bytes(good.read_bytes())
        extra = ["model.generator.hidden=[16,16]", "model.discriminator.hidden=[16,16]"]
    elif kind == "newer_format":
        ckpt = torch.load(good, weights_only=True)
        ckpt["format_version"] = checkpoint.FORMAT_VERSION + 1
        torch.save(ckpt, path)
    elif kind == "runs_code":
        ckpt = torch.load(good, weights_only=True)
        ckpt["G"] = RunsCode(tmp_path / "PWNED")
        torch.save(ckpt, path)
    return path, extra


@pytest.mark.parametrize("kind,expected", [
    ("missing", "does not exist: check the path"),
    ("empty", "is empty (0 bytes): use an earlier checkpoint"),
    ("truncated", "is damaged or truncated"),
    ("another_model", "the checkpoint is of another model"),
    ("newer_format", "newer than this gantrain understands (1): upgrade gantrain"),
    ("runs_code", "could run code when loaded), so it was not loaded"),
])
def test_bad_checkpoints_are_refused(tmp_path, good_ckpt, kind, expected):
    path, extra = _bad_checkpoint(kind, good_ckpt, tmp_path)
    before = path.read_bytes() if path.exists() else None
    r = cli(tmp_path / "run", *tiny("gan"), *SINE, *extra, f"resume={path}", "trainer.max_steps=3")
    assert expected in error_sentence(r)
    assert not (tmp_path / "PWNED").exists()                     # nothing ran
    assert (path.read_bytes() if path.exists() else None) == before  # and nothing was overwritten
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# ----------------------------------------------------------------------------------- run directory
def test_run_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("x")
    r = cli(tmp_path / "a_file" / "run", "trainer.max_steps=1")
    assert "choose a writable run directory with hydra.run.dir=PATH" in error_sentence(r)


def test_run_dir_checked_before_training(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("in the way")
    r = cli(tmp_path / "run", *tiny("gan"), *SINE, "trainer.max_steps=1")
    assert "is not writable (Not a directory): choose another with hydra.run.dir=PATH" in error_sentence(r)
    assert not list((tmp_path / "run").glob("events.out.tfevents*"))  # stopped before training


def test_unwritable_run_dir(tmp_path, monkeypatch):
    # root ignores permission bits: a refusing TemporaryFile stands in for a read-only folder
    import tempfile

    from gantrain.cli import check_writable

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(UserError, match=r"run directory .* is not writable \(Permission denied\)"):
        check_writable(tmp_path)


def _fail_fsync_of(name: str, after: int, monkeypatch) -> list[str]:
    """Make os.fsync of temp files for ``name`` fail with ENOSPC from the ``after``-th one on."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if f".{name}.tmp" in target:
            seen.append(target)
            if len(seen) >= after:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    return seen


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    seen = _fail_fsync_of("last.pt", after=2, monkeypatch=monkeypatch)
    with pytest.raises(UserError) as e:
        run(tmp_path, "trainer.max_steps=6", "ckpt.every_n_steps=2", "log.every_n_steps=1")
    msg = str(e.value)
    assert len(seen) == 2 and "the disk is full" in msg and re.search(r"needs about [\d.]+ (bytes|KiB|MiB|GiB) and [\d.]+ (bytes|KiB|MiB|GiB) are free", msg)
    assert "\n" not in msg
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert finite_checkpoint(ckpt_dir / "last.pt")["step"] == 2   # the previous checkpoint survives
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pt", "step_0000002.pt"]  # no temp files
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run")).Reload()
    assert [ev.step for ev in acc.Scalars("Loss/D")] == [1, 2, 3, 4]  # the event file is intact too


def test_event_file_write_failure_does_not_stop_the_run(tmp_path, monkeypatch, caplog):
    from tensorboard.summary.writer.record_writer import RecordWriter

    calls = []
    real = RecordWriter.flush

    def flush(self):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self)

    monkeypatch.setattr(RecordWriter, "flush", flush)
    caplog.set_level(logging.WARNING)
    out = run(tmp_path, "trainer.max_steps=12", "log.every_n_steps=1", "ckpt.every_n_steps=4")
    assert math.isfinite(out)
    warnings = [r.getMessage() for r in caplog.records if "event file" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "training and checkpoints go on" \
        in warnings[0]
    assert finite_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 12
    monkeypatch.undo()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run")).Reload()  # what was written before the failure is readable
    assert acc.Scalars("Loss/D")[0].step == 1


# ---------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("where,nan_at,expected_step,kept_step", [
    ("loss", 7, 10, 5),      # a NaN loss at step 7: noticed at the log step 10; last.pt of step 5 kept
    ("weights", 3, 4, 2),    # NaN weights from step 3: refused by the checkpoint at step 4; step 2 kept
])
def test_nan_stops_at_the_next_check_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, where, nan_at,
                                                                          expected_step, kept_step):
    calls = []
    real = GANLoss.d_loss

    def d_loss(self, d_real, d_fake):
        calls.append(1)
        loss = real(self, d_real, d_fake)
        return loss * float("nan") if len(calls) == nan_at else loss

    monkeypatch.setattr(GANLoss, "d_loss", d_loss)
    log_every, ckpt_every = (5, 5) if where == "loss" else (10, 2)
    with pytest.raises(UserError) as e:
        run(tmp_path, "trainer.max_steps=20", f"log.every_n_steps={log_every}", f"ckpt.every_n_steps={ckpt_every}")
    msg = str(e.value)
    assert f"step {expected_step}" in msg and "\n" not in msg
    assert "lower the learning rates" in msg and "trainer.precision=32" in msg and "loss.r1_gamma" in msg
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert str(last) in msg
    assert finite_checkpoint(last)["step"] == kept_step


def test_divergence_through_the_cli(tmp_path):
    r = cli(tmp_path / "run", *tiny("gan"), *SINE, "optim.generator.lr=1e30", "optim.discriminator.lr=1e30",
            "trainer.max_steps=50", "log.every_n_steps=5", "ckpt.every_n_steps=1000")
    sentence = error_sentence(r)
    assert "NaN/Inf" in sentence or "diverged" in sentence
    assert "lower the learning rates" in sentence and "no checkpoint had been written yet" in sentence
    assert list((tmp_path / "run").glob("events.out.tfevents*"))  # the event file is kept


def test_fp16_skipped_steps_are_counted_not_failures():
    """GradScaler skips a step with inf/NaN gradients and lowers its scale: counted on the device."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([w], lr=0.1)
    skipped = torch.zeros(2)
    bad_steps = {2, 3, 7}
    for i in range(10):
        before = w.detach().clone()
        opt.zero_grad()
        scale = float("inf") if i in bad_steps else 1.0
        scaler.scale((w * scale).sum()).backward()
        scaler.step(opt)
        update_counting_skips(scaler, skipped[1])
        assert torch.equal(w, before) == (i in bad_steps)  # skipped steps leave the weights as they were
    assert skipped.tolist() == [0.0, len(bad_steps)]        # (growth steps in between are not counted)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    update_counting_skips(disabled, skipped[0])
    assert skipped[0] == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs CUDA")
def test_fp16_run_logs_skipped_steps_without_syncs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scaler = torch.amp.GradScaler("cuda")
    w = torch.nn.Parameter(torch.ones(4, device="cuda"))
    opt = torch.optim.SGD([w], lr=0.1)
    counter = torch.zeros((), device="cuda")
    scaler.scale(w.sum()).backward()
    scaler.step(opt)
    torch.cuda.set_sync_debug_mode("error")
    try:
        update_counting_skips(scaler, counter)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    run(tmp_path, "trainer.device=cuda", "trainer.precision=16", "trainer.max_steps=20", "log.every_n_steps=5")
    acc = EventAccumulator(str(tmp_path / "run")).Reload()
    assert len(acc.Scalars("AMP/skipped_G")) == 4 and len(acc.Scalars("AMP/skipped_D")) == 4


# --------------------------------------------------------------------------------------- long runs
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_long_run_memory_and_event_file_stay_flat(tmp_path, monkeypatch):
    """Thousands of steps: host RSS flat after warm-up, and the event file grows by the same amount per log."""
    samples: list[tuple[int, int, int]] = []    # (step, rss, event file bytes) after each scalar log's flush
    state = {"step": None}
    real_scalars, real_flush = Summaries.scalars, Summaries.flush

    def scalars(self, values, step):
        real_scalars(self, values, step)
        if "Loss/D" in values:  # the loop's scalar log (not Health/diversity, logged with a sample grid)
            state["step"] = step

    def flush(self):
        real_flush(self)
        if state["step"] is not None:
            (events,) = (tmp_path / "run").glob("events.out.tfevents*")
            samples.append((state["step"], _rss_bytes(), events.stat().st_size))
            state["step"] = None

    monkeypatch.setattr(Summaries, "scalars", scalars)
    monkeypatch.setattr(Summaries, "flush", flush)
    steps, every = 2500, 25
    gc.collect()  # earlier tests' garbage, so that its collection does not fall inside the measured stretch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and kind to a shared 2-core machine
    try:
        run(tmp_path, f"trainer.max_steps={steps}", f"log.every_n_steps={every}",
            "log.sample_every_n_steps=500", "ckpt.every_n_steps=500")
    finally:
        torch.set_num_threads(threads)
    assert [s for s, _, _ in samples] == list(range(every, steps + 1, every))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    # host memory: one-off rises at the first sample plots and checkpoints (matplotlib, allocator caches;
    # seen on CI: a fall of 38 MiB after step 500 as an earlier test's garbage went, then a one-off 9 MiB at
    # the plot and checkpoint of step 1000), then flat: < 12 MiB over the last 1500 steps, and no steady growth
    rss = {s: r for s, r, _ in samples}
    after_warmup = [r for s, r in rss.items() if s > 1000]
    print("RSS MiB", [(s, round(r / 2**20, 1)) for s, r, _ in samples[::4]])
    # the largest rise (a fall is memory given back, e.g. an earlier test's garbage collected late)
    rise = max(r - min(after_warmup[:i + 1]) for i, r in enumerate(after_warmup))
    assert rise < 12 * 2**20, f"host memory grew over {steps} steps"
    # a leak raises RSS at most log points (a few hundred bytes a step fill a page every few points); the
    # allocator's own growth is a rare one-off jump (seen: one of 1.4 MiB on an AMD EPYC): over the last
    # 1000 steps, rises at no more than a quarter of the points and < 4 MiB in all
    stretch = [r for s, r in rss.items() if s > steps - 1000]
    rises = sum(b > a for a, b in itertools.pairwise(stretch))
    assert rises <= len(stretch) // 4 and max(stretch) - stretch[0] < 4 * 2**20, \
        f"host memory grows step by step: {rises} rises in {len(stretch)} log points"
    # the event file: the same bytes for every scalar log point (a sample grid adds a fixed amount more)
    sizes = [b for _, _, b in samples]
    deltas = [b - a for (s, _, a), (_, _, b) in itertools.pairwise(samples) if s % 500]
    assert max(deltas) <= 1.05 * min(deltas), (min(deltas), max(deltas))
    per_point = sorted(deltas)[len(deltas) // 2]
    print(f"event file: {min(deltas)}..{max(deltas)} bytes per log point, {sizes[0]} -> {sizes[-1]} bytes")
    assert sizes[-1] - sizes[0] < (len(sizes) - 1) * per_point + 5 * 200_000  # + 5 curve plots at most


def test_a_start_that_fails_before_training_leaves_no_run_directory(tmp_path):
    """Hydra's default run directory (outputs/<date>/<time>_<model>_<data>) is removed again, and said so."""
    r = gantrain(*QUICK, "data=folder", cwd=tmp_path)
    assert "data=folder needs the images' location" in error_sentence(r)
    assert re.search(r"no run directory was left \(outputs/[\d-]+/[\d-]+_gan_folder removed", r.stdout), r.stdout
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())
