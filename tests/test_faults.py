"""Faults and hostile input, round two (issue 22): full and read-only disks (real tmpfs mounts where the
machine allows it), forged checkpoints, kill -9 and Ctrl-C of real processes, concurrent runs, huge values.

Every case expects one sentence and exit 2 (130 for Ctrl-C), no traceback, nothing lost, nothing left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gantrain import checkpoint, files
from gantrain.errors import UserError
from gantrain.training.loop import train
from tests.test_errors import error_sentence
from tests.utils import FAST, gantrain, make_cfg

TINY = ["model=gan", "model.generator.hidden=[16]", "model.discriminator.hidden=[16]"]
QUICK = [*FAST, "data=sine", "data.size=64", "data.batch_size=8", "log.every_n_steps=1"]
MiB = 2**20


def run(run_dir: Path, *overrides: str, tiny: bool = True) -> float:
    return train(make_cfg(*QUICK, *(TINY if tiny else []), *overrides), run_dir)


def cli(run_dir: Path, *overrides: str, **kw) -> subprocess.CompletedProcess:
    return gantrain(*QUICK, *TINY, f"hydra.run.dir={run_dir}", *overrides, **kw)


# --------------------------------------------------------------------------------------- tmpfs
@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size_mb)`` -> a freshly mounted tmpfs of that size (skipped where mounting is not allowed)."""
    mounts: list[Path] = []

    def mount(size_mb: int = 40) -> Path:
        mnt = tmp_path / f"mnt{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounts):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> Path:
    """Fill the mount until ``leave`` bytes are free."""
    free = files.free_bytes(mnt)
    filler = mnt / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp*"))


# ------------------------------------------------------------------------ 1. disk full in torch.save
BIG = ["model=gan", "model.generator.hidden=[512,512]", "model.discriminator.hidden=[512,512]", "model.ema_kimg=null"]


def test_disk_full_while_saving_a_normal_sized_checkpoint(tmpfs):
    mnt = tmpfs(40)
    run_dir = mnt / "run"
    run(run_dir, *BIG, "trainer.max_steps=2", tiny=False)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert len(before) > 4 * MiB
    fill(mnt, leave=3 * MiB)
    r = gantrain(*QUICK, *BIG, f"hydra.run.dir={run_dir}", "resume=auto", "trainer.max_steps=4")
    sentence = error_sentence(r)
    assert re.search(r"the disk is full: writing .*last\.pt needs about \d+\.\d MiB and \d+\.\d MiB are free; "
                     r"free some space and resume", sentence), sentence
    assert last.read_bytes() == before and temps(run_dir / "checkpoints") == []


def test_a_zip_writer_failure_on_a_full_disk_is_a_write_failure(tmpfs):
    """Even when the size estimate is wrong, torch's RuntimeError from the zip writer is the disk-full sentence."""
    mnt = tmpfs(8)
    fill(mnt, leave=1 * MiB)
    target = mnt / "last.pt"
    with pytest.raises(UserError, match=r"the disk is full: writing .*last\.pt needs about"):
        checkpoint.write_atomically(target, lambda f: torch.save({"w": torch.zeros(2 * MiB)}, f), lambda: 0)
    assert not target.exists() and temps(mnt) == []


def test_small_sizes_are_not_called_0_mib():
    assert files.human(300) == "300 bytes" and files.human(1536) == "1.5 KiB" and files.human(5 * MiB) == "5.0 MiB"
    err = files.disk_full(Path("/tmp/x.json"), 200, "free some space")
    assert "needs about 200 bytes" in str(err) and "0 MiB" not in str(err)


# --------------------------------------------------------------------------- 6. forged checkpoints
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("good") / "run"
    run(run_dir, "trainer.max_steps=2")
    return run_dir / "checkpoints" / "last.pt"


def _rng_empty(c):
    c["rng"] = []


FORGED = {  # kind: (edit, the field the sentence must name)
    "no_data_shape": (lambda c: c.pop("data_shape"), "no data_shape entry"),
    "no_opt_G": (lambda c: c.pop("opt_G"), "no opt_G entry"),
    "string_format_version": (lambda c: c.update(format_version="1"), "format_version='1'"),
    "string_step": (lambda c: c.update(step="10"), "bad step"),
    "float_step": (lambda c: c.update(step=2.5), "bad step"),
    "negative_step": (lambda c: c.update(step=-3), "bad step"),
    "wrong_G": (lambda c: c.update(G={k: torch.zeros(3) for k in c["G"]}), "its G does not fit"),
    "empty_G": (lambda c: c.update(G={}), "bad G"),
    "bad_G_ema": (lambda c: c.update(G_ema="weights"), "bad G_ema"),
    "bad_augment": (lambda c: c.update(augment={"p": 0.5}), "bad augment"),
    "rng_empty": (_rng_empty, "bad rng"),
    "rng_empty_dict": (lambda c: c.update(rng=[{}]), "bad rng"),
    "config_none": (lambda c: c.update(config=None), "bad config"),
    "wrong_grid_z": (lambda c: c.update(grid_z=torch.zeros(4, 3)), "bad grid_z"),
    "nan_weights": (lambda c: next(iter(c["G"].values())).fill_(float("nan")), "holds NaN/Inf weights"),
}


def forge(good: Path, dest: Path, kind: str) -> Path:
    obj = torch.load(good, weights_only=True)
    FORGED[kind][0](obj)
    torch.save(obj, dest)
    return dest


@pytest.mark.parametrize("kind", list(FORGED))
def test_forged_checkpoints_are_refused_naming_the_field(tmp_path, good, kind):
    path = forge(good, tmp_path / f"{kind}.pt", kind)
    expected = FORGED[kind][1]
    with pytest.raises(UserError, match=re.escape(expected)) as e:  # resume
        run(tmp_path / "run", f"resume={path}", "trainer.max_steps=4")
    assert "\n" not in str(e.value) and not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("kind", ["no_data_shape", "string_step", "empty_G", "bad_G_ema", "config_none",
                                  "string_format_version", "nan_weights"])
def test_forged_checkpoints_in_generate_and_eval(tmp_path, good, kind, capsys):
    from gantrain import evaluate, generate

    path = forge(good, tmp_path / f"{kind}.pt", kind)
    for main, args in ((generate.main, [str(path), "-n", "4", "-o", str(tmp_path / "x.npz")]),
                       (evaluate.main, [str(path), "-n", "4", "--device", "cpu"])):
        with pytest.raises(SystemExit) as e:
            main(args)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
        if kind != "wrong_G":
            assert FORGED[kind][1] in err, err
    assert not (tmp_path / "x.npz").exists()


def test_random_bytes_are_damaged_not_code(tmp_path, good):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    zipped = tmp_path / "zipped.pt"
    data = bytearray(good.read_bytes())  # a real zip whose pickled part is scrambled
    start = data.find(b"data.pkl") + 40
    data[start:start + 200] = os.urandom(200)
    zipped.write_bytes(bytes(data))
    for path in (noise, zipped):
        with pytest.raises(UserError, match="is damaged") as e:
            checkpoint.load(path)
        assert "could run code" not in str(e.value)


# ------------------------------------------------------------------------------- 8. big step numbers
def test_step_numbers_of_eight_digits_sort_by_step(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    last = ckpt_dir / "last.pt"
    for step in (9_999_980, 9_999_990, 10_000_000, 10_000_010):
        last.write_bytes(str(step).encode())
        checkpoint.save_periodic(last, step, keep=2)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pt", "step_10000000.pt", "step_10000010.pt"]
    last.unlink()
    assert checkpoint.find_latest(tmp_path) == ckpt_dir / "step_10000010.pt"


def test_periodic_save_twice_at_one_step_leaves_no_temp(tmp_path):
    """Renaming a hard link onto the same inode does nothing (POSIX): the temp link must still go."""
    last = tmp_path / "last.pt"
    last.write_bytes(b"x")
    checkpoint.save_periodic(last, 5, keep=3)
    checkpoint.save_periodic(last, 5, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_0000005.pt"]


# ------------------------------------------------------------------------------------- 9. huge seeds
def test_huge_seeds_train_and_generate(tmp_path, capsys):
    from gantrain import generate

    huge = 2**70
    run(tmp_path / "a", f"seed={huge}", "trainer.max_steps=2")
    run(tmp_path / "b", f"seed={huge % 2**64}", "trainer.max_steps=2")  # reduced deterministically, modulo 2**64
    a = checkpoint.load(tmp_path / "a" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoints" / "last.pt")
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    ckpt = str(tmp_path / "a" / "checkpoints" / "last.pt")
    generate.main([ckpt, "-n", "4", "-o", str(tmp_path / "x.npz"), "--seed", str(huge)])
    generate.main([ckpt, "-n", "4", "-o", str(tmp_path / "y.npz"), "--seed", str(huge + 2**64)])
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "x.npz")["curves"], np.load(tmp_path / "y.npz")["curves"])
    assert f"seed {huge}" in capsys.readouterr().out


# ------------------------------------------------------------------------ 5. one run per run directory
def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "gantrain"
    return subprocess.Popen([str(exe), *QUICK, *TINY, f"hydra.run.dir={run_dir}", *overrides],
                            env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_until(predicate, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "no progress in time"
        time.sleep(0.05)


def test_a_second_run_in_the_same_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    first = start(run_dir, "trainer.max_steps=100000000", "ckpt.every_n_steps=5")
    try:
        wait_until(lambda: (run_dir / "checkpoints" / "last.pt").exists(), first)
        for extra in ([], ["resume=auto"]):
            sentence = error_sentence(cli(run_dir, "trainer.max_steps=3", *extra))
            assert f"is in use by another gantrain run (process {first.pid} holds" in sentence, sentence
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # kill -9: the OS releases the lock, nothing stale is left to clean by hand
        first.communicate()
    step = checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"]
    r = cli(run_dir, "resume=auto", f"trainer.max_steps={step + 2}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == step + 2


def test_each_sweep_job_locks_its_own_directory(tmp_path):
    r = gantrain("-m", *QUICK, *TINY, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}", "trainer.max_steps=2")
    assert r.returncode == 0, r.stderr[-2000:]
    for job in ("0", "1"):
        assert checkpoint.load(tmp_path / "sweep" / job / "checkpoints" / "last.pt")["step"] == 2


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    from gantrain import rundir

    with rundir.locked(tmp_path):
        with rundir.locked(tmp_path):
            pass
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / rundir.LOCK_NAME)],
                               capture_output=True)
        assert probe.returncode != 0  # still held after the nested release
    probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                            "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / rundir.LOCK_NAME)],
                           capture_output=True)
    assert probe.returncode == 0, probe.stderr


# ---------------------------------------------------------------- 10/11. TensorBoard's writer and event files
@pytest.mark.parametrize("fault", ["disk_full", "run_dir_deleted"])
def test_event_file_failure_prints_no_thread_traceback(tmpfs, capfd, caplog, monkeypatch, fault):
    import logging
    import shutil
    import threading

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's printer, not pytest's catcher

    mnt = tmpfs(40)
    run_dir = mnt / "run"
    filler: list[Path] = []

    def on_phase(step: int, phase: str) -> None:
        if phase != "periodic":
            return
        if step == 3:
            if fault == "disk_full":
                filler.append(fill(mnt, leave=0))
            else:
                shutil.rmtree(run_dir)
        if step == 7 and filler:
            filler[0].unlink()  # room again for the final checkpoint

    caplog.set_level(logging.WARNING)
    train(make_cfg(*QUICK, *TINY, "trainer.max_steps=8", "ckpt.every_n_steps=100", "log.sample_every_n_steps=4"),
          run_dir, on_phase=on_phase)
    err = capfd.readouterr().err
    assert "Exception in thread" not in err and "Traceback" not in err, err[-2000:]
    warnings = [r.getMessage() for r in caplog.records if "event file" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 8


def test_resume_auto_of_a_finished_run_adds_no_event_file(tmp_path):
    run(tmp_path / "run", "trainer.max_steps=2")
    events = sorted((tmp_path / "run").glob("events.out.tfevents*"))
    assert len(events) == 1
    for _ in range(2):
        run(tmp_path / "run", "resume=auto", "trainer.max_steps=2")
    assert sorted((tmp_path / "run").glob("events.out.tfevents*")) == events


# ------------------------------------------------- 2, 10. decode workers: kill -9 and Ctrl-C of the parent
def stuck_folder(tmp_path: Path) -> Path:
    """A few JPEGs and a FIFO named like one: the worker that opens it waits for ever (a decode in progress)."""
    import numpy as np

    from tests.conftest import _noise_image

    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        _noise_image(rng, 24, 24).save(root / f"img{i}.jpg")
    os.mkfifo(root / "zz_stuck.jpg")
    return root


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pid: int) -> bool:
    return not files.alive(pid)


FOLDER = ["data=folder", "data.resolution=8", "data.decode_workers=2", "data.batch_size=4", "trainer.max_steps=2"]


def start_decoding(tmp_path: Path) -> tuple[subprocess.Popen, list[int], Path]:
    root, cache = stuck_folder(tmp_path), tmp_path / "cache"
    proc = start(tmp_path / "run", *FOLDER, f"data.root={root}", f"data.cache_dir={cache}")
    wait_until(lambda: len(children(proc.pid)) == 2 and list(cache.glob(".folder-*.npy.*.tmp")), proc)
    return proc, children(proc.pid), cache


def test_kill_9_while_decoding_takes_the_workers_along(tmp_path):
    proc, workers, cache = start_decoding(tmp_path)
    proc.kill()
    proc.wait()  # not communicate(): workers that outlive it would hold its pipes open
    proc.stdout.close()
    proc.stderr.close()
    try:
        wait_until(lambda: all(gone(w) for w in workers), timeout=10)
    finally:
        for w in workers:
            if not gone(w):
                os.kill(w, signal.SIGKILL)
    stale = list(cache.glob(".folder-*.npy.*.tmp"))
    assert stale  # the killed writer's temp file ...
    os.unlink(tmp_path / "images" / "zz_stuck.jpg")
    r = cli(tmp_path / "run2", *FOLDER, f"data.root={tmp_path / 'images'}", f"data.cache_dir={cache}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not any(p.exists() for p in stale)  # ... is removed by the next run


def test_ctrl_c_while_decoding_exits_130_without_a_traceback(tmp_path):
    proc, workers, cache = start_decoding(tmp_path)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # stuck waiting for its workers
        for pid in (*workers, proc.pid):
            os.kill(pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted (Ctrl-C)" in err, err[-2000:]
    wait_until(lambda: all(gone(w) for w in workers), timeout=10)
    assert not list(cache.glob(".folder-*.tmp"))


def test_ctrl_c_during_the_imports_exits_130(tmp_path):
    exe = Path(sys.executable).parent / "gantrain"
    proc = subprocess.Popen([str(exe), *QUICK, *TINY, f"hydra.run.dir={tmp_path / 'run'}"], stderr=subprocess.PIPE,
                            text=True)
    time.sleep(0.5)  # Python is up (its SIGINT handler installed); torch and Hydra are still being imported
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted (Ctrl-C)" in err, err[-2000:]


# ------------------------------------------------------------------- 3, 7. data sizes, full and read-only places
def test_absurd_resolution_is_refused_before_decoding(tmp_path, image_folder):
    sentence = error_sentence(cli(tmp_path / "run", "data=folder", f"data.root={image_folder}",
                                  "data.resolution=100000", f"data.cache_dir={tmp_path / 'cache'}"))
    assert "data.resolution=100000 is too large: one decoded image would take 27.9 GiB" in sentence, sentence
    assert not list((tmp_path / "cache").glob("*.npy*")) and not list((tmp_path / "cache").glob(".*"))


def test_a_cache_that_does_not_fit_the_disk_is_refused_before_decoding(tmpfs, data_cfg, image_folder):
    from gantrain.data import build_dataset

    cache = tmpfs(8)
    cfg = data_cfg("folder", root=str(image_folder), resolution=1024, cache_dir=str(cache), decode_workers=1)
    with pytest.raises(UserError, match=r"the disk is full: writing .*\.npy needs about 48\.0 MiB and 8\.0 MiB are "
                                        r"free; free some space, set data.cache_dir .* or lower data.resolution"):
        build_dataset(cfg, device=torch.device("cpu"))
    assert list(cache.iterdir()) == [cache / f for f in os.listdir(cache) if f.endswith(".lock")]


def test_the_disk_filling_up_while_decoding(tmpfs, data_cfg, image_folder, monkeypatch):
    from gantrain.data import build_dataset
    from gantrain.data import folder as images

    cache = tmpfs(8)
    real = images.decode_image

    def decode_and_fill(path, resolution, channels):
        if not (cache / "filler").exists():
            fill(cache, leave=0)
        return real(path, resolution, channels)

    monkeypatch.setattr(images, "decode_image", decode_and_fill)
    cfg = data_cfg("folder", root=str(image_folder), resolution=256, cache_dir=str(cache), decode_workers=1)
    with pytest.raises(UserError, match=r"the disk is full: writing .*\.npy needs about 3\.0 MiB and 0 bytes are "
                                        r"free"):
        build_dataset(cfg, device=torch.device("cpu"))
    assert temps(cache) == []


def test_checkpoints_folder_turning_read_only_mid_run(tmpfs, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    mnt = tmpfs(8)
    subprocess.run(["mount", "--bind", str(mnt), str(run_dir / "checkpoints")], check=True)
    try:
        def on_phase(step: int, phase: str) -> None:
            if step == 3 and phase == "periodic":
                subprocess.run(["mount", "-o", "remount,ro,bind", str(run_dir / "checkpoints")], check=True)

        with pytest.raises(UserError, match=r"cannot write .*last\.pt: the folder is not writable \(Read-only file "
                                            r"system\); choose another with hydra.run.dir=PATH\.$"):
            train(make_cfg(*QUICK, *TINY, "trainer.max_steps=6", "ckpt.every_n_steps=2"), run_dir,
                  on_phase=on_phase)
        assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 2
    finally:
        subprocess.run(["umount", "-l", str(run_dir / "checkpoints")], capture_output=True)


@pytest.mark.parametrize("place", ["a_file", "read_only"])
def test_metrics_cache_dir_that_cannot_be_written(tmp_path, tmpfs, caplog, place):
    import logging

    if place == "a_file":
        cache = tmp_path / "not_a_dir"
        cache.write_text("x")
    else:
        cache = tmpfs(4)
        subprocess.run(["mount", "-o", "remount,ro", str(cache)], check=True)
    caplog.set_level(logging.WARNING)
    overrides = ["log.progress_bar=false", "trainer.device=cpu", "data=sine", "data.size=64", "data.batch_size=8",
                 *TINY, "trainer.max_steps=2", "metrics.num_samples=64", f"metrics.cache_dir={cache}"]
    value = train(make_cfg(*overrides), tmp_path / "run")
    assert value == value  # a metric value, not NaN: the run measured it without the cache
    warned = [r.getMessage() for r in caplog.records if "metrics.cache_dir" in r.getMessage()]
    assert warned and "resume" not in warned[0], warned


# --------------------------------------------------------------------- 4. gantrain-generate's big requests
def generate_cli(*args) -> subprocess.CompletedProcess:
    return gantrain(*map(str, args), cmd="gantrain-generate")


@pytest.fixture(scope="module")
def good_images(tmp_path_factory) -> Path:
    import numpy as np

    from tests.conftest import _noise_image

    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        _noise_image(rng, 16, 16).save(tmp / f"{i}.png")
    train(make_cfg(*FAST, *TINY, "data=folder", f"data.root={tmp}", "data.resolution=8", "data.batch_size=4",
                   "trainer.max_steps=1"), tmp / "run")
    return tmp / "run" / "checkpoints" / "last.pt"


def test_generate_refuses_what_would_not_fit(tmp_path, tmpfs, good, good_images, capsys):
    from gantrain import generate

    small = tmpfs(4)
    cases = [
        (good, 20000, "x.png", [], "-n 20000 is too many curves for one .png plot (at most 10000)"),
        (good_images, 10**6, "x.png", [], "-n 1000000 is too many for a .png grid: it would be a 286.2 MiB image"),
        (good, 1000, "x.gif", ["--interpolate", "100"], "frames would take 9.2 GiB of memory"),
        (good, 10**9, "x.npz", [], "the disk is full: writing"),
        (good, 100000, small / "x.npz", [], "needs about 24.4 MiB and 4.0 MiB are free; free some space or ask for "
                                            "fewer samples (-n)."),
        (good_images, 100000, small / "pngs/", [], "needs about 116.0 MiB and 4.0 MiB are free"),
    ]
    for ckpt, n, out, extra, expected in cases:
        out = out if isinstance(out, Path) else tmp_path / out
        start_at = time.monotonic()
        with pytest.raises(SystemExit) as e:
            generate.main([str(ckpt), "-n", str(n), "-o", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and expected in err and err.count("\n") == 0, (expected, err)
        assert time.monotonic() - start_at < 20  # refused before generating
    assert sorted(os.listdir(small)) in ([], ["pngs"]) and not list(tmp_path.glob("x.*"))


def test_generate_ctrl_c_and_kill_9_leave_no_temp(tmp_path, good):
    exe = Path(sys.executable).parent / "gantrain-generate"
    out = tmp_path / "big.npz"
    for how in ("ctrl_c", "kill_9"):
        proc = subprocess.Popen([str(exe), str(good), "-n", "2000000", "-o", str(out)], stderr=subprocess.PIPE,
                                text=True)
        wait_until(lambda: list(tmp_path.glob(".big.npz.tmp*")), proc)
        proc.send_signal(signal.SIGINT if how == "ctrl_c" else signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        if how == "ctrl_c":
            assert proc.returncode == 130 and "interrupted (Ctrl-C)" in err and "Traceback" not in err, err[-2000:]
            assert not list(tmp_path.glob(".big.npz.tmp*"))  # its own temp removed on the way out
        else:
            assert list(tmp_path.glob(".big.npz.tmp*"))  # left by the killed writer ...
    r = generate_cli(good, "-n", "4", "-o", out)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".big.npz.tmp*")) and out.is_file()  # ... and removed by the next call
